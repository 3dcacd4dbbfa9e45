"""The Hugging Face Hub as the planner asks it: a model's config.json, so that `plan` sizes any hub id.

From huggingface_hub's cache when the model (or its config) was downloaded before, else one GET of
``{HF_ENDPOINT}/{id}/resolve/main/config.json`` with HF_TOKEN (or a saved ``hf auth login``) as the bearer:
a few KB, one try, a short timeout (huggingface_hub's own download retries five times, ~25 s offline).
``HF_HUB_OFFLINE=1`` asks the cache only. A failure is a :class:`HubError` whose text says why in words a
user can act on (no such repository, gated, unreachable).

And which commit a revision (a branch, tag or sha: TRL's model_revision) is, so that a launch records it and every
node and every resumed attempt loads that commit (:func:`pin`): one ask of the Hub's API, which says what the revision
is now; the cache's refs/<revision> (huggingface_hub's layout, models--ORG--NAME/refs/main holding the sha of
snapshots/<sha>/) only where the Hub cannot be asked (HF_HUB_OFFLINE, no answer): a machine's refs/main is as old as
its last download.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex

# a hub id as the Hub spells them: org/name (the preflight's check of --model, the planner's question)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# a model's id from before the Hub's namespaces (gpt2, distilgpt2): moved under its maker's org, the old id redirected
BARE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# the causal LMs of those (the Hub's own redirects, as huggingface.co/gpt2 answers): said offline too
MOVED = {
    **{n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt")},
    "distilgpt2": "distilbert/distilgpt2",
}
# the suffixes of a model's tuned variants (Llama-3.1-8B-Instruct, Llama-2-7b-chat-hf, gemma-2-9b-it), lower-cased
VARIANT_SUFFIXES = ("-instruct", "-chat-hf", "-chat", "-it", "-hf", "-base")  # a variant of a known id keeps its shape
DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG = "config.json"
TIMEOUT_S = 5.0
MAIN = "main"  # the revision a hub id names without one (huggingface_hub's and TRL's default)
# a commit as the Hub and its cache name them (huggingface_hub's REGEX_COMMIT_HASH): 40 hex digits
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# a branch, tag, commit or refs/pr/N as the Hub takes them in a URL (git's ref names, a little narrower)
REVISION = re.compile(r"^(?!.*\.\.)(?!/)(?!.*//)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}(?<![/.])$")


class HubError(Exception):
    """Why the Hub gave no config: a clause to put after "Cannot tell the size of model X: "; ``kind`` says
    which: missing (no such repository, or no config.json in it), denied (private or gated), unreachable, cache (the
    Hugging Face cache is there but not readable by this user: unreadable_cache), revision (the repository has no such
    branch, tag or commit: commit_of)."""

    def __init__(self, message: str, kind: str = "unreachable"):
        super().__init__(message)
        self.kind = kind


# how this host reaches the Hub: a container on it (the docker backend) gets those set here, as a local run has them
NETWORK_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")


def _endpoint() -> str:
    """The Hub's address: HF_ENDPOINT (a mirror, a company proxy) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _config_url(endpoint: str, repo_id: str, revision: str = MAIN) -> str:
    from urllib.parse import quote

    return f"{endpoint.rstrip('/')}/{repo_id}/resolve/{quote(revision, safe='')}/{CONFIG}"


def offline(env=None) -> bool:
    """Whether HF_HUB_OFFLINE asks huggingface_hub for its cache only (its own reading of the variable), in this
    environment or ``env`` (a job's: a mapping of its variables)."""
    return (os.environ if env is None else env).get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def unreadable_cache() -> str | None:
    """Why this user cannot read the Hugging Face cache (HF_HOME, HF_HUB_CACHE) that is there; None where they can, or
    where there is none yet. A lab's shared HF_HOME is made 0700 by the first `hf auth login` into it (huggingface_hub
    keeps the token's directory, HF_HOME itself, private): every other user's model was then "not in the Hugging Face
    cache", or downloaded again elsewhere."""
    from huggingface_hub import constants

    from ftctl.runpaths import owned_by_another

    hub, home = constants.HF_HUB_CACHE, constants.HF_HOME
    # the models' cache, and HF_HOME where it holds it (a 0700 HF_HOME hides the cache inside: isdir says no); a
    # private HF_HUB_CACHE elsewhere is read whatever HF_HOME is
    inside = os.path.commonpath([os.path.abspath(hub), os.path.abspath(home)]) == os.path.abspath(home)
    for place in [home, hub] if inside else [hub]:
        if os.path.isdir(place) and not os.access(place, os.R_OK | os.X_OK):
            whose = owned_by_another(place)
            return (
                f"the Hugging Face cache {place} is there but not readable by you{f' ({whose})' if whose else ''}: "
                "`hf auth login` with HF_HOME shared makes it 0700 (to keep the token there private). Have it made "
                f"readable again (chmod 2775 {shlex.quote(place)}), and log in with HF_TOKEN_PATH=~/.cache/huggingface/token, or "
                "set HF_HOME to a cache of your own"
            )
    return None


