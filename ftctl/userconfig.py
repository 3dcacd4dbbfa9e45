"""The user's config file, ``$XDG_CONFIG_HOME/ftctl/config.yaml`` (``~/.config/ftctl/config.yaml``):
its one reader and its one writer.

    backend: slurm                   # where `launch` runs without --backend (FTCTL_BACKEND wins)
    image: ghcr.io/my-org/ftctl:TAG  # the image sky, slurm and docker runs use without --container;
                                     # `none`: never an image unless --container names one
    slurm_container: apptainer       # how Slurm runs an image: apptainer (the default) or pyxis
    built:                           # written by `ftctl build`, newest first
    - image: ghcr.io/my-org/ftctl:0.1.0-cu130-torch2.13.0-fa2.8.3.post2-sm90
      where: pushed                  # pushed (to a registry), local (this docker engine) or sif (a file)
      gpus: H100                     # the tiers its flash-attn was compiled for
      ftctl: 0.1.0
      date: '2026-12-01'

A person writes the first three keys; ``ftctl build`` rewrites only the ``built:`` block (the rest of
the file, comments included, stays as written), through a temporary file and a rename, so no reader
ever sees half a file. Which of these a run gets is decided in ftctl/docker/image.py
(:func:`~ftctl.docker.image.configured`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftctl import __version__
from ftctl.errors import FtctlError, did_you_mean, read_config_text, yaml_problem
from ftctl.gpus import parse
from ftctl.spec import BACKENDS

SLURM_CONTAINERS = ("apptainer", "pyxis")
WHERE = ("pushed", "local", "sif")  # a registry; this machine's docker engine; an apptainer .sif file
MAX_BUILT = 20  # records kept, newest first
_BUILT_MARK = "# built: written by `ftctl build`, newest first (the keys above are yours)\n"
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@#+-]*$")


@dataclass(frozen=True)
class Built:
    """One image ``ftctl build`` made (or pushed, or wrote as a .sif)."""

    image: str  # REGISTRY/ftctl:TAG, or the .sif's absolute path
    where: str  # one of WHERE
    gpus: str  # the tiers it was built for, comma-separated
    ftctl: str = __version__  # the ftctl inside it
    date: str = ""  # YYYY-MM-DD
    cuda: str = ""  # its torch build (cu130, cu126); "": the default one (records made before there was a choice)


@dataclass(frozen=True)
class UserConfig:
    backend: str | None = None
    image: str | None = None  # "none": no image unless --container names one
    slurm_container: str = "apptainer"
    built: tuple[Built, ...] = ()


KEYS = [f.name for f in dataclasses.fields(UserConfig)]
_BUILT_KEYS = [f.name for f in dataclasses.fields(Built)]


def config_path() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "ftctl" / "config.yaml"


def load() -> UserConfig:
    """The config, validated; every problem of the file in one FtctlError."""
    path = config_path()
    return _parse(read_config_text(path, "ftctl's config: YAML of its keys") if path.is_file() else "", path)


def _parse(text: str, path: Path) -> UserConfig:
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise FtctlError(f"{path} is not valid YAML: {yaml_problem(e)}.") from None
    if not isinstance(raw, dict):
        raise FtctlError(f"{path} must hold a mapping of key: value (like 'backend: slurm'), not {type(raw).__name__}.")
    errors = []
    if unknown := [key for key in raw if key not in KEYS]:
        errors.append(_unknown_keys(unknown))
    backend, image, runtime = (
        raw.get("backend"),
        raw.get("image"),
        raw.get("slurm_container") or UserConfig.slurm_container,
    )
    from ftctl.launch import CONTAINER_ALIASES  # (the planner behind it: only where a config is read)

    runtime = CONTAINER_ALIASES.get(runtime, runtime)  # singularity is apptainer, enroot pyxis (as --container says)
    if backend is not None and backend not in BACKENDS:
        errors.append(f"backend {backend!r} is not one of {', '.join(BACKENDS)}.{did_you_mean(str(backend), BACKENDS)}")
    if image is not None and not (isinstance(image, str) and _IMAGE.match(image) and "://" not in image):
        errors.append(
            f"image {image!r} is not an image reference: write REGISTRY/NAME:TAG (e.g. ghcr.io/my-org/ftctl:TAG), "
            f"or none for no image"
        )
    if runtime not in SLURM_CONTAINERS:
        errors.append(f"slurm_container {runtime!r} is not one of {', '.join(SLURM_CONTAINERS)}")
    built, records = [], raw.get("built") or []
    if not isinstance(records, list):
        errors.append("built is not a list (`ftctl build` writes it; delete it to start again)")
        records = []
    for i, rec in enumerate(records):
        problem = _check_built(rec)
        if problem:
            errors.append(f"built[{i}] {problem} (`ftctl build` writes it again; or delete it)")
        else:
            built.append(Built(**{k: str(v) for k, v in rec.items()}))
    if errors:
        said = "; ".join(e.rstrip(".") for e in errors)
        raise FtctlError(f"{path}: {said}{'' if said.endswith('?') else '.'} Fix it by hand.")
    return UserConfig(backend, image, runtime, tuple(built))


# a site's Slurm defaults, which this file does not hold: sbatch's own variables do, and a launch takes them as sbatch
# would (ftctl.slurm.render.ENV_DEFAULTS); a `slurm:` block was tried for them too
_SLURM_DEFAULTS = {
    "partition": "SBATCH_PARTITION",
    "account": "SBATCH_ACCOUNT",
    "qos": "SBATCH_QOS",
    "time": "SBATCH_TIMELIMIT",
}


def _unknown_keys(unknown: list) -> str:
    """One line for every unknown key: each named (the closest key for one), the keys listed once; a Slurm default
    (partition, account, qos, time, a slurm: block) says where a site's defaults go instead."""
    names = ", ".join(repr(k) for k in unknown)
    said = f"unknown key {names}." if len(unknown) == 1 else f"unknown keys {names}."
    if len(unknown) == 1 and str(unknown[0]) not in _SLURM_DEFAULTS and unknown[0] != "slurm":
        said += did_you_mean(str(unknown[0]), KEYS)
    said += f" The keys are {', '.join(KEYS)}"
    slurm = [str(k) for k in unknown if str(k).lower() in _SLURM_DEFAULTS or str(k).lower() == "slurm"]
    if slurm:
        named = [k.lower() for k in slurm if k.lower() in _SLURM_DEFAULTS] or list(_SLURM_DEFAULTS)
        exports = " ".join(f"{_SLURM_DEFAULTS[k]}=..." for k in named)
        said += (
            f"; a site's Slurm defaults are sbatch's own variables: `export {exports}` in your shell profile, which "
            f"ftctl launch takes as sbatch does for a run without {'/'.join('--' + k for k in named)} (or "
            f"{named[0]}: in a run file, -c run.yaml)"
        )
    return said


