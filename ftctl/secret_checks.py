"""Secrets and credentials in user values: the environment variables that hold credentials (by name), the strings
that hold one (a token's shape, a secret's value set here, a URI's user and password), and the lines that say what to
do instead (pass it by name: --secret NAME). spec.build and spec.validate ask these of every value a run writes."""

from __future__ import annotations

import os
import re
import shlex
import typing

from ftctl import storage

# Names of environment variables that hold credentials (HF_TOKEN, GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY,
# PGPASSWORD, GPG_PASSPHRASE, DB_PASS, MYSQL_PWD): a name that ends in TOKEN, SECRET, PASSWORD, PASSWD or PASSPHRASE,
# in _KEY or APIKEY, or in the word PASS or PWD after a '_'; not HF_TOKEN_PATH, TIKTOKEN_CACHE_DIR or PAD_TOKEN_ID
# (they end in another word), BYPASS (PASS inside a word), PWD or OLDPWD (the shell's working directories), nor a
# flag's value (0/1/true/false: is_secret_name).
CREDENTIAL_NAME = re.compile(r"(?:TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|_KEY|APIKEY|(?:^|_)PASS|_PWD|_PAT)$", re.I)
# A credential inside a value, whatever its name: the prefixes of Hugging Face's, GitHub's, GitLab's, OpenAI's,
# Slack's and Docker Hub's (dckr_pat_, dckr_oat_) tokens and AWS's key ids, a URL's password
# (https://user:PASSWORD@host, one with a '/' too, as AWS's secret keys and base64 have: host:PORT/path@... is no
# password; a $VARIABLE there is a reference), and a signed URL's signature or token (S3's and GCS's presigned URLs,
# Azure's SAS ?sig=, CloudFront's Signature=, ?token=, ?access_token=, ?hf_token=, ?private_token=, ?api_key=: a
# query parameter named as a credential is one)
SIGNED_URL = "a signed URL's signature or token"
_SIGNED_NAME = (
    r"[?&](?:X-Amz-Signature|X-Amz-Security-Token|X-Goog-Signature|sig|Signature"
    r"|[\w.-]*(?:token|secret|password|passwd|api_?key|access_?key))="
)
_SIGNED_VALUE = r"[^&#\s$]{8,}"
TOKEN = "a token"
TOKEN_USER = "a token as a URL's user"  # https://TOKEN@host/... (credential_in asks URI_USERINFO's user)
OPTION = "a password or token option"
CREDENTIAL_VALUE = {
    "a URL's password": re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@$]+:(?!\d+/)[^\s@$]+@"),
    SIGNED_URL: re.compile(_SIGNED_NAME + _SIGNED_VALUE, re.I),
    TOKEN: re.compile(
        r"(?<![A-Za-z0-9_-])(?:(?:hf|gh[opusr])_[A-Za-z0-9]{20,}|github_pat_\w{20,}|glpat-[\w-]{20,}"
        r"|dckr_(?:pat|oat)_[\w-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|sk-[\w-]{20,}|AKIA[0-9A-Z]{16})"
    ),
    # a credential given by what names it, whatever its shape (a $VARIABLE there is a reference): an option's
    # (--password X, --token=X, --api-key X), a header's (Authorization: Bearer X, PRIVATE-TOKEN: X, X-API-Key: X), a
    # DSN's or netrc's (password=X, login U password X), curl's and wget's -u/--user USER:PASS (docker's -u is a
    # user:group), aws configure set aws_secret_access_key X; a path there is a key's file (--token /run/secrets/t)
    OPTION: re.compile(
        r"(?:^|[\s'\"])--?(?:token|api[-_]?key|password|passwd)(?:=|\s+)(?![$'\"/~-]|\./)[^\s'\"]{4,}"
        r"|\bAuthorization:\s*(?:Bearer|Basic|token|Token)\s+(?!\$)[^\s'\"]{8,}"
        r"|\b(?:PRIVATE-TOKEN|JOB-TOKEN|X-API-Key|X-Auth-Token|Api-Key):\s*(?!\$)[^\s'\"]{8,}"
        r"|(?:^|[\s;'\"])(?:password|passwd|pwd)=(?![$'\"/~]|\./)[^\s;'\"]{4,}"
        r"|\blogin\s+\S+\s+password\s+(?![$'\"])\S{4,}"
        r"|\b(?:curl|wget)\s[^|;&]*?(?<=\s)(?:-u|--user)(?:=|\s+)(?![$'\"-])[^\s:'\"]+:(?![$'\"])[^\s'\"]{4,}"
        r"|\baws\s+configure\s+set\s+(?:\S+\.)?(?:aws_secret_access_key|aws_session_token)\s+(?![$'\"])\S+",
        re.I,
    ),
}
# In a path or URI (the run's model, data, output and resume paths; a path set as an env value) a name may begin as
# a token does (hf_cache, hf_llama3_8b_lora, ghp_mirror, sk-learn-runs): there a token counts only as issued, a random
# run that ends its name (before an extension or a '/'): hf_/gh?_ and 30 or more letters and digits of both cases
# (Hugging Face's hf_ has 34 letters, GitHub's ghp_ 36), sk- and 32 or more of both cases with a digit (OpenAI's),
# AKIA and 16 capitals and digits with a digit (AWS's key ids); github_pat_, glpat-, dckr_pat_ and xox?- as anywhere
# (no name begins so by chance).
TOKEN_IN_PATH = re.compile(
    r"(?<![A-Za-z0-9_-])(?:(?:hf|gh[opusr])_(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])[A-Za-z0-9]{30,}"
    r"|sk-(?:proj-|svcacct-|admin-)?(?=[\w-]*[a-z])(?=[\w-]*[A-Z])(?=[\w-]*\d)[\w-]{32,}"
    r"|AKIA(?=[0-9A-Z]{0,15}\d)[0-9A-Z]{16}|github_pat_\w{20,}|glpat-[\w-]{20,}|dckr_(?:pat|oat)_[\w-]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,})(?![A-Za-z0-9_-])"
)
# the variable a token's kind is read from, named in the fix (AWS's key id: a store's, storage.SECRET_ENV)
_TOKEN_VARIABLES = {
    "hf_": "HF_TOKEN",
    "gh": "GITHUB_TOKEN",
    "github_pat_": "GITHUB_TOKEN",
    "glpat-": "GITLAB_TOKEN",
    "sk-": "OPENAI_API_KEY",
    "AKIA": "AWS_ACCESS_KEY_ID",
    "xox": "SLACK_TOKEN",
}
# A credential itself, as against a variable's name (words: HF_TOKEN, WANDB_API_KEY): a run of 16 or more letters
# and digits with both in it: Hugging Face's hf_..., GitHub's ghp_... and github_pat_..., an AWS key id (AKIA...),
# W&B's 40 hex digits (OpenAI's sk-... is no variable name at all).
TOKEN_RUN = re.compile(r"[A-Za-z0-9]{16,}")
FLAG_VALUES = ("", "0", "1", "true", "false", "yes", "no", "on", "off")  # HF_HUB_DISABLE_IMPLICIT_TOKEN=1: no secret


ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def secret_problem(name: str, environ: typing.Mapping[str, str] | None = None) -> str | None:
    """What is wrong with ``--secret NAME`` (None: nothing), said without repeating it: it may be the credential
    itself (``--secret $HF_TOKEN``), which would be written into the job's files and spec.json. Refused: what is no
    variable name; the value of a variable set in ``environ`` (one not itself set there); the shape of a token
    (looks_like_token)."""
    environ = os.environ if environ is None else environ
    fix = "pass the variable's name, e.g. --secret HF_TOKEN (its value is taken from where you launch, never written)."
    if not ENV_NAME_PATTERN.fullmatch(name):
        var, eq, _ = name.partition("=")  # NAME=VALUE: the value is never repeated
        if eq and ENV_NAME_PATTERN.fullmatch(var.strip()) and not holds_credential(var):  # hf_...=1: not repeated
            return (
                f"secret {var.strip()}=...: pass the name alone (--secret {var.strip()}) and export its value where "
                "you launch; a secret's value is never written into the job's files."
            )
        return f"a secret is not an environment variable NAME (it is not repeated here, in case it is a value): {fix}"
    holders = sorted(k for k, v in environ.items() if v == name) if name not in environ else []
    if holders:
        return f"a secret is the value of {', '.join(holders)} (set here), not a variable's name: {fix}"
    if looks_like_token(name):
        return f"a secret looks like a token (16 or more letters and digits in a run), not a variable's name: {fix}"
    return None


