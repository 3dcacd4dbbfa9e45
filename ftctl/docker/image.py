"""The CUDA image: its pinned versions, its name, and its build arguments for a set of GPU tiers.

Versions have one home, constraints.txt (torch, flash-attn, and its ``# image: cuda=… ubuntu=…``
line); architectures come from the tier table in ftctl/gpus.py. Every backend that runs the image
by default asks ``default_image(tier)`` for its name, which is what ``ftctl build --gpus TIER``
tags.
Without ``--container``, :func:`configured` says which image the user's config gives a run: the
``image:`` written there, else the newest image ``ftctl build`` recorded that fits the run's tiers
(ftctl/userconfig.py keeps the file).

flash-attn compiles one architecture per major compute capability (sm_80 code runs on every 8.x
GPU), so an A10G and an A100 share one image. Tiers without FlashAttention-2 (T4) and ``--gpus cpu``
use the A100 + H100 image: torch runs there, flash-attn is simply not used (V100 too, in its flavour).

The image comes in flavours, one per torch build (constraints.txt's ``# image`` lines): the default, whose
torch is PyPI's (CUDA 13.0: drivers 580+, no Volta kernels), and cu126 (torch's cu126 index: any driver
for CUDA 12, and V100). :func:`flavour_for` picks the one that runs on the GPUs (and under the driver,
where the backend knows it: docker); ``ftctl build --cuda`` names one.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ftctl import __version__, torch_builds, userconfig
from ftctl.errors import FtctlError, did_you_mean
from ftctl.gpus import GpuTier, tier
from ftctl.trainer.attention import FA4_MAJORS

DEFAULT_REGISTRY = "ghcr.io/ftctl"
REPOSITORY = "ftctl"
# the image for tiers without FlashAttention-2 and for CPU runs
GENERIC_TIERS = ("A100", "H100")
# flash-attn's FLASH_ATTN_CUDA_ARCHS values, by major compute capability
_FLASH_ATTN_ARCH = {8: "80", 9: "90", 10: "100", 12: "120"}
# GPUs whose nodes' CPUs are Arm (NVIDIA Grace, aarch64): their image is built for linux/arm64, every other's for
# linux/amd64 (an x86 image there stops at its first command: "exec format error")
ARM_HOSTED = frozenset({"GH200", "GB200"})


def files_dir() -> Path:
    """The top-level docker/ folder: a link in a source tree, copies inside an installed wheel."""
    return Path(__file__).resolve().parent / "files"


@dataclass(frozen=True)
class Pins:
    """One flavour of the image: its CUDA (the nvidia/cuda base images' version) and torch's build for it."""

    cuda: str  # 13.0.1
    ubuntu: str
    torch: str
    flash_attn: str
    ftctl: str = __version__
    pypi_torch: bool = True  # the default flavour: PyPI's torch is this CUDA's build; the others come from its index

    @property
    def cuda_short(self) -> str:  # cu130: also the name of torch's build, and of the flavour
        major, minor = self.cuda.split(".")[:2]
        return f"cu{major}{minor}"

    @property
    def torch_index(self) -> str:
        """Where the image's torch comes from: '' for PyPI, else torch's index of this CUDA's build."""
        return "" if self.pypi_torch else torch_builds.index_url(self.cuda_short)

    def serves(self, gpus, driver_cuda: tuple[int, int] | None = None) -> bool:
        """Whether this flavour's torch has kernels for every tier of ``gpus`` and runs under the driver."""
        build = torch_builds.by_name(self.cuda_short)
        if build is None:  # a CUDA torch_builds does not list: no claim either way
            return True
        return all(build.runs_on(t.compute_capability) for t in named_tiers(gpus)) and (
            driver_cuda is None or build.runs_under(driver_cuda)
        )


# "# image: cuda=13.0.1 ubuntu=24.04" (the default flavour), "# image cu126: cuda=12.6.3 ubuntu=24.04" (another)
_IMAGE_LINE = re.compile(r"(?m)^#\s*image(?:\s+(cu\d+))?:\s*cuda=(\S+)\s+ubuntu=(\S+)\s*$")


@lru_cache(maxsize=4)
def flavours(constraints: Path | None = None) -> dict[str, Pins]:
    """The image's flavours from constraints.txt, by torch build (cu130, cu126), the default first."""
    path = constraints or files_dir() / "constraints.txt"
    try:
        text = path.read_text()
    except OSError as e:
        raise FtctlError(f"Cannot read {path} ({e.strerror}): reinstall ftctl, whose package ships it.") from None
    found = dict(re.findall(r"(?mi)^([A-Za-z0-9_.\-]+)==(\S+)\s*$", text))
    found = {k.lower().replace("_", "-"): v for k, v in found.items()}
    lines = sorted(_IMAGE_LINE.findall(text), key=lambda m: m[0] != "")  # the unnamed, default line first
    missing = [n for n in ("torch", "flash-attn") if n not in found]
    if not lines or lines[0][0]:
        missing.append("# image: cuda=… ubuntu=…")
    if missing:
        raise FtctlError(f"{path} lacks the image's pin(s) {', '.join(missing)}: add them (see docker/Dockerfile).")
    out = {}
    for name, cuda, ubuntu in lines:
        p = Pins(cuda, ubuntu, found["torch"], found["flash-attn"], pypi_torch=not name)
        if name and name != p.cuda_short:
            raise FtctlError(f"{path}: '# image {name}:' names cuda={cuda}, whose torch build is {p.cuda_short}.")
        out[p.cuda_short] = p
    return out


def pins(constraints: Path | None = None, cuda: str | None = None) -> Pins:
    """The image's versions: the default flavour's, or those of ``cuda`` (cu126)."""
    all_ = flavours(constraints)
    if cuda is None:
        return next(iter(all_.values()))
    if cuda not in all_:
        raise FtctlError(f"--cuda {cuda!r}: ftctl's image comes as {', '.join(all_)}.{did_you_mean(cuda, all_)}")
    return all_[cuda]


def flavour_for(gpus, driver_cuda: tuple[int, int] | None = None) -> str:
    """The flavour of the image for these GPUs under a driver that supports ``driver_cuda`` (None: unknown):
    the default where its torch runs there, else the first other that does (cu126: V100, a driver for CUDA 12)."""
    for name, p in flavours().items():
        if p.serves(gpus, driver_cuda):
            return name
    names = ", ".join(t.name for t in named_tiers(gpus)) or "CPU"
    under = f" under a driver for CUDA {driver_cuda[0]}.{driver_cuda[1]}" if driver_cuda else ""
    raise FtctlError(
        f"no flavour of ftctl's image ({', '.join(flavours())}) runs on {names}{under}: update the NVIDIA driver, "
        "or run with another image (--container docker:IMAGE)."
    )


def build_command(gpus, cuda: str) -> str:
    """The ``ftctl build`` that makes the image of this flavour for these GPUs."""
    tiers = ",".join(t.name for t in tiers_of(gpus))
    return f"ftctl build --gpus {tiers}" + ("" if cuda == next(iter(flavours())) else f" --cuda {cuda}")


def tiers_of(gpus: str | GpuTier | Iterable[GpuTier | str] | None) -> tuple[GpuTier, ...]:
    """``"A100,H100"``, ``"8xH100"``, a tier, several, or None (CPU) → the tiers the image's flash-attn is built for.
    A tier without flash-attn 2 (T4, V100) or CPU runs the generic image, so its tiers come in too: an image built
    for V100,H100 serves a V100 run as the default image would."""
    named = named_tiers(gpus)
    out = [t for t in named if t.flash_attn2]
    if len(out) < len(named) or not named:
        out += [tier(n) for n in GENERIC_TIERS]
    return tuple(sorted({t.name: t for t in out}.values(), key=tier_order))


def tier_order(t: GpuTier) -> tuple:
    return (t.compute_capability, t.name)


def named_tiers(gpus) -> list[GpuTier]:
    if gpus is None:
        items: list = []
    elif isinstance(gpus, GpuTier):
        items = [gpus]
    elif isinstance(gpus, str):
        items = [g for g in gpus.split(",") if g.strip()]
    else:
        items = list(gpus)
    tiers = [g if isinstance(g, GpuTier) else _parse_tier(g) for g in items]
    return [t for t in tiers if t is not None]


def _parse_tier(text: str) -> GpuTier | None:
    from ftctl.gpus import parse

    return parse(text.strip()).tier


def flash_attn_archs(tiers: Iterable[GpuTier]) -> list[str]:
    archs = set()
    for t in tiers:
        major = t.compute_capability[0]
        if major not in _FLASH_ATTN_ARCH:
            raise FtctlError(f"{t.name} (compute capability {t.cuda_arch}) is not one flash-attn compiles for.")
        archs.add(_FLASH_ATTN_ARCH[major])
    return sorted(archs, key=int)


def platform(gpus) -> str:
    """The docker platform of the image for ``gpus`` (as :func:`named_tiers` reads them; None: CPU): linux/arm64
    where every GPU named sits on an Arm host (ARM_HOSTED), linux/amd64 where none does; a mix is refused, since
    one image runs on one of them."""
    named = named_tiers(gpus)
    arm = sorted({t.name for t in named if t.name in ARM_HOSTED})
    if not arm:
        return "linux/amd64"
    x86 = sorted({t.name for t in named if t.name not in ARM_HOSTED})
    if not x86:
        return "linux/arm64"
    said = f"--gpus {gpus}: " if isinstance(gpus, str) else ""
    raise FtctlError(
        f"{said}{', '.join(arm)} nodes are Arm (aarch64, NVIDIA Grace) and "
        f"{', '.join(x86)} nodes x86_64, and one image runs on one of them: build each on its own (ftctl build "
        f"--gpus {','.join(arm)}, then ftctl build --gpus {','.join(x86)})."
    )


def image_tag(gpus=None, pins_: Pins | None = None, cuda: str | None = None) -> str:
    """``0.1.0-cu130-torch2.13.0-fa2.8.3.post2-sm90``: what is inside, readable from the name; ``-arm64`` after it
    for an Arm host's image (a GH200's sm90 is an H100's). ``cuda``: the flavour (default: :func:`flavour_for` the
    GPUs)."""
    p = pins_ or pins(cuda=cuda or flavour_for(gpus))
    sm = "_".join(flash_attn_archs(tiers_of(gpus)))
    arch = "-arm64" if platform(gpus) == "linux/arm64" else ""
    return f"{p.ftctl}-{p.cuda_short}-torch{p.torch}-fa{p.flash_attn}-sm{sm}{arch}"


def default_image(gpus=None, registry: str = DEFAULT_REGISTRY, cuda: str | None = None) -> str:
    """The image a backend runs when the user names none, for ``gpus`` (a tier, its name, a
    ``--gpus`` value, several, or None for CPU): ``ghcr.io/ftctl/ftctl:0.1.0-cu130-…-sm90``.
    ``ftctl build --gpus TIER`` builds exactly this name (``--push REGISTRY`` swaps the registry)."""
    return f"{check_registry(registry)}/{REPOSITORY}:{image_tag(gpus, cuda=cuda)}"


def fits(built_for: str, gpus, cuda: str = "", driver_cuda: tuple[int, int] | None = None) -> bool:
    """Whether an image built by ``ftctl build --gpus BUILT_FOR [--cuda CUDA]`` serves a run on ``gpus``: its
    torch runs on them (and under the driver, where known), and it holds flash-attn code for every architecture
    the run's tiers need (T4, V100 and CPU runs need the generic A100 + H100 image's, as in :func:`default_image`)."""
    if cuda not in ("", *flavours()) or not pins(cuda=cuda or None).serves(gpus, driver_cuda):
        return False
    if platform(built_for) != platform(gpus):  # an H100's image on a GH200 (Arm) node: exec format error
        return False
    return set(flash_attn_archs(tiers_of(gpus))) <= set(flash_attn_archs(tiers_of(built_for)))


@dataclass(frozen=True)
class Configured:
    """The image the user's config gives a run; ``ref`` is None where it says ``image: none``."""

    ref: str | None
    source: str  # "config" (image: written by hand), "none", or the record's kind: pushed | local | sif
    why: str  # "pushed by ftctl build on 2026-12-01"


_RECORDED_BY = {
    "pushed": "pushed by ftctl build",
    "local": "built by ftctl build",
    "sif": "written by ftctl build --apptainer",
}


def configured(gpus, usable: Sequence[str], driver_cuda: tuple[int, int] | None = None) -> Configured | None:
    """What the user's config gives a run on ``gpus`` (a tier, None for CPU) on a backend that runs the
    recorded kinds ``usable`` (preferred first): ``image:`` as written there (``none`` too), else the
    newest ``ftctl build`` record of the first usable kind that this ftctl version made and that
    :func:`fits` the tier (and the host's driver, where known); else None."""
    cfg = userconfig.load()
    if cfg.image:
        if cfg.image.lower() == "none":
            return Configured(None, "none", f"image: none in {userconfig.config_path()}")
        return Configured(cfg.image, "config", f"image: in {userconfig.config_path()}")
    for where in usable:
        for b in cfg.built:
            if b.where == where and b.ftctl == __version__ and fits(b.gpus, gpus, b.cuda, driver_cuda):
                return Configured(b.image, where, _RECORDED_BY[where] + (f" on {b.date}" if b.date else ""))
    return None


_REGISTRY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_registry(registry: str, flag: str = "registry") -> str:
    r = registry.strip().rstrip("/")
    if not _REGISTRY.match(r):
        raise FtctlError(
            f"{flag} {registry!r} is not a registry path docker accepts: lower-case host[:port]/namespace, "
            f"e.g. ghcr.io/my-org or docker.io/myname."
        )
    return r


# docker's reference grammar (distribution/reference regexp.go): [HOST[:PORT]/]PATH[:TAG][@DIGEST], the path's
# components lower case; nothing a shell reads (SkyPilot writes the image into `docker pull IMAGE` unquoted) and no
# leading '-' (docker run would read it as an option)
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = (
    r"(?:(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*)"
)
_REFERENCE = re.compile(
    rf"(?:{_HOST}(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def check_reference(ref: str, said: str) -> str:
    """``ref`` where it is an image reference docker takes; FtctlError saying so (``said``: where it was given)
    otherwise."""
    if not _REFERENCE.fullmatch(ref):
        raise FtctlError(
            f"{said}: {ref!r} is no image reference docker takes: [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST], the "
            "name in lower case, no spaces or shell characters (e.g. ghcr.io/my-org/ftctl:cu124)."
        )
    return ref


def check_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise FtctlError(
            f"--tag {tag!r}: a tag is letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-'); "
            f"give the registry with --push REGISTRY, not in the tag."
        )
    return tag


def fa4_requirement(tiers: Iterable[GpuTier]) -> str:
    """flash-attn-4 as ftctl's ``fa4`` extra pins it (pyproject.toml owns the pin), for an image whose tiers
    include a Hopper or Blackwell GPU (where the trainer runs FlashAttention 4: trainer/attention.py); ''
    for the others. The same tiers always make the same image (its tag names their architectures)."""
    if not any(t.compute_capability[0] in FA4_MAJORS for t in tiers):
        return ""
    reqs = importlib.metadata.requires("ftctl") or []
    found = [r.split(";")[0].strip() for r in reqs if 'extra == "fa4"' in r]
    if not found:
        raise FtctlError("ftctl's installed metadata has no fa4 extra: reinstall ftctl (pip install -e .).")
    return found[0]


def build_args(
    gpus=None, pins_: Pins | None = None, max_jobs: int | None = None, cuda: str | None = None
) -> dict[str, str]:
    """The ``--build-arg`` values of docker/Dockerfile for these tiers and flavour (sorted by name)."""
    p = pins_ or pins(cuda=cuda or flavour_for(gpus))
    if not p.serves(gpus):
        names = ", ".join(t.name for t in named_tiers(gpus) if not p.serves(t))
        raise FtctlError(
            f"torch's {p.cuda_short} build has no kernels for {names}: build with --cuda {flavour_for(gpus)} (or "
            "leave --cuda out)."
        )
    tiers = tiers_of(gpus)
    args = {
        # FlashAttention 4 as measured: with torch's CUDA 13 builds (its [cu13] extra)
        "FA4_REQUIREMENT": fa4_requirement(tiers) if int(p.cuda.split(".")[0]) >= 13 else "",
        "TORCH_INDEX_URL": p.torch_index,
        "CUDA_VERSION": p.cuda,
        "UBUNTU_VERSION": p.ubuntu,
        "TORCH_VERSION": p.torch,
        "FLASH_ATTN_VERSION": p.flash_attn,
        "FLASH_ATTN_CUDA_ARCHS": ";".join(flash_attn_archs(tiers)),
        "TORCH_CUDA_ARCH_LIST": ";".join(sorted({t.cuda_arch for t in tiers}, key=float)),
        "FTCTL_VERSION": p.ftctl,
    }
    if max_jobs is not None:
        if max_jobs < 1:
            raise FtctlError(f"--max-jobs must be at least 1, not {max_jobs}.")
        args["MAX_JOBS"] = str(max_jobs)
    return dict(sorted(args.items()))