@functools.lru_cache(maxsize=32)
def model_config(repo_id: str, revision: str = MAIN) -> dict:
    """The model's config.json as a dict (of ``revision``: a branch, tag or commit)."""
    from huggingface_hub import try_to_load_from_cache

    if said := unreadable_cache():
        raise HubError(said, "cache")

    cached = try_to_load_from_cache(repo_id, CONFIG, revision=revision)
    if isinstance(cached, str):
        with open(cached) as f:
            return json.load(f)
    if offline():
        if revision != MAIN:  # the model may be there at main: the revision is what is missing (said, with the cache's)
            raise HubError(f"{_cache_holds(repo_id, revision)}, and HF_HUB_OFFLINE is set")
        raise HubError("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    import httpx
    from huggingface_hub import get_token

    endpoint = _endpoint()
    token = os.environ.get("HF_TOKEN") or get_token()
    url = _config_url(endpoint, repo_id, revision)
    try:
        r = httpx.get(
            url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=TIMEOUT_S, follow_redirects=True
        )
    except httpx.HTTPError as e:
        said = f"the Hub ({endpoint}) did not answer ({type(e).__name__})"
        raise HubError(f"{_cache_holds(repo_id, revision)}, and {said}" if revision != MAIN else said) from None
    code = r.headers.get("X-Error-Code", "")
    if r.status_code in (401, 403) or code == "GatedRepo":
        why = "HF_TOKEN is not set" if not token else "HF_TOKEN's account has no access to it"
        raise HubError(
            f"the Hub keeps it private or gated and {why} (accept its licence on the Hub, export HF_TOKEN)", "denied"
        )
    if r.status_code == 404:
        if code == "EntryNotFound":
            raise HubError("its repository on the Hub has no config.json", "missing")
        raise HubError("the Hub has no model repository of that name (check the id)", "missing")
    if r.status_code != 200:
        raise HubError(f"the Hub answered {r.status_code}")
    try:
        return r.json()
    except ValueError:
        raise HubError("its config.json on the Hub is not JSON") from None


def cached_config(repo_id: str, revision: str) -> bool:
    """Whether this machine's Hugging Face cache holds ``repo_id``'s config.json at ``revision`` (a commit: its
    snapshots/<sha>/; a branch or tag: through its refs/), which model_config then reads without asking the Hub."""
    from huggingface_hub import try_to_load_from_cache

    if unreadable_cache():
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, CONFIG, revision=revision), str)
    except (OSError, ValueError):
        return False


WEIGHTS = (".safetensors", ".bin", ".index.json")  # a snapshot holding one of these has the model's weights