# the variable a tool's login reads its credential from, named in the fix for a credential written in a setup line
_TOOL_SECRETS = {"wandb": "WANDB_API_KEY", "huggingface-cli": "HF_TOKEN", "hf": "HF_TOKEN"}
_CREDENTIAL_OPTION = re.compile(r"--?(?:token|api[-_]?key|password|passwd)", re.I)


def setup_secret_problem(line: str, secrets=()) -> str | None:
    """What writes a credential into the job's files in a setup line (None: nothing): ``export HF_TOKEN=hf_...``,
    ``huggingface-cli login --token hf_...``, ``wandb login KEY``. Setup lines are written into the rendered script,
    spec.json and, where one fails, the job's log; the value is not repeated here. A ``$VARIABLE`` is a reference,
    not a value."""
    written = "a value (not repeated here), which would be written into the job's files"
    by_name = "(secrets pass by name, never written)"
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # unbalanced quotes: refused as a shell line elsewhere (launch.setup_lines)
        words = []
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        literal = bool(value) and "$" not in value and not value.startswith(("/", "~", "./"))  # a path: a key's file
        if eq and ENV_NAME_PATTERN.fullmatch(name) and literal and is_secret_name(name, secrets, value):
            return f"setup line sets {name} to {written}: export {name} where you launch and pass --secret {name} {by_name}."
        after = value if eq else (words[i + 1] if i + 1 < len(words) else "")
        option = name if eq else word
        token = looks_like_token(after) and "." not in after  # not a registry's host name
        credential = _CREDENTIAL_OPTION.fullmatch(option) or (option == "login" and token)
        path = after.startswith(("/", "~", "./"))  # --token /run/secrets/t: a key's file, as NAME=/path is
        if credential and after and "$" not in after and not after.startswith("-") and not path:
            var = next((v for tool, v in _TOOL_SECRETS.items() if tool in words), "TOKEN")
            return (
                f'setup line gives {option} {written}: write a variable there ("${var}"), export it where you '
                f"launch and pass --secret {var} {by_name}."
            )
    pieces = [line, *words, *(word.partition("=")[2] for word in words)]  # a word, or what a NAME= of it sets
    if holders := sorted({h for piece in pieces for h in secret_holders(piece, secrets)}):  # -o setup="... $HF_TOKEN"
        return (
            f"setup line holds the value of {', '.join(holders)} (set here; not repeated), which would be written into "
            f"the job's files: quote the line in single quotes where you launch, so that the job's shell expands the "
            f"variable (-o setup='export NAME=\"${holders[0]}\"'), and pass --secret {holders[0]} {by_name}."
        )
    if what := credential_in(line):
        fix = {"a URL's password": "https://USER:$GIT_TOKEN@HOST/...", TOKEN_USER: "https://$GIT_TOKEN@HOST/..."}
        fix = fix.get(what, '"$TOKEN"')
        return (
            f"setup line holds {what} (not repeated here), which would be written into the job's files: write a "
            f"variable there ({fix}), export it where you launch and pass --secret with its name {by_name}."
        )
    return None


