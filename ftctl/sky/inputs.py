"""The local inputs a SkyPilot task ships (file_mounts): each --data / --eval-data file or directory, the chat
template, a local --model directory and the files of a lora_model_dir land in the run's directory on every node, where
the spec.json the nodes read names them; what SkyPilot 0.14 would not ship intact is refused. ftctl/sky/render.py
writes the task."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ftctl.backend import JobRef, run_dir_for
from ftctl.envvars import BASE_MODEL_ENV
from ftctl.errors import FtctlError
from ftctl.launch import trainer_env
from ftctl.plan import Plan
from ftctl.spec import RunSpec, adapter_inputs, join_paths, split_paths
from ftctl.storage import scheme

RUN_DIR = "~/ftctl-run"  # on the nodes: one directory per run (run_key), for its spec.json and the inputs shipped
INPUTS = "inputs"  # in a run's directory on the nodes: the local inputs the task ships (file_mounts)


@dataclass(frozen=True)
class Shipped:
    """A local input the task ships: ``local``, its absolute path here (the file_mounts source), lands in ``mount``
    on every node; the nodes' spec.json names it ``node``, relative to the run's directory there."""

    flags: tuple[str, ...]  # what names it: --data, --eval-data, chat_template_path, --model
    local: str
    node: str  # ./inputs/<digest>-<name>: a path, never read as a Hub id
    mount: str  # ~/ftctl-run/RUN/inputs/<digest>-<name>
    size: int  # bytes


def shipped(spec: RunSpec) -> list[Shipped]:
    """Each input of ``spec`` that is a file or directory here, as the task ships it (in the order the spec names
    them, each once). Its name on the node is the digest of its path (and of a directory's file names and sizes:
    SkyPilot's rsync keeps on a reused cluster what a directory no longer holds) and its name, in letters a shell
    line of SkyPilot's takes unquoted. FtctlError naming every one SkyPilot would not ship intact."""
    envs = trainer_env(spec)
    out, problems = [], []
    for local, flags in local_inputs(spec).items():
        size, listing, links = _tree(local)
        problems += _unshippable(f"{flags[0]} {local!r}", local, envs, links)
        digest = hashlib.sha256("\n".join([local, listing]).encode()).hexdigest()[:8]
        name = f"{digest}-{_plain(Path(local).name)}"
        out.append(Shipped(tuple(flags), local, f"./{INPUTS}/{name}", f"{node_dir(spec)}/{INPUTS}/{name}", size))
    out += _adapter_shipped(spec, envs, problems)
    if len(problems) > 1:
        raise FtctlError(
            f"{len(problems)} local inputs SkyPilot would not ship intact:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    if problems:
        raise FtctlError(problems[0])
    return out


ADAPTER_FLAG = "lora_model_dir"


def _adapter_shipped(spec: RunSpec, envs: dict[str, str], problems: list[str]) -> list[Shipped]:
    """The files of the adapter a run starts from (spec.adapter_inputs: its config, weights, and its run's spec.json)
    as the task ships them, each a file_mounts entry of its own: the rest of that run's output (its checkpoints,
    optimizer states) stays here. They land as they lie in that output, under ./inputs/<digest>-adapter/<its run's
    directory name>/ (a checkpoint-N in it), so the model card names it as it would here (RUN/checkpoint-N)."""
    files = adapter_inputs(spec)
    if not files:
        return []
    adapter = Path(spec.lora_model_dir).expanduser().resolve()
    top = adapter.parent if adapter.name.startswith("checkpoint-") else adapter
    listing = "\n".join([str(adapter), *(f"{f}\t{os.path.getsize(f)}" for f in files)])
    base = f"{INPUTS}/{hashlib.sha256(listing.encode()).hexdigest()[:8]}-adapter/{_plain(top.name)}"
    out = []
    for local in files:
        link = [os.path.basename(local)] if os.path.islink(local) else []  # rsync -a would copy the link
        problems += _unshippable(f"{ADAPTER_FLAG} {local!r}", local, envs, link)
        rel = os.path.relpath(local, top)  # adapter_config.json, spec.json, checkpoint-N/adapter_config.json
        out.append(
            Shipped((ADAPTER_FLAG,), local, f"./{base}/{rel}", f"{node_dir(spec)}/{base}/{rel}", _tree(local)[0])
        )
    return out


def _adapter_on_node(inputs: list[Shipped]) -> str | None:
    """Where the nodes read the lora_model_dir shipped (_adapter_shipped): its adapter_config.json's directory."""
    return next(
        (
            os.path.dirname(s.node)
            for s in inputs
            if s.flags == (ADAPTER_FLAG,) and s.local.endswith("/adapter_config.json")
        ),
        None,
    )


# SkyPilot 0.14's rules for a cluster's name (sky.skylet.constants.CLUSTER_NAME_VALID_REGEX, checked where it makes one:
# for a managed job, on its controller) and a task's (sky/task.py _VALID_NAME_REGEX): the run's key is both
SKY_CLUSTER_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
SKY_TASK_NAME = re.compile(r"[a-zA-Z0-9]+(?:[._-]{1,2}[a-zA-Z0-9]+)*")


def run_key(spec: RunSpec) -> str:
    """The run's own name among runs, as its run directory here is named (backend.run_dir_for: its run_name, else its
    name and a digest of its output): the cluster a launch without --cluster makes or reuses (cluster_name), the run's
    directory on the nodes (node_dir) and the task's name. Two runs of one model into two outputs (a sweep's) each get
    their own; a relaunch into the same output gets the same, and reuses its cluster. Where SkyPilot would refuse that
    name for a cluster or a task (a run_name starting with a digit, ending with '-', holding '___'), it is ftctl-NAME-
    and a digest of NAME: the same for every relaunch, and SkyPilot's; such a name never launched, so no cluster of it
    is left behind."""
    return sky_name(run_dir_for(spec).name)


def sky_name(name: str) -> str:
    """``name`` where SkyPilot takes it for a cluster and a task (a managed job's name is its task's, and its
    clusters' names begin with it), else ftctl-NAME- and a digest of ``name``: the same for the same name."""
    if SKY_CLUSTER_NAME.fullmatch(name) and SKY_TASK_NAME.fullmatch(name):
        return name
    plain = re.sub(r"[._-]{3,}", "--", name).strip("._-")
    return f"ftctl-{plain}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def job_name(run: RunSpec | JobRef) -> str:
    """A managed job's name: its run's name as SkyPilot takes it (sky_name). The one place it is made: the launch
    names the job so (SkyBackend.send), the task's header says it (render's `sky jobs launch -n` line) and its
    trainer's lease holder and a stop request end with it (backend.lease_holder). ``run``: the run's spec, or a
    launched job's JobRef, whose name the launch recorded from that spec (a later launch into the same run directory
    rewrites its spec.json; a job keeps the name it was launched under)."""
    return sky_name(run.name)


def cluster_name(spec: RunSpec) -> str:
    """The SkyPilot cluster a run's launch makes or reuses: --cluster's, else the run's own (run_key). Both are
    SkyPilot cluster names: --cluster's checked as given (spec.py, SkyPilot's rule), the run's made one (run_key); any
    length (SkyPilot shortens the name it gives the cloud, with a hash)."""
    return spec.cluster or run_key(spec)


def node_dir(spec: RunSpec) -> str:
    """The run's directory on every node (named run_key: runs sharing a cluster keep apart): its spec.json, the
    inputs shipped, and the trainer's working directory. Of the spec as asked, or as named (named)."""
    return f"{RUN_DIR}/{run_key(spec)}"


def named(node: RunSpec, spec: RunSpec) -> RunSpec:
    """``node`` (on_node's) as the task is rendered from it: named after the run's directory (run_dir_for), so that the
    task's name, its cluster and the run's directory on the nodes are the run's own (run_key) and the header names the
    run's directory here. on_node's spec is the trainer's, whose name stays the run's name (the directory adds a digest
    of the output where no run_name is given)."""
    return replace(node, run_name=run_dir_for(spec).name)


def local_inputs(spec: RunSpec) -> dict[str, list[str]]:
    """{absolute path here: the flags that name it} of the inputs of ``spec`` that are files or directories here."""
    named = [*spec.data_sources, ("chat_template_path", spec.chat_template_path), ("--model", spec.model_name_or_path)]
    found: dict[str, list[str]] = {}
    for flag, p in named:
        if here := _here(p):
            found.setdefault(here, []).append(flag)
    return found


def _here(path: str | None) -> str | None:
    """The absolute path of ``path`` where it names a file or directory of this machine (no URI, no builtin:)."""
    if not path or scheme(path) or path.startswith("builtin:") or not Path(path).expanduser().exists():
        return None
    return str(Path(path).expanduser().resolve())


def on_node(spec: RunSpec, inputs: list[Shipped]) -> RunSpec:
    """``spec`` as the nodes read it: each shipped input named where it lands; the run keeps its name (a model
    directory's name gives the default one)."""
    if not inputs:
        return spec
    where = {s.local: s.node for s in inputs if s.flags != (ADAPTER_FLAG,)}

    def node(p):
        return where.get(_here(p), p)

    model = node(spec.model_name_or_path)
    env = {**spec.env, BASE_MODEL_ENV: spec.model_name_or_path} if model != spec.model_name_or_path else spec.env
    return replace(
        spec,
        run_name=spec.name,
        env=env,
        data_path=join_paths(node(p) for p in split_paths(spec.data_path)),
        eval_data_path=join_paths(node(p) for p in split_paths(spec.eval_data_path)) or None,
        data_columns={node(p): named for p, named in spec.data_columns.items()},  # by its dataset's path
        chat_template_path=node(spec.chat_template_path),
        model_name_or_path=model,
        lora_model_dir=_adapter_on_node(inputs) or spec.lora_model_dir,
    )


def _tree(path: str) -> tuple[int, str, list[str]]:
    """(bytes, one line of name and size per file, the symbolic links inside) of a file or directory."""
    if not os.path.isdir(path):
        return os.path.getsize(path), "", []
    size, rows, links = 0, [], []
    for root, dirs, files in os.walk(path):  # a link to a directory is listed, not followed
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                links.append(rel)
            elif os.path.isfile(full):
                size += (n := os.path.getsize(full))
                rows.append(f"{rel}\t{n}")
    return size, "\n".join(sorted(rows)), sorted(links)


def _unshippable(said: str, path: str, envs: dict[str, str], links: list[str]) -> list[str]:
    """Why SkyPilot 0.14 would not ship ``path`` intact. Its rsync line quotes a source as Python's repr does
    (sky/utils/command_runner.py), a shell word only where that is the path verbatim in single quotes, or in double
    quotes without $ or `; it replaces $NAME in file_mounts with the task's env NAME (sky/task.py); it copies a
    symbolic link as a link (rsync -a), and a managed job's bucket upload leaves it out."""
    quoted = repr(path)
    problems = []
    if quoted[1:-1] != path or (quoted[0] == '"' and set("$`") & set(path)):
        problems.append(
            f"{said}: SkyPilot writes a file_mounts source into a shell line as Python quotes it, which breaks on (or "
            "runs) a backslash, a control character, or ' together with \", $ or `: copy it to a path without them."
        )
    if named := sorted({n for n in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", path) if n in envs}):
        problems.append(
            f"{said}: SkyPilot replaces ${named[0]} in a file_mounts path with the task's env {named[0]}: copy it to a "
            "path without it."
        )
    if ignored := git_ignored(path):
        more = f" and {len(ignored) - 1} more" if len(ignored) > 1 else ""
        problems.append(
            f"{said} is in a git repository that ignores {ignored[0]!r}{more} under it, which SkyPilot leaves out of "
            f"what it ships (its .gitignore rules): put an empty {SKYIGNORE} file in it (SkyPilot reads that "
            "instead), or copy it out of the repository."
        )
    if links:
        more = f" and {len(links) - 1} more" if len(links) > 1 else ""
        problems.append(
            f"{said} holds symbolic links ({links[0]!r}{more}), which SkyPilot does not copy as files: pass a "
            "directory of the files themselves (a model from the Hub's cache: hf download ORG/NAME --local-dir DIR)."
        )
    return problems


HF_LOCAL_CACHE = ".cache/huggingface"  # in a directory `hf download --local-dir` wrote: its metadata
SKYIGNORE = ".skyignore"  # in a directory SkyPilot ships: what it leaves out, read instead of git's rules


def git_ignored(path: str) -> list[str]:
    """What SkyPilot 0.14 leaves out of the directory ``path`` when it ships it (sky/data/storage_utils.py,
    get_excluded_files): where it holds no .skyignore, what git ignores under it, as ``git ls-files`` lists it;
    nothing where git is missing, ``path`` is in no repository, or the repository ignores all of it."""
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, SKYIGNORE)):
        return []
    try:
        out = subprocess.run(
            ["git", "-c", "safe.directory=*", "-C", path, "ls-files", "-z", "--others", "--ignored"]
            + ["--exclude-standard", "--directory"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    items = out.stdout.split("\0")[:-1] if out.returncode == 0 else []
    if "./" in items:
        return []
    # `hf download --local-dir`'s own bookkeeping ignores itself (.cache/huggingface/.gitignore: *): no loss
    return [i for i in items if i.rstrip("/") not in (".cache", HF_LOCAL_CACHE) and not i.startswith(HF_LOCAL_CACHE)]


def _plain(name: str) -> str:
    """``name`` in letters, digits, '.', '_' and '-' (SkyPilot runs ``mkdir -p DEST`` unquoted)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:48] or "input"


def shipping_note(spec: RunSpec, plan: Plan, inputs: Sequence[Shipped]) -> str | None:
    """One line: how much the task ships and how it travels (a model directory can be many GB); None: nothing."""
    if not inputs:
        return None
    from ftctl.checkpoints.sync import human_size

    model = next((s for s in inputs if "--model" in s.flags), None)
    what = f"{len(inputs)} local input(s), {human_size(sum(s.size for s in inputs))}"
    if model:
        what += f", the --model directory {human_size(model.size)}"
    nodes = f"each of the {plan.nodes} nodes" if plan.nodes > 1 else "the node"
    how = (
        f"SkyPilot uploads them for its jobs controller (to jobs.bucket, else a bucket of its own, where a cloud's "
        f"object storage is enabled) and copies them to {nodes} at each start and recovery"
        if spec.managed_job
        else f"SkyPilot copies them to {nodes} at launch"
    )
    hub = "; a model on the Hub (a private repo and --secret HF_TOKEN) downloads on the nodes instead" if model else ""
    return f"file_mounts: {what}: {how}{hub}."