@functools.lru_cache(maxsize=32)
def unreachable(repo_id: str) -> str | None:
    """Why the Hub cannot be asked of ``repo_id`` from here (None: it answers, whatever it says): one HEAD of its
    config.json, a short timeout. transformers' loading of a cached model still asks the Hub of each file first, and
    huggingface_hub retries each five times with backoff: a tiny model took 169 s to load on a node without network
    and without HF_HUB_OFFLINE."""
    import httpx

    endpoint = _endpoint()
    try:
        httpx.head(_config_url(endpoint, repo_id), timeout=TIMEOUT_S)
    except httpx.HTTPError as e:
        return f"the Hub ({endpoint}) did not answer ({type(e).__name__})"
    return None


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str | None:
    """The Hugging Face cache's directory of ``repo_id``'s ``revision`` (default main) where it holds its config and
    weights (None: not there, or only part of it: its config from the planner's question); ``cache_dir``: that
    cache's models directory (HF_HUB_CACHE's, a job's), else this environment's."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    names = os.listdir(path)
    return path if CONFIG in names and any(n.endswith(WEIGHTS) for n in names) else None


# ------------------------------------------------------------------------------------ revisions
def _repo_cache(repo_id: str):
    """``repo_id``'s folder in the Hugging Face cache (huggingface_hub's layout: HF_HUB_CACHE/models--ORG--NAME),
    None where the cache cannot be read by this user (unreadable_cache)."""
    from pathlib import Path

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if unreadable_cache():
        return None
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_refs(repo_id: str) -> dict[str, str]:
    """The revisions the cache knows of ``repo_id`` by name (its refs/: main, a tag, refs/pr/1) -> their commit."""
    repo = _repo_cache(repo_id)
    refs = repo / "refs" if repo else None
    out = {}
    for f in sorted(refs.rglob("*")) if refs and refs.is_dir() else ():
        try:
            sha = f.read_text().strip() if f.is_file() else ""
        except OSError:
            continue
        if COMMIT.match(sha):
            out[f.relative_to(refs).as_posix()] = sha
    return out


def commit_of(repo_id: str, revision: str = MAIN) -> tuple[str, str]:
    """The commit ``revision`` (a branch, tag or commit) of the model ``repo_id`` is, and where that was read: one ask
    of the Hub's API (huggingface_hub's model_info, a short timeout), which says what the revision is now; the Hugging
    Face cache's refs/<revision> only where the Hub cannot be asked (HF_HUB_OFFLINE, no answer) or refuses (the
    repository gone, gated: what the cache holds still loads), the words saying so (a machine's refs/main is as old as
    its last download). A commit given whole whose snapshots/<sha>/ the cache holds is itself, unasked. A
    :class:`HubError` where neither says: kind revision (the Hub has no such revision), missing (no such repository),
    denied (private or gated), unreachable (HF_HUB_OFFLINE, or no answer: its text says what the cache holds)."""
    repo = _repo_cache(repo_id)
    if COMMIT.match(revision) and repo and (repo / "snapshots" / revision).is_dir():
        return revision, "in the Hugging Face cache"
    cached = cached_refs(repo_id).get(revision)
    if offline():
        if cached is not None:
            return cached, f"the Hugging Face cache's refs/{revision}: HF_HUB_OFFLINE is set"
        raise HubError(f"{_cache_holds(repo_id, revision)}, and HF_HUB_OFFLINE is set")
    try:
        return _hub_commit(repo_id, revision)
    except HubError as e:
        if cached is None:
            if e.kind == "unreachable":
                raise HubError(f"{_cache_holds(repo_id, revision)}, and {e}") from None
            raise
        return cached, f"the Hugging Face cache's refs/{revision}: {e}"


def _hub_commit(repo_id: str, revision: str) -> tuple[str, str]:
    """commit_of's ask of the Hub: the commit ``revision`` is there now, and where that was read; a :class:`HubError`
    saying why not (its kinds)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = _endpoint()
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=TIMEOUT_S)
    except RevisionNotFoundError:
        raise HubError(f"the Hub's {repo_id} has no {revision!r} (no such branch, tag or commit)", "revision") from None
    except GatedRepoError:
        raise HubError("the Hub keeps it gated and answers only with access to it (HF_TOKEN)", "denied") from None
    except RepositoryNotFoundError:
        raise HubError(
            "the Hub has no model repository of that name, or keeps it private (HF_TOKEN)", "missing"
        ) from None
    except Exception as e:  # no network, a proxy's page, a timeout: httpx's and huggingface_hub's own kinds
        raise HubError(f"the Hub ({endpoint}) did not answer ({type(e).__name__})") from None
    if not isinstance(info.sha, str) or not COMMIT.match(info.sha):
        raise HubError(f"the Hub ({endpoint}) named no commit of {revision!r}")
    return info.sha, f"the Hub's {revision} now" if revision != info.sha else "on the Hub"


def _cache_holds(repo_id: str, revision: str) -> str:
    """That the cache does not know ``revision`` of ``repo_id``, and what of it it does know."""
    refs = cached_refs(repo_id)
    repo = _repo_cache(repo_id)
    commits = sorted(p.name for p in (repo / "snapshots").iterdir()) if repo and (repo / "snapshots").is_dir() else []
    if not refs and not commits:
        return "it is not in this machine's Hugging Face cache"
    known = [*refs, *([f"{len(commits)} commit{'s' * (len(commits) != 1)}"] if commits else [])]
    return f"this machine's Hugging Face cache has no {revision!r} of it (it has {', '.join(known)})"