# a URI's user, and its password where it has one (scheme://USER:PASSWORD@HOST/...; a :PORT/ is no password)
URI_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@:]*)(?::([^\s@]*))?@")
# an object store's own credential variables, which a job reaching it gets by name (storage.job_env)
_STORE_KEYS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (its key file)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
    "hf": "HF_TOKEN",
}


def uri_credentials(value: str) -> bool:
    """Whether ``value`` holds a URI with a user and password (s3://KEY:SECRET@bucket/x, https://user:pass@host), or a
    user that is a token (https://hf_...@host)."""
    for m in URI_USERINFO.finditer(value):
        user, password = m.group(2), m.group(3)
        if password is not None and not re.fullmatch(r"\d+/.*", password):  # host:PORT/path@...: no password
            return True
        if password is None and (looks_like_token(user) or credential_in(user)):
            return True
    return False


def uri_credentials_said(key: str, value: str) -> str:
    """uri_credentials' line: without them, and the store's own variables instead (the value is not repeated)."""
    if key == "s3_endpoint_url":
        return (
            "s3_endpoint_url holds a user and password (not repeated here): give the endpoint alone (http://HOST:PORT) "
            "and the keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY where you launch."
        )
    bare = URI_USERINFO.sub(lambda m: m.group(1), value)
    shown = f" ({bare})" if not (holds_credential(bare) or uri_credentials(bare)) else ""
    keys = _store_keys(value)
    return (
        f"{key} holds a URI with a user and password (not repeated here), and {key} is written into the rendered job "
        f"files and spec.json: give it without them{shown} and the store's keys in its own variables where you "
        f"launch ({keys}); the job gets those by name."
    )