def _check_built(rec) -> str | None:
    if not isinstance(rec, dict):
        return f"is {rec!r}, not a mapping of {', '.join(_BUILT_KEYS)}"
    missing = [k for k in ("image", "where", "gpus") if not rec.get(k)]
    unknown = [k for k in rec if k not in _BUILT_KEYS]
    if missing or unknown:
        return f"lacks {', '.join(missing)}" if missing else f"has unknown key(s) {', '.join(map(str, unknown))}"
    if rec["where"] not in WHERE:
        return f"where {rec['where']!r} is not one of {', '.join(WHERE)}"
    try:
        for g in str(rec["gpus"]).split(","):
            parse(g)
    except FtctlError as e:
        return f"gpus {rec['gpus']!r}: {str(e).rstrip('.')}"
    return None


def today() -> str:
    """The date a build is recorded with (YYYY-MM-DD)."""
    return datetime.date.today().isoformat()


def record(image: str, where: str, gpus: str, cuda: str = "") -> Path:
    """Put a build first in ``built:`` (an older record of the same image goes); returns the file's path. Under a
    lock on the file's directory (no file of its own left there): two builds ending at once (an image for each
    cluster, in two terminals) each read the file before the other wrote it, and the second's write lost the first's
    record."""
    import fcntl

    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.parent, os.O_RDONLY)
    except OSError:  # an unwritable directory: the write says so, as before
        return _record(path, image, where, gpus, cuda)
    try:
        with contextlib.suppress(OSError):  # no locks on this file system (some NFS): as before
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _record(path, image, where, gpus, cuda)
    finally:
        os.close(lock)


def _record(path: Path, image: str, where: str, gpus: str, cuda: str) -> Path:
    import yaml

    text = path.read_text() if path.is_file() else ""
    cfg = _parse(text, path)  # a file that does not read is never overwritten
    new = Built(image, where, gpus, __version__, today(), cuda)
    built = [new, *(b for b in cfg.built if (b.image, b.where) != (image, where))][:MAX_BUILT]
    block = yaml.safe_dump({"built": [dataclasses.asdict(b) for b in built]}, sort_keys=False, width=10**6)
    kept = _without_built(text)
    out = (kept.rstrip("\n") + "\n" if kept.strip() else "") + _BUILT_MARK + block
    if _parse(out, path) != dataclasses.replace(cfg, built=tuple(built)):  # an unusual layout: write it plainly
        raw = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "built"}
        out = yaml.safe_dump({**raw, "built": [dataclasses.asdict(b) for b in built]}, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(out)
    os.replace(tmp, path)
    return path


def _without_built(text: str) -> str:
    """The file's text without its ``built:`` block (and the comment line ftctl puts above it)."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if line == _BUILT_MARK or re.match(r"built\s*:", line):
            inside = True
            continue
        if inside and (not line.strip() or line[0] in " \t-"):
            continue
        inside = False
        out.append(line)
    return "".join(out)