def cached_commits(repo_id: str) -> list[str]:
    """The commits of ``repo_id`` whose whole snapshot (config and weights: cached_snapshot) the cache holds, the one
    its refs/main names first."""
    repo = _repo_cache(repo_id)
    shas = sorted(p.name for p in (repo / "snapshots").iterdir()) if repo and (repo / "snapshots").is_dir() else []
    main = cached_refs(repo_id).get(MAIN)
    return [c for c in sorted(shas, key=lambda c: c != main) if COMMIT.match(c) and cached_snapshot(repo_id, c)]


def pin(repo_id: str, revision: str | None) -> tuple[str | None, str]:
    """The commit to record for the hub model ``repo_id`` asked for at ``revision`` (None: main), and a line saying
    which. Where neither the cache nor the Hub can tell it here: main goes on unpinned, as every launch did before
    revisions were pinned ((None, why)); a commit given whole is a pin already, recorded as given. A :class:`HubError`
    where the Hub has no such revision (kind revision), or another branch or tag cannot be told here."""
    asked = revision or MAIN
    try:
        sha, where = commit_of(repo_id, asked)
    except HubError as e:
        if e.kind == "revision":
            raise
        if asked == MAIN:
            return None, (
                f"{repo_id} not pinned to a commit ({e}): each node loads its main as it is when the job starts; "
                "-o model_revision=COMMIT pins one"
            )
        if COMMIT.match(asked):
            return asked, f"{repo_id} at commit {asked}, as given (not checked here: {e})"
        raise
    said = f"commit {sha}" if sha == asked else f"model_revision {asked} is commit {sha} ({where})"
    return sha, f"{repo_id}: {said}: every node and every resumed attempt loads it"


# ------------------------------------------------------------------------------------ names
def namespaced(name: str) -> str | None:
    """The ORG/NAME id of a model named as before the Hub's namespaces (``name``: gpt2 is openai-community/gpt2): from
    MOVED, else one ask of the Hub's API (a short timeout; it redirects an old id to the model's page, whose id is
    the new one). None where ``name`` is no such name, or the Hub cannot be asked (HF_HUB_OFFLINE, no answer)."""
    if not BARE_ID.fullmatch(name) or ".." in name:
        return None
    if (moved := MOVED.get(name.lower())) is not None:
        return moved
    if offline():
        return None
    import httpx
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    try:
        r = httpx.get(
            f"{_endpoint().rstrip('/')}/api/models/{name}",
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=TIMEOUT_S,
            follow_redirects=True,
        )
        found = r.json().get("id") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and HUB_ID.match(found) else None


def nearest_id(typed: str, ids, cutoff: float = 0.6) -> str | None:
    """The id of ``ids`` (known ids), or of a tuned variant of one (its base with a VARIANT_SUFFIXES suffix), closest
    to ``typed`` case-insensitively (difflib's ratio, as errors.did_you_mean), spelled as ``typed`` where they agree:
    meta-llama/Llama-3.1-8b-instrut is meta-llama/Llama-3.1-8b-instruct (its -Instruct kept, not its base model's id);
    None where none is as close as ``cutoff``, ``typed`` is one, or ``typed`` holds a number the closest lacks (another
    model of another size or version: Qwen3-30B-A3B was told "Did you mean 'Qwen/Qwen2.5-0.5B-chAt'?")."""
    import difflib

    ends = "|".join(re.escape(s) for s in VARIANT_SUFFIXES)
    choices = set()
    for known in ids:
        base = re.sub(f"({ends})+$", "", known.lower())
        choices |= {known.lower(), base, *(base + s for s in VARIANT_SUFFIXES)}
    word = typed.lower()
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=cutoff)
    if not close or close[0] == word:  # (itself: nothing to suggest)
        return None
    if set(re.findall(r"\d+", word)) - set(re.findall(r"\d+", close[0])):  # a number it lacks: another model
        return None  # (Qwen3-8B is no typo of Qwen2.5-7B, gemma-3-12b-it none of gemma-2-2b-it)
    # the user's own spelling (their capitals) where it agrees with the id, the id's letters where it does not
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, word, close[0]).get_opcodes():
        out.append(typed[i1:i2] if op == "equal" else close[0][j1:j2])
    return "".join(out)