def key_value_said(key: str, value: str) -> str:
    """How a message names ``key`` and its ``value``: KEY=VALUE (KEY='VALUE' where it holds a newline or another
    control character: the message stays one line), or, where the value holds a credential (holds_credential: a
    secret pasted into the wrong place), KEY and words saying so; the value is never repeated."""
    if holds_credential(value):
        return f"{key} (its value holds a credential; not repeated here)"
    return f"{key}={value}" if value.isprintable() else f"{key}={value!r}"


def holds_credential(text: str) -> bool:
    """Whether ``text`` holds a secret's value set here, a token's shape or a URI's password: never repeated."""
    return bool(secret_holders(text) or credential_in(text) or uri_credentials(text))


def credential_in(text: str, path: bool = False) -> str | None:
    """What credential ``text`` holds by its shape (CREDENTIAL_VALUE, or a token as a URL's user:
    https://TOKEN@host, as `git clone` takes one), in words; None: none seen. ``path``: ``text`` is a path or URI,
    whose names may begin as a token does: a token there is one as issued (TOKEN_IN_PATH)."""
    shapes = {**CREDENTIAL_VALUE, TOKEN: TOKEN_IN_PATH} if path else CREDENTIAL_VALUE
    if what := next((what for what, shape in shapes.items() if shape.search(text)), None):
        return what
    return TOKEN_USER if any(_token_user(m) for m in URI_USERINFO.finditer(text)) else None


def _token_user(m: re.Match) -> bool:
    """Whether URI_USERINFO's match is a user alone that has a token's shape (no $VARIABLE: a reference)."""
    return m.group(3) is None and "$" not in m.group(2) and looks_like_token(m.group(2))


def path_like(value: str) -> bool:
    """Whether ``value`` reads as a path or URI (/x, ~/x, ./x, ../x, SCHEME://...): credential_in's ``path``."""
    return value.startswith(("/", "~", "./", "../")) or bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value))


def token_variable(text: str) -> str:
    """The variable the token in ``text`` is read from where a job needs it (HF_TOKEN for hf_...), else NAME."""
    m = CREDENTIAL_VALUE[TOKEN].search(text)
    return next((v for prefix, v in _TOKEN_VARIABLES.items() if m and m.group().startswith(prefix)), "NAME")


def written_credential_said(key: str, value: str, what: str) -> str:
    """The one line that refuses ``key``'s ``value`` holding a credential (``what``: credential_in's words), which every
    backend would write into the job's files (job.sbatch, task.yaml, the docker run line, spec.json): it says what it
    holds, never the value, and how the job gets the credential instead (by name, from where you launch)."""
    where = f"{key} holds {what} (not repeated here), and {key} is written into the rendered job files and spec.json"
    if what == SIGNED_URL:
        return (
            f"{where}: give the object's URI without it (s3://BUCKET/KEY, gs://..., az://..., hf://...) and the "
            "store's keys where you launch (HF_TOKEN for the Hub); the job gets those by name."
        )
    var = token_variable(value)
    return (
        f"{where}: leave the credential out of {key}; export it where you launch as {var} and pass --secret {var} "
        "(the job reads it by name; secrets are never written)."
    )


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has the shape of a credential rather than a variable's name (TOKEN_RUN)."""
    return any(re.search(r"\d", run) and re.search(r"[A-Za-z]", run) for run in TOKEN_RUN.findall(text))


def secret_holders(value: str, secrets=(), environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """The variables set in ``environ`` that hold a credential (is_secret_name: the run's ``secrets``, a store's, a
    name like one) whose value ``value`` is, or holds (one of a token's length, 16 characters or more):
    ``-o env=X=$WANDB_API_KEY``, the shell's expansion, would write it into the job's files. A flag's value (0,
    true, ...), a path (a key's file) or one of under 4 characters is nobody's secret."""
    environ = os.environ if environ is None else environ
    return sorted(
        name
        for name, secret in environ.items()
        if len(secret) >= 4
        and secret.strip().lower() not in FLAG_VALUES
        and not secret.startswith(("/", "~", "./"))
        and (secret == value or (len(secret) >= 16 and secret in value))
        and is_secret_name(name, secrets, secret)
    )


def is_secret_name(name: str, secrets=(), value: str | None = None) -> bool:
    """Whether environment variable ``name`` holds a credential: one of the run's ``secrets``, a store's
    (storage.SECRET_ENV), or a name like one (CREDENTIAL_NAME) whose ``value`` is not a flag's."""
    if name in secrets or name.upper() in storage.SECRET_ENV:
        return True
    return bool(CREDENTIAL_NAME.search(name)) and (value is None or value.strip().lower() not in FLAG_VALUES)


def argument_problem(what: str, value: str, environ: typing.Mapping[str, str] | None = None) -> str | None:
    """The one line that refuses a command's argument holding a credential (None: it holds none), without repeating
    it: a RUN or JOB, a URI or path of sync, eval, chat, merge, data check, an --endpoint-url, where a credential
    pasted by mistake was repeated in the error (a traceback from botocore or huggingface_hub, for some). What it
    holds: the value of a credential variable set here (secret_holders), a URI's user and password or a token as its
    user, a signed URL's signature, a token's shape (an issued one in a path or URI: TOKEN_IN_PATH). launch's run keys
    are refused by spec.build, key by key, in the same words."""
    commands = "ftctl reads it by name from the environment where it runs"
    if holders := secret_holders(value, environ=environ):
        return (
            f"{what} holds the value of {', '.join(holders)} (set here; not repeated): leave it out of {what}; "
            f"{commands}."
        )
    if uri_credentials(value):
        bare = URI_USERINFO.sub(lambda m: m.group(1), value)
        shown = f" ({bare})" if not holds_credential(bare) else ""
        return (
            f"{what} holds a URI with a user and password, or a token as its user (not repeated here): give it without "
            f"them{shown}, and the store's keys in its own variables ({_store_keys(value)}); {commands}."
        )
    # every argument here is a path, URI, model id or run name: spec.build's rule for path keys (an issued token only)
    what_held = credential_in(value, path=True)
    if what_held == SIGNED_URL:
        return (
            f"{what} holds {what_held} (not repeated here): give the object's URI without it (s3://BUCKET/KEY, gs://..., "
            f"az://..., hf://...) and the store's keys in their variables where you run ftctl (HF_TOKEN for the Hub)."
        )
    if what_held:
        var = token_variable(value)
        return f"{what} holds {what_held} (not repeated here): export it as {var} instead and leave it out of {what}; {commands}."
    return None


def _store_keys(value: str) -> str:
    """The credential variables of the stores ``value``'s URIs name (every store's where it names none)."""
    found = {
        storage.REMOTE_SCHEMES[s][0]
        for m in URI_USERINFO.finditer(value)
        if (s := m.group(1)[:-3].lower()) in storage.REMOTE_SCHEMES
    }
    return "; ".join(_STORE_KEYS[p] for p in sorted(found) if p in _STORE_KEYS) or "; ".join(
        f"{p}: {v}" for p, v in _STORE_KEYS.items()
    )


_SIGNED_PART = re.compile(f"({_SIGNED_NAME}){_SIGNED_VALUE}", re.I)


def redacted(text: str, environ: typing.Mapping[str, str] | None = None) -> str:
    """``text`` with each credential in it masked, for what ftctl prints or keeps of an error it did not write itself
    (a library's exception in a failure record, any error line the CLI prints): the value of a credential variable set
    in ``environ`` (is_secret_name; 8 characters or more, no flag's value nor a path) as <NAME>, a URI's user and
    password, or a token as its user, as <credentials>, a signed URL's signature or token as <signature>, an issued
    token's shape (TOKEN_IN_PATH) as <token>. A message that says a value by a way no check foresaw still hides it."""
    environ = os.environ if environ is None else environ
    text = storage.redact(text, environ)  # the stores' variables, and the parts of Azure's connection string
    held = [
        (name, value)
        for name, value in environ.items()
        if len(value) >= 8
        and value.strip().lower() not in FLAG_VALUES
        and not value.startswith(("/", "~", "./"))
        and is_secret_name(name, (), value)
    ]
    for name, value in sorted(held, key=lambda nv: -len(nv[1])):  # the longest first: one may hold another
        text = text.replace(value, f"<{name}>")

    def userinfo(m: re.Match) -> str:
        password = m.group(3)
        hidden = (password is not None and not re.fullmatch(r"\d+/.*", password)) or _token_user(m)
        return f"{m.group(1)}<credentials>@" if hidden else m.group(0)

    text = URI_USERINFO.sub(userinfo, text)
    text = _SIGNED_PART.sub(lambda m: f"{m.group(1)}<signature>", text)
    return TOKEN_IN_PATH.sub("<token>", text)
