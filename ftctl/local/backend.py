"""The local backend: this machine's GPUs (or CPU), the trainer in the foreground.

Without ``--gpus`` it plans for what ``nvidia-smi`` reports and this machine's real host memory, and
falls back to single-GPU QLoRA when the method asked for does not fit: the spec the trainer reads then
says qlora (with qlora's defaults), and spec.json records what was asked. A failing rank is reported
once, with its own error line (ftctl.failures); the resume hint follows only interruptions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from ftctl import failures, terminal
from ftctl import gpus as gpu_table
from ftctl.backend import (
    PREFLIGHT_KEYS,
    Backend,
    JobRef,
    JobState,
    JobStatus,
    Rendered,
    held_run,
    no_room,
    progress,
    record_job,
    refused_as_finished,
    resumes_from,
    run_spec,
    same_command,
    store_state,
    trainer_paths_of,
    training_now,
)
from ftctl.envvars import FAILURE_DIR_ENV, STATUS_ENV, STOP_ENV
from ftctl.errors import FtctlError, Stopped
from ftctl.launch import join, netcheck_argv, preflight_threshold, torchrun_argv, trainer_env
from ftctl.logfile import copy_new, held, hold, new_decoder, start_of_last
from ftctl.logfile import follow as follow_log
from ftctl.plan import OFFLOAD_STRATEGIES, DoesNotFit, Plan, PlanError, make_plan
from ftctl.preflight import MachineGpus, gpus_words, host_memory_gb
from ftctl.runpaths import RunPaths
from ftctl.spec import RunSpec
from ftctl.storage import is_remote


def local_gpus() -> str:
    """What this machine has, in --gpus form, from nvidia-smi (no torch import); 'cpu' without GPUs."""
    return detected()[0]


def detected() -> tuple[str, str | None]:
    """(local_gpus, a note where what nvidia-smi lists is planned as another card or not at all): an unlisted card is
    planned as a listed one, a 6 GB card or a Pascal as the CPU. Said by the plan and by doctor: an RTX 3060 (before it
    was listed) planned as an RTX2080Ti (fp16, no FlashAttention) and an 8 GB laptop GPU planned as cpu ("fft ... on
    CPU would take days a step") were said nowhere."""
    return local_cards()[:2]


# a run on some of a machine's GPUs (mixed cards): numbered as nvidia-smi numbers them (PCI bus order), not CUDA's
# default FASTEST_FIRST order, so that CUDA_VISIBLE_DEVICES names the cards planned for
PCI_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def local_cards(environ: dict[str, str] | None = None) -> tuple[str, str | None, dict[str, str]]:
    """detected()'s two, and the environment that runs on the GPUs planned for ({} where that is every GPU, or those
    the user's CUDA_VISIBLE_DEVICES names). ``environ``: the run's (os.environ and its -o env). Mixed cards (an RTX
    4090 beside an RTX 3060) train one kind of card a run, the kind that trains fastest together (count x TFLOPS),
    pinned with CUDA_VISIBLE_DEVICES: every card was planned as the first row's (an 8 GB card as a 24 GB one), and
    cards of two kinds in one run train at the slowest one's pace within the smallest one's memory. The user's
    CUDA_VISIBLE_DEVICES, in numbers, leaves out the cards it does not name (as nvidia-smi numbers them)."""
    return local_kinds(environ)[0]


Kind = tuple[str, str | None, dict[str, str]]  # local_cards' three: --gpus form, its note, the env that pins it


def local_kinds(environ: dict[str, str] | None = None) -> list[Kind]:
    """local_cards' three of each kind of card here, fastest together first (local_cards' choice), one where the
    machine's GPUs are of one kind (or none, or named by UUID). The local backend plans on the first a run fits: two
    RTX 3090s hold a model one RTX 4090 does not (lora of an 8B at 16,384 tokens: FSDP shards its base over the
    two), which was planned on the 4090 and refused or fell back to qlora. The notes of the others say "the fastest
    together that it fits"; the plan says why the faster did not fit."""
    return [(gpus, said, env) for gpus, said, env, _ in named_kinds(environ)]


def named_kinds(environ: dict[str, str] | None = None) -> list[tuple[str, str | None, dict[str, str], str | None]]:
    """local_kinds' kinds, each with its cards as a message names them to the user where some are planned as a card of
    another name (_own_words: an 8 GB RTX 3060 planned as an RTX3070 read "this machine has 1xRTX3070"); None where
    the --gpus form names them."""
    environ = os.environ if environ is None else environ
    smi = shutil.which("nvidia-smi")
    if not smi:
        return [("cpu", None, {}, None)]
    try:
        found = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return [("cpu", None, {}, None)]
    rows = [r.strip() for r in found.stdout.strip().splitlines() if r.strip()]
    if not rows:
        return [("cpu", None, {}, None)]
    if found.returncode != 0 or "," not in rows[0]:  # "No devices were found" (exit 6), no driver (exit 9): a traceback
        return [("cpu", f"local: nvidia-smi found no GPU ({rows[0]!r}): planned as cpu", {}, None)]
    numbered = list(enumerate(rows))
    asked = environ.get("CUDA_VISIBLE_DEVICES")
    by_number = asked is not None and bool(re.fullmatch(r"\s*-?\d+(\s*,\s*-?\d+)*\s*|\s*", asked))
    if by_number:  # numbers, or none
        chosen: list[int] = []
        for i in (int(n) for n in asked.split(",") if n.strip()):
            if not 0 <= i < len(rows) or i in chosen:  # CUDA stops at the first number it has no GPU of
                break
            chosen.append(i)
        numbered = [(i, rows[i]) for i in chosen]
        if not numbered:
            none = f"local: CUDA_VISIBLE_DEVICES={asked!r} leaves none of nvidia-smi's GPUs: planned as cpu"
            return [("cpu", none, {}, None)]
    kinds: dict[str, list[int]] = {}  # a row of nvidia-smi (name, memory) -> its GPUs' numbers
    for i, row in numbered:
        kinds.setdefault(row, []).append(i)
    listed = " and ".join(f"{len(n)}x {row.rsplit(',', 1)[0].strip()!r} ({_gib(row)})" for row, n in kinds.items())
    by_uuid = min(len(asked.split(",")), len(rows)) if asked is not None and not by_number else 0
    if by_uuid:  # GPU UUIDs (MIG's): not read here; as many GPUs as it names, planned as the least kind
        kinds = {row: list(range(by_uuid)) for row in kinds}
    planned = {row: _planned_as(row, len(numbers)) for row, numbers in kinds.items()}
    # the user's numbers on a machine of mixed cards are nvidia-smi's (PCI order), here and in the run
    order = dict(PCI_ORDER) if by_number and len(set(rows)) > 1 else {}
    if len(kinds) == 1:
        return [(*next(iter(planned.values())), order, _own_words(kinds, planned))]
    groups: dict[str, list[int]] = {}  # the listed card planned -> the GPUs planned as it
    for row, numbers in kinds.items():
        if (gpus := planned[row][0]) != "cpu":
            groups.setdefault(gpus.split("x", 1)[1], []).extend(numbers)
    if not groups:
        return [("cpu", f"local: nvidia-smi lists {listed}, none a card ftctl plans for: planned as cpu", {}, None)]
    tiers = {name: gpu_table.TIERS[name] for name in groups}
    if by_uuid:  # the user's cards: the least kind, the user's choice kept
        least = min(groups, key=lambda t: (tiers[t].total_gib, tiers[t].compute_capability))
        gpus = f"{by_uuid}x{least}"
        said = (
            f"CUDA_VISIBLE_DEVICES={asked!r} names cards by UUID, not read here: planned as {gpus}, the least of them"
        )
        return [(gpus, f"local: nvidia-smi lists {listed}; {said}", {}, None)]
    ranked = sorted(groups, key=lambda t: (len(groups[t]) * tiers[t].peak_tflops, tiers[t].total_gib), reverse=True)
    out: list[tuple[str, str | None, dict[str, str], str | None]] = []
    for best in ranked:
        numbers = sorted(groups[best])
        gpus, pinned = f"{len(numbers)}x{best}", ",".join(map(str, numbers))
        said = "".join(  # the cards planned as another (an RTX 3090 Ti as an RTX3090)
            f"; {planned[r][1].removeprefix('local: nvidia-smi lists ')}"
            for r, n in kinds.items()
            if planned[r][1] and n[0] in numbers
        )
        words = _own_words({r: n for r, n in kinds.items() if n[0] in numbers}, planned)
        if len(numbers) == len(numbered):  # every card is planned as one (an RTX 3090 and an RTX 3090 Ti)
            return [(gpus, f"local: nvidia-smi lists {listed}: planned as {gpus}{said}", order, words)]
        on = f"GPU{'s' * (len(numbers) > 1)} {pinned}"
        fastest = "the fastest together that it fits" if out else "the fastest together"
        out.append(
            (
                gpus,
                f"local: nvidia-smi lists {listed}: planned on its {on}, {gpus} (CUDA_VISIBLE_DEVICES={pinned}): one "
                f"kind of card a run, {fastest} (mixed cards train at the slowest one's pace within the smallest "
                f"one's memory); CUDA_VISIBLE_DEVICES=N,... picks others{said}",
                {**PCI_ORDER, "CUDA_VISIBLE_DEVICES": pinned},
                words,
            )
        )
    return out


def _own_words(kinds: dict[str, list[int]], planned: dict[str, tuple[str, str | None]]) -> str | None:
    """The cards of one kind (nvidia-smi's rows -> their numbers; ``planned``: _planned_as of each row) as a message
    names them: an unlisted card by its own name and memory, and the card it is planned as ("1x RTX 3060 (8 GiB,
    planned as an RTX3070)"), a listed one in --gpus form; None where every one is listed (the --gpus form says it)."""
    if all(planned[row][1] is None or planned[row][0] == "cpu" for row in kinds):
        return None
    said = []
    for row, numbers in kinds.items():
        gpus, note = planned[row]
        if note is None or gpus == "cpu":
            said.append(gpus)
            continue
        name, mem = (part.strip() for part in row.rsplit(",", 1))
        name = name.removeprefix("NVIDIA ").removeprefix("GeForce ")
        try:
            memory = f"{round(float(mem) / 1024, 1):g} GiB, "
        except ValueError:
            memory = ""
        said.append(f"{len(numbers)}x {name} ({memory}planned as {gpu_table.TIERS[gpus.split('x', 1)[1]].a_card})")
    return " and ".join(said)


def _gib(row: str) -> str:
    """'24.0 GiB' of an nvidia-smi row's memory.total (MiB); its own words where it gives none ([N/A])."""
    mem = row.rsplit(",", 1)[1].strip()
    try:
        return f"{float(mem) / 1024:.1f} GiB"
    except ValueError:
        return f"no memory.total: {mem}"


def _planned_as(row: str, count: int) -> tuple[str, str | None]:
    """The --gpus form ``count`` GPUs that nvidia-smi lists as ``row`` (name, memory.total in MiB) are planned as, and
    a note where that is another card or cpu."""

    name, mem = row.rsplit(",", 1)
    try:
        gib: float | None = float(mem) / 1024
    except ValueError:  # "[N/A]": a Jetson's or a DGX Spark's memory (the host's, shared) was a ValueError traceback
        gib = None
    try:  # the name as nvidia-smi writes it ("NVIDIA A100-SXM4-80GB"), and its memory (a 16 GB "RTX 4060 Ti"); with
        # no memory, the card its name says without one (the 8 GB RTX4060Ti)
        return f"{count}x{gpu_table.local_tier(name, gib or 0.0).name}", None
    except FtctlError:  # a card ftctl does not list (a GH200, an RTX 3090 Ti): planned as one it lists
        pass
    lists = f"local: nvidia-smi lists {count}x {name.strip()!r} " + (
        f"({gib:.1f} GiB)" if gib is not None else f"(no memory.total: {mem.strip()})"
    )
    if gpu_table.older_than_listed(name):
        return "cpu", f"{lists}, older than every card ftctl plans for (Volta's V100 is the oldest): planned as cpu"
    if gib is None:
        return "cpu", (
            f"{lists}, a card ftctl does not list and whose memory nvidia-smi does not give: planned as cpu (--gpus "
            "TYPE plans it as a listed card of its generation or older with no more memory)"
        )
    like, cap = _listed_like(name, gib), gpu_table.capability_of(name)  # cap: the generation its name tells
    if like is None:
        older = [t for t in gpu_table.TIERS.values() if cap is None or t.compute_capability <= cap]
        least = min(older, key=lambda t: t.total_gib)
        cards = "every card ftctl plans for" if cap is None else "every card of its generation or older ftctl plans for"
        return (
            "cpu",
            f"{lists}, less memory than {cards} ({least.name}'s {least.total_gib:g} GiB is the least): planned as cpu",
        )
    # a Turing card (an RTX 2060) planned as a Turing one has no bf16 of its own unused
    newer = not like.bf16 and (cap is None or cap >= (8, 0))
    older = ": fp16 and sdpa, as that card trains (a newer card's bf16 and FlashAttention unused)" if newer else ""
    return f"{count}x{like.name}", (
        f"{lists}, a card ftctl does not list: planned as {like.a_card} ({like.total_gib:g} GiB){older}"
    )


def _listed_like(name: str, mem_gib: float):
    """The listed card to plan an unlisted (newer) one as: of those with no more memory (PyTorch's total of it, a
    few hundred MiB under nvidia-smi's), one of its model, else the newest, the largest of those; None where every
    listed card has more (an 8 GB card). The nearest in memory, or a name inside its name, planned a GH200 (96 GB) as an
    H200 (141 GB, out of memory), an RTX 5090 as a V100S. None newer than the card where its name tells its generation
    (gpus.capability_of): an RTX 2070 planned as an RTX 4060 would train in bf16, which Turing has not."""
    from ftctl import gpus as gpu_table

    cap = gpu_table.capability_of(name)
    fits = [  # a name that tells no generation (an H20, a B300) is no GeForce's or RTX workstation's: not as one
        t
        for t in gpu_table.TIERS.values()
        if t.total_gib <= mem_gib and (t.compute_capability <= cap if cap else t.name not in gpu_table.DESKTOP)
    ]
    same = [t for t in fits if gpu_table.same_model(name, t.name)]
    variant_of = [
        t for t in fits if gpu_table.named_after(name, t.name)
    ]  # a 3090 Ti's RTX3090, a laptop 4060's RTX4060
    return max(
        same or variant_of or fits, key=lambda t: (t.compute_capability, t.memory_gb, t.peak_tflops), default=None
    )


def has_gpus(gpus: str, nodes: int | None = None) -> bool:
    """Whether this one machine has what --gpus asks for (cpu: always)."""
    from ftctl import gpus as gpu_table

    want = gpu_table.parse(gpus, nodes)
    if want.nodes > 1:
        return False
    if want.is_cpu:
        return True
    return any(  # a machine of mixed cards has each of its kinds (a run pins the cards of the kind named)
        have.tier is not None and have.tier.name == want.tier.name and have.per_node >= want.per_node
        for have in map(gpu_table.parse, machine_gpus().split("+"))
    )


def fallback_plan(spec: RunSpec) -> tuple[RunSpec, Plan]:
    """The plan for spec on this machine; QLoRA on the GPU when the method asked for does not fit.

    The returned spec is what runs: method qlora with qlora's own defaults (learning rate, optimizer,
    strategy), so the trainer, every message and spec.json agree with the plan."""
    try:
        return spec, make_plan(spec, machine=gpu_table.parse(spec.gpus, spec.nodes))
    except DoesNotFit as first:  # a setting's own error (trainable_layers past the model's blocks) stays one
        return _qlora_instead(spec, first)


def _qlora_instead(spec: RunSpec, first: DoesNotFit) -> tuple[RunSpec, Plan]:
    """fallback_plan's qlora where ``first`` refused spec's method; ``first`` raised where qlora does not fit either."""
    if spec.method == "qlora":
        raise first
    here = gpu_table.parse(spec.gpus, spec.nodes)  # all this machine has: the plans a refusal offers are within it
    fallback = replace(spec, method="qlora", learning_rate=None, optim=None, strategy=None)
    try:
        plan = make_plan(fallback, machine=here)
    except PlanError:
        raise first from None
    plan.notes.insert(0, f"local: {spec.method} does not fit this machine ({_why(first)}), so qlora runs instead")
    plan.asked_method = spec.method
    return fallback, plan


def _why(refused: PlanError) -> str:
    """A refusal's reason, without the plans it offers ("the leanest plan ... needs about 25.1 GB per GPU; ...")."""
    return str(refused).split(" Nearest plans")[0].split(": ", 1)[-1].rstrip(".")


def plan_on_kinds(spec: RunSpec, kinds: list[Kind]) -> tuple[RunSpec, Plan]:
    """fallback_plan on this machine's kinds of card (local_kinds: fastest together first): the method asked for on
    the first kind it fits, one that keeps the optimizer on the GPUs before one that offloads it to CPU RAM (fft of a
    1B offloads on one RTX 4090, not on two RTX 3090s); where it fits none, qlora on the first kind it fits. The
    plan's notes say which cards (the kind's note) and why not the faster ones. Raises the fastest kind's refusal."""
    on = [replace(spec, gpus=gpus, env={**spec.env, **env}) for gpus, _, env in kinds]
    fits: dict[int, Plan] = {}
    refused: dict[int, DoesNotFit] = {}
    for i, each in enumerate(on):
        try:
            fits[i] = make_plan(each, machine=gpu_table.parse(each.gpus))
        except DoesNotFit as e:  # a setting's own error (trainable_layers past the model's blocks) stays one
            refused[i] = e
            continue
        if fits[i].strategy not in OFFLOAD_STRATEGIES:
            break
    picked = next((i for i, p in fits.items() if p.strategy not in OFFLOAD_STRATEGIES), next(iter(fits), None))
    if picked is not None:
        plan, passed = fits[picked], []
        for i in range(picked):
            if i in refused:
                passed.append(f"does not fit its {on[i].gpus} ({_why(refused[i]).split('. ')[0]})")
            else:
                passed.append(f"offloads the optimizer to CPU RAM on its {on[i].gpus} ({fits[i].strategy})")
        if passed:
            plan.notes.insert(0, f"local: {spec.method} {'; and '.join(passed)}: it runs on its {on[picked].gpus}")
        chosen = on[picked]
    else:  # fits no kind: qlora, on the first it fits
        for i, each in enumerate(on):
            try:
                chosen, plan = _qlora_instead(each, refused[i])
            except PlanError:
                continue
            if len(on) > 1:  # the note above says why of this kind
                none = f"local: {spec.method} fits none of its kinds of card ({', '.join(s.gpus for s in on)})"
                qlora = f"; qlora does not fit its {' or '.join(s.gpus for s in on[:i])} either" if i else ""
                plan.notes.insert(1, none + qlora)
            picked = i
            break
        else:
            raise refused[0]
    if kinds[picked][1]:
        plan.notes.insert(0, kinds[picked][1])
    return chosen, plan


def pinned_for(gpus: str, kinds: list[Kind]) -> tuple[dict[str, str], str | None]:
    """The env that runs --gpus ``gpus`` on this machine's cards of its kind (``kinds``: local_kinds), and a note where
    that pins some of a machine of mixed cards: CUDA's default order (fastest first) may put another kind's card first
    (--gpus 1xRTX3060 beside an RTX 4090 ran on the 4090, planned as a 3060). {} where no kind here is the one named."""
    asked = gpu_table.parse(gpus)
    same = next((k for k in kinds if asked.tier and gpu_table.parse(k[0]).tier == asked.tier), None)
    if same is None:
        return {}, None
    env = dict(same[2])
    if "CUDA_VISIBLE_DEVICES" not in env:  # every card here is of the kind (or the user's numbers name only them)
        return env, None
    numbers = env["CUDA_VISIBLE_DEVICES"].split(",")[: asked.per_node]
    env["CUDA_VISIBLE_DEVICES"] = pinned = ",".join(numbers)
    on = f"GPU{'s' * (len(numbers) > 1)} {pinned}"
    return env, (
        f"local: --gpus {gpus} runs on its {on} (CUDA_VISIBLE_DEVICES={pinned}, numbered as nvidia-smi numbers them), "
        f"of {same[1].removeprefix('local: nvidia-smi lists ').split(': planned on', 1)[0]}"
    )


def machine_gpus(environ: dict[str, str] | None = None) -> MachineGpus:
    """Every kind of card here in --gpus form, '+' between kinds (1xRTX4090+2xRTX3090), fastest together first: what
    preflight.check_gpus compares a plan with (a run on the 3090s was compared with the 4090 alone); with the words
    that name a kind's cards where some are planned as another card (MachineGpus.words)."""
    return _machine(named_kinds(environ))


def _machine(kinds: list[tuple[str, str | None, dict[str, str], str | None]]) -> MachineGpus:
    """machine_gpus of named_kinds' ``kinds``."""
    return MachineGpus("+".join(k[0] for k in kinds), {k[0]: k[3] for k in kinds if k[3]})


# a Mac's own GPU (Apple silicon's, through torch's MPS) is not trained on: the trainer computes on CUDA or the CPU
MAC_GPU_NOTE = (
    "local: this Mac's GPU (MPS) is not used: ftctl trains on NVIDIA GPUs or, here, the CPU; --backend sky or slurm "
    "runs it on GPUs elsewhere"
)


class LocalBackend(Backend):
    name = "local"
    options = PREFLIGHT_KEYS
    trains_here = True

    def detected_gpus(self) -> str | None:
        return machine_gpus()  # every kind of card here: a run may be planned on any one

    def has_gpus(self, spec: RunSpec) -> bool:
        return has_gpus(spec.gpus, spec.nodes)

    def staging_here(self, spec: RunSpec) -> str | None:
        """The trainer runs here, in this environment and the run's -o env."""
        return str(trainer_paths_of(spec, spec.env or None).root)

    def resolve(self, spec: RunSpec) -> tuple[RunSpec, Plan]:
        if spec.host_memory_gb is None:
            spec = replace(spec, host_memory_gb=host_memory_gb())
        kinds = local_kinds({**os.environ, **spec.env})
        if spec.gpus:  # named GPUs are planned as asked, on the cards of that kind here; only detected ones fall back
            asked = gpu_table.parse(spec.gpus, spec.nodes)
            same = [have for gpus, _, _ in kinds if (have := gpu_table.parse(gpus)).tier == asked.tier]
            pin, said = pinned_for(spec.gpus, kinds) if asked.nodes == 1 else ({}, None)
            spec = replace(spec, env={**spec.env, **pin})
            plan = make_plan(spec, machine=same[0] if same else asked)  # what a refusal offers: this machine's
            if said:
                plan.notes.insert(0, said)
        else:
            try:  # on the GPUs planned for (mixed cards: one kind, CUDA_VISIBLE_DEVICES)
                spec, plan = plan_on_kinds(spec, kinds)
            except PlanError as e:  # "fft ... on CPU would take days a step" where the GPU here is too small
                if said := kinds[0][1]:
                    others = " or ".join(gpus for gpus, _, _ in kinds[1:])
                    nor = f"; nor does it fit its {others}" if others and isinstance(e, DoesNotFit) else ""
                    e.args = (f"{e.args[0]} ({said.removeprefix('local: ')}{nor})", *e.args[1:])
                raise
        if plan.nodes > 1:
            raise FtctlError("--backend local runs on this machine only: for several nodes use --backend slurm or sky.")
        if plan.tier is None and sys.platform == "darwin":
            plan.notes.append(MAC_GPU_NOTE)
        return spec, plan

    def render(self, spec, plan, paths, spec_json):
        probe = join(preflight_argv(spec, plan)) + " && \\\n" if spec.preflight_network and plan.world_size > 1 else ""
        return probe + join(argv(spec, plan, paths.spec)) + "\n", {paths.spec.name: spec_json}

    def check(self, rendered: Rendered) -> None:
        """A run a trainer holds now (its lock): refused before the launch writes its spec.json or clears its records
        (the trainer's own lock refused it only after both)."""
        if said := held_run(rendered.spec):
            raise FtctlError(said)

    def send(self, rendered: Rendered) -> JobRef | None:
        """Trains in the foreground; recorded first, so that `ftctl jobs` lists it and `ftctl logs -f RUN_DIR`
        follows it from another terminal while it trains."""
        if rendered.spec.preflight_network:
            preflight_network(rendered.spec, rendered.plan)
        spec, root = rendered.spec, str(rendered.paths.root)
        record_job(JobRef("local", root, root, spec.name, spec.output))
        run_foreground(rendered, argv(rendered.spec, rendered.plan, rendered.paths.spec))
        return None

    def status(self, ref: JobRef) -> JobStatus:
        """A local run found by its directory (backend.find_job): training while a trainer holds its lock
        (trainer/run.only_trainer), whatever final files are there (a relaunch that extends max_steps trains past the
        earlier run's final adapter: it said "complete"); else finished once its final model or adapter is there;
        failed where its trainer said so (its status file and failure records); else stopped, and the same `ftctl
        launch` (or `ftctl train`, the command that started it: same_command) resumes it."""
        from ftctl.checkpoints.settings import final_saved
        from ftctl.trainer.trained import trained_past_final, unlocked_trainer

        if not ref.paths.root.is_dir():  # deleted or moved since: what is left of it is its object-store output's
            return gone(ref)
        try:
            word = ref.paths.status_file.read_text().strip()
        except OSError:
            word = ""
        if holder := training_now(trainer_paths(ref)):  # first: a relaunch may train past an earlier final adapter
            return JobStatus(JobState.RUNNING, f"{ref.job_id} local run, training ({holder})")
        if unlocked := unlocked_trainer(trainer_paths(ref), ref.paths):  # an older ftctl's, which takes no lock
            pid = f" (pid {unlocked.pid})" if unlocked.pid else ""
            said = f"{unlocked.said}; relaunch it only once that trainer{pid} has ended"
            return JobStatus(JobState.RUNNING, f"{ref.job_id} local run, may still be training ({said})")
        if word == "complete" or (final_saved(ref.run_dir) and not trained_past_final(trainer_paths(ref).root, word)):
            return JobStatus(JobState.SUCCEEDED, f"{ref.job_id} local run, complete")  # (the store's final model too)
        records = failures.read(ref.paths.failures)
        if word == "failed" and records and not failures.summarize(records)[1]:  # not an interruption: a relaunch
            return JobStatus(JobState.FAILED, f"{ref.job_id} local run, failed")  # would fail the same way
        spec = run_spec(ref) if is_remote(ref.output) else None
        if spec and (known := store_state(ref.output, spec.s3_endpoint_url, spec.max_steps)):
            state, said = known  # stopped here, and trained on (or finished) since by a job launched elsewhere
            return JobStatus(state, f"{ref.job_id} local run, stopped here; went on elsewhere, {said}", from_store=True)
        return JobStatus(  # stopped (cancelled, killed, Ctrl-C, a crash a relaunch gets past): `ftctl status` exits 3
            JobState.PREEMPTED,
            f"{ref.job_id} local run, stopped before the end ({same_command(ref.run_dir)} {resumes(ref)})",
        )

    def log_tail(self, ref: JobRef) -> str:
        """The failure as the trainer recorded it: its one line (the log, train.log, has torchrun's report besides)."""
        records = failures.read(ref.paths.failures)
        return f"{failures.ERROR_PREFIX}{failures.summarize(records)[0]}\n" if records else ""

    def logs(self, ref: JobRef, follow: bool, lines: int | None = None) -> None:
        """What the run printed in the terminal that launched it, kept in its run directory (train.log), its last
        ``lines`` lines where given; with ``follow``, what it prints next, for as long as its launcher writes it (from
        before the model loads)."""
        log = ref.paths.local_log
        if not log.is_file():  # a run of an ftctl that kept no log, or one whose run directory is gone
            click.echo(self.status(ref).text)
            if ref.paths.root.is_dir():
                metrics = trainer_paths(ref).metrics  # an object-store output's: its staging directory's
                click.echo(
                    f"This run printed its log in the terminal that launched it; each logged step is a line of "
                    f"{metrics}" + (f", the last: {line}" if (line := progress(ref, metrics=metrics)) else "")
                )
            return
        if not follow:
            copy_new(log, start_of_last(log, lines), sys.stdout, new_decoder())
            return
        paths = trainer_paths(ref)
        follow_log(log, lambda: held(log) or training_now(paths) is not None, sys.stdout, lines=lines)
        click.echo(self.status(ref).text, err=True)

    def cancel(self, ref: JobRef) -> str:
        """A local run training in another terminal stops as `kill` of its `ftctl launch` stops it: at its next step
        boundary, with a checkpoint, through the trainer's stop file."""
        paths = trainer_paths(ref)
        if not (holder := training_now(paths)):
            raise FtctlError(f"{ref.job_id} is a local run that is not training now: nothing to cancel.")
        if pid := stop_file_unheard(holder, paths):
            raise FtctlError(
                f"{ref.job_id} is trained by {holder}, which does not watch for `ftctl cancel`'s stop file (an older "
                f"ftctl started it, before its runs had one): stop it with `kill -TERM {pid}`, which "
                f"saves a checkpoint at its next step and exits; {same_command(ref.run_dir)} resumes it."
            )
        try:
            ask_to_stop(paths.stop_file, "ftctl cancel")
        except OSError as e:  # another user's run directory, not writable by this one: it was a traceback
            raise FtctlError(
                f"cannot ask {ref.job_id} ({holder}) to stop: {e.strerror or e} writing {paths.stop_file}. Its "
                "trainer's user can run `ftctl cancel` (or `kill -TERM` its pid); a run directory the group writes "
                "(umask 002 in a setgid group directory) lets each of the group stop it."
            ) from None
        return (
            f"asked {ref.job_id} ({holder}) to stop: it saves a checkpoint at its next step and exits; "
            f"{same_command(ref.run_dir)} resumes it"
        )

    def doctor(self, gpus, partition) -> bool:
        from importlib import metadata
        from importlib.util import find_spec

        refuse_partition(partition, self.name)
        click.echo(f"python:  {sys.version.split()[0]} ({sys.executable})")
        gpus_here, said = detected()
        click.echo(f"gpus:    {gpus_here}" + (f" ({said.removeprefix('local: ')})" if said else ""))
        ok = gpus_here_say(gpus) if gpus else True
        if gpus_here != "cpu":
            click.echo(f"driver:  {driver_line(gpus_here)}")
        mem = host_memory_gb()
        click.echo(f"memory:  {mem:.0f} GB" if mem else "memory:  unknown")
        for mod, dist in DOCTOR_PACKAGES:
            found = find_spec(mod) is not None
            try:
                version = metadata.version(dist) if found else "missing"
            except metadata.PackageNotFoundError:
                version = "ok"
            click.echo(f"{mod:<13}{version}")
            ok = ok and (found or mod in ("deepspeed", "flash_attn", "bitsandbytes"))
        if find_spec("torch") is not None:
            click.echo(f"attention:   {varlen_here()}")
            ok = ok and cuda_sees(gpus_here)
        return ok


def refuse_partition(partition: str | None, backend: str) -> None:
    """doctor's --partition outside Slurm: refused, never dropped."""
    if partition:
        raise FtctlError(f"--partition is a Slurm partition: add --backend slurm (this checks {backend}).")


def gpus_here_say(gpus: str, gpus_here: str | None = None) -> bool:
    """doctor's --gpus against this machine's (local, docker): a line, and whether they are here. ``gpus_here``:
    machine_gpus' form, every kind of card here (a run of a kind pins its cards); read from nvidia-smi where None
    (--gpus 1xRTX3060 beside an RTX 4090 was compared with the 4090 alone: "not on this machine")."""
    from ftctl.gpus import parse

    req, here = parse(gpus), gpus_here or machine_gpus()
    enough = not req.tier or (req.nodes == 1 and _kind_of(req, here) is not None)
    has = "" if enough else f" (it has {gpus_words(here) if here != 'cpu' else 'no GPU'})"
    click.echo(f"asked:   {gpus}: {'here' if enough else 'not on this machine'}{has}")
    return enough


def _kind_of(req, here: str):
    """The kind of card of ``here`` (machine_gpus' form) with the GPUs ``req`` (parsed --gpus) asks of one machine;
    None where none has (another kind, too few)."""
    return next(
        (k for k in map(gpu_table.parse, here.split("+")) if k.tier == req.tier and k.per_node >= req.world_size),
        None,
    )


# what doctor reports, module and distribution: the versions to compare with constraints.txt
DOCTOR_PACKAGES = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("trl", "trl"),
    ("peft", "peft"),
    ("bitsandbytes", "bitsandbytes"),
    ("deepspeed", "deepspeed"),
    ("flash_attn", "flash-attn"),
)


def driver_line(gpus_here: str) -> str:
    """The CUDA version the NVIDIA driver supports, and what that takes: torch's build and ftctl's image."""
    from ftctl import gpus as gpu_table
    from ftctl.docker.image import flavour_for
    from ftctl.torch_builds import build_for, node_driver_cuda

    cuda = node_driver_cuda()
    if cuda is None:
        return "nvidia-smi says no CUDA version"
    here = gpu_table.parse(gpus_here).tier
    build = build_for(cuda, here.compute_capability)
    if build is None:
        return f"CUDA {cuda[0]}.{cuda[1]} (nvidia-smi), older than every torch build: update the driver"
    image = flavour_for(here, cuda)
    hint = "" if image == flavour_for(here) else f" (ftctl build --cuda {image})"
    return f"CUDA {cuda[0]}.{cuda[1]} (nvidia-smi): torch's {build} build; ftctl's image {image}{hint}"


def cuda_sees(gpus_here: str) -> bool:
    """Whether torch can use the GPUs nvidia-smi lists (says why not: a CPU-only build, a driver too old)."""
    import torch

    if gpus_here == "cpu" or torch.cuda.is_available():
        return True
    from ftctl.trainer.distributed import why_no_cuda

    click.echo(f"problem: nvidia-smi lists {gpus_here} but torch sees no CUDA GPU: {why_no_cuda()}")
    return False


def varlen_here() -> str:
    """What a plan's ``varlen`` attention runs as on this machine (trainer/attention.py's choice)."""
    import torch

    from ftctl.trainer.attention import FA4_MAJORS, FA4_VARLEN, VARLEN, WORDS, fa4_files_problem, runnable

    on_cpu = not torch.cuda.is_available()
    name = runnable(VARLEN, on_cpu)
    if on_cpu:
        return f"{WORDS.get(name, name)} (no CUDA GPU here)"
    if name != FA4_VARLEN and torch.cuda.get_device_capability()[0] in FA4_MAJORS:
        problem = fa4_files_problem()
        if problem:
            return f"{WORDS.get(name, name)}; FlashAttention 4 is installed but not used: {problem}"
        return f"{WORDS.get(name, name)}; FlashAttention 4 is quicker on this GPU: pip install 'ftctl[fa4]'"
    return WORDS.get(name, name)


def argv(spec: RunSpec, plan: Plan, spec_path) -> list[str]:
    if plan.world_size == 1:
        return [sys.executable, "-m", "ftctl.trainer", "--spec", str(spec_path)]
    return torchrun_argv(spec, plan, str(spec_path), head=None, python=sys.executable, quiet=True)


def preflight_argv(spec: RunSpec, plan: Plan) -> list:
    return netcheck_argv(spec, plan, head=None, python=sys.executable)


def preflight_network(spec: RunSpec, plan: Plan) -> None:
    """``launch --preflight``: the all-reduce probe across the run's processes first; stop when it fails."""
    if plan.world_size == 1:
        click.echo("note: network preflight skipped: one process has nothing to all-reduce with", err=True)
        return
    rc = subprocess.call(preflight_argv(spec, plan))
    if rc != 0:
        raise FtctlError(
            f"network preflight failed (exit {rc}): not training. The bus bandwidth is below "
            f"preflight_min_busbw_gbps={preflight_threshold(spec, plan):g} GB/s or the processes could not reach "
            "each other; see the netcheck lines above."
        )


def network_check(gpus: str, nodes: int | None, min_busbw_gbps: float = 0.0) -> int:
    """``ftctl doctor --network``: the probe with as many processes as --gpus/--nodes make, all on this machine
    (one per GPU; on CPU one per node), through torchrun. Its exit code: 3 below ``min_busbw_gbps``; torchrun's
    own failure report is held back (FTCTL_DEBUG=1 shows it), the probe's lines say what happened."""
    import tempfile

    from ftctl.gpus import parse
    from ftctl.trainer.netcheck import BELOW_THRESHOLD_EXIT

    named = named_kinds()
    req, here, kinds = parse(gpus, nodes), _machine(named), [k[:3] for k in named]
    env, on = dict(os.environ), ""
    if req.tier:  # a machine of mixed cards: the cards of the kind asked for, pinned as a run's (pinned_for)
        if _kind_of(req, here) is None:
            has = gpus_words(here) if here != "cpu" else "no GPU"
            raise FtctlError(
                f"--gpus {gpus}: this machine has {has}, and doctor --network measures its own processes. Run "
                "it on a host with those GPUs, or launch with --preflight (the job measures its nodes first)."
            )
        pinned, _ = pinned_for(f"{req.world_size}x{req.tier.name}", kinds)
        env.update(pinned)
        if "CUDA_VISIBLE_DEVICES" in pinned:
            numbers = pinned["CUDA_VISIBLE_DEVICES"]
            on = f"'s GPU{'s' * (',' in numbers)} {numbers} (CUDA_VISIBLE_DEVICES={numbers}, numbered as nvidia-smi does)"
    if req.world_size < 2:
        raise FtctlError(
            f"{req.world_size} process: an all-reduce needs two to measure; give --nodes 2 (CPU: one process a "
            "node) or --gpus 2xTYPE."
        )
    with tempfile.TemporaryDirectory(prefix="ftctl-netcheck-") as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(req.world_size),
            "-m",
            "ftctl.trainer.netcheck",
            "--min-busbw-gbps",
            f"{min_busbw_gbps:g}",
            "--threshold-name=--min-busbw-gbps",
            "--json",
            result,
        ]
        click.echo(f"all-reduce across {req.world_size} process(es) of {req} on this machine{on}", err=True)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        rc = run_filtered(cmd, env, Path(tmp) / "launcher.log")
        if os.path.exists(result):
            with open(result) as f:
                return 0 if json.load(f).get("ok") else BELOW_THRESHOLD_EXIT
    return rc or 1


def _said(paths: RunPaths) -> str:
    """The trainer's one word on how it ended (its status file), "" where it left none."""
    return _read_word(paths.status_file)


def _read_word(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def trainer_paths(ref: JobRef) -> RunPaths:
    """trainer_paths_of a local run found by its directory (its spec.json's run; the directory itself without one)."""
    try:
        spec = RunSpec(**json.loads(ref.paths.spec.read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return ref.paths
    return trainer_paths_of(spec)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__


def resumes(ref: JobRef) -> str:
    """What the same launch does (backend.resumes_from), for a run into object storage from what its trainer would
    resume: the newest complete checkpoint in the store or in its staging directory here (checkpoints.resume takes the
    newer, the store's where both have it), named with where it is; before, `status` said only "resumes it"."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.storage import storage_errors

    spec = run_spec(ref)
    if not is_remote(spec.output):
        return resumes_from(ref)
    try:
        with storage_errors(spec.output, spec.s3_endpoint_url):
            store = [c for c in list_checkpoints(spec.output, endpoint_url=spec.s3_endpoint_url) if c.complete]
    except (OSError, FtctlError) as e:
        return f"resumes it from the newest checkpoint committed to {spec.output} ({_first_line(e)})"
    staged = trainer_paths_of(spec).root
    try:
        here = [c for c in list_checkpoints(str(staged)) if c.complete]
    except (OSError, FtctlError):
        here = []
    newest = max([*store, *here], key=lambda c: c.step, default=None)  # of one step, the store's: max keeps the first
    if newest is None:
        return f"starts it again: {spec.output} holds no committed checkpoint"
    if said := refused_as_finished(spec, newest.uri):
        return said
    if newest in store:
        return f"resumes it from {newest.name} in {spec.output}"
    return f"resumes it from {newest.name} in {staged} (this machine's copy, not in {spec.output} yet)"


def gone(ref: JobRef) -> JobStatus:
    """A local run whose run directory was deleted or moved: said so (before, `status` said it had stopped and that the
    same launch resumed it), with what its object-store output still holds, which `chat`, `eval` and `merge` take as
    they are and the same launch resumes from."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.settings import final_saved
    from ftctl.storage import storage_errors

    text = f"{ref.job_id} local run: its run directory is gone (deleted or moved)"
    if not is_remote(ref.output):
        return JobStatus(JobState.UNKNOWN, f"{text}; nothing of the run is left there")
    endpoint = run_spec(ref).s3_endpoint_url
    try:
        with storage_errors(ref.output, endpoint):
            done = [c for c in list_checkpoints(ref.output, endpoint_url=endpoint) if c.complete]
            final = final_saved(ref.output, endpoint)
    except (OSError, FtctlError) as e:
        return JobStatus(JobState.UNKNOWN, f"{text}; its output {ref.output} cannot be read now ({_first_line(e)})")
    if final:
        return JobStatus(
            JobState.SUCCEEDED, f"{text}; its final model is in {ref.output} (`ftctl chat {shlex.quote(ref.output)}`)"
        )
    if done:
        return JobStatus(
            JobState.PREEMPTED,
            f"{text}; {ref.output} holds its checkpoints up to {done[-1].name}: the same `ftctl launch` resumes it "
            "from there",
        )
    return JobStatus(JobState.UNKNOWN, f"{text}, and {ref.output} holds no committed checkpoint of it")


def plan_line(spec: RunSpec, plan: Plan) -> str:
    """What a local launch says of its plan before it trains, as Slurm's launch does (slurm.backend.plan_lines): the
    batch, checkpointing, memory and a step's time. It said only "running qlora on 1xRTX4090; checkpoints in ...":
    the micro-batch and memory it had chosen were in spec.json alone, though docs/plan.md says launch prints the plan."""
    where = f"of {plan.gpu_memory_gb:.1f} GB a GPU" if plan.gpu_memory_gb else "of RAM a process"
    return (
        f"plan:    {plan.precision}, {plan.per_device_train_batch_size} per device x "
        f"{plan.gradient_accumulation_steps} accumulation x {plan.world_size} = {plan.global_batch_size} sequences of "
        f"up to {spec.model_max_length:,} tokens a step, gradient checkpointing {'on' if plan.gradient_checkpointing else 'off'}"
        f"; ~{plan.memory_gb:.1f} GB est. {where}"
        + (f"; ~{plan.step_s:,.0f} s a step est." if plan.step_s else "")
        + " (`ftctl plan` with the same flags: every row)"
    )


def run_foreground(rendered: Rendered, cmd: list[str]) -> None:
    """Run the trainer here and wait; one message for a failure, whichever rank it came from."""
    paths: RunPaths = rendered.paths
    for note in rendered.plan.notes:
        click.echo(f"note: {note}", err=True)
    staged = trainer_paths_of(rendered.spec).root  # an object-store output's copy on this disk, kept after the run
    click.echo(
        f"running {rendered.plan.method} on {rendered.plan.gpus}; checkpoints in {rendered.spec.output}"
        + (
            f" (its run directory here: {rendered.run_dir}; staged on this disk in {staged})"
            if is_remote(rendered.spec.output)
            else ""
        ),
        err=True,
    )
    click.echo(plan_line(rendered.spec, rendered.plan), err=True)
    shutil.rmtree(paths.failures, ignore_errors=True)
    paths.failures.mkdir(parents=True, exist_ok=True)
    paths.status_file.unlink(missing_ok=True)  # an earlier attempt's word is not this one's
    # the trainer's own directory's (runs into other object-store outputs share a run dir's name, not it)
    stop_file = trainer_paths_of(rendered.spec).stop_file
    stop_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        **trainer_env(rendered.spec, inherited=os.environ),
        "PYTHONUNBUFFERED": "1",
        FAILURE_DIR_ENV: str(paths.failures),
        STATUS_ENV: str(paths.status_file),
        STOP_ENV: str(stop_file),
    }
    got: list[int] = []
    rc = run_filtered(
        cmd,
        env,
        paths.launcher_log,
        stop_file=stop_file,
        signals=got,
        heard=lambda: bool(failures.read(paths.failures)),
        log=paths.local_log,
    )
    if (rc in STOPPED or got[:1] == [signal.SIGINT]) and _said(paths) == "complete":
        return  # the signal came after the run finished (its final model saved): nothing was cut short
    if got and got[0] == signal.SIGINT and rc != 0:  # Ctrl-C: the trainer stopped where it was
        error = Stopped(_ctrl_c_message(rendered.spec, paths))
        error.exit_code = 128 + signal.SIGINT
        raise _logged(paths, error)
    if len(got) > 1 and _said(paths) not in ("complete", "preempted"):  # its checkpoint came first otherwise
        error = Stopped(
            f"stopped at once ({signal.Signals(got[-1]).name} again to ftctl launch), its checkpoint unfinished; "
            f"{_goes_on(rendered.spec)}."
        )
        error.exit_code = 128 + got[0]
        raise _logged(paths, error)
    if rc in STOPPED and not failures.read(paths.failures):  # passed on to a trainer that stopped as asked
        error = Stopped(
            f"stopped ({signal.Signals(rc - 128).name} to ftctl launch): the trainer saved a checkpoint at its step "
            "boundary first; the same `ftctl launch` resumes it."
        )
        error.exit_code = rc
        raise error
    if rc == 0 and not got and _said(paths) == "preempted":  # its stop file, touched by `ftctl cancel RUN_DIR`
        error = Stopped(
            "stopped (ftctl cancel): the trainer saved a checkpoint at its step boundary first; the same "
            "`ftctl launch` resumes it."
        )
        error.exit_code = 128 + signal.SIGTERM  # as a `kill` of this launch ends: stopped as asked, not finished
        raise error
    if rc != 0:
        error = FtctlError(failure_message(paths, rc, rendered.spec))
        if any(r["kind"] == "interrupted" and "SIGINT" in r["message"] for r in failures.read(paths.failures)):
            error.exit_code = 130  # Ctrl-C, as a shell reports it
        raise error


def run_filtered(
    cmd: list[str],
    env: dict,
    held: Path,
    stop_file: Path | None = None,
    signals: list[int] | None = None,
    heard: Callable[[], bool] | None = None,
    log: Path | None = None,
) -> int:
    """Run ``cmd``; stdout passes through, and so does stderr until torchrun's own failure report
    starts (its log lines and ChildFailedError traceback repeat what the failing rank recorded). What
    is held back is kept in ``held``; FTCTL_DEBUG=1 prints everything. ``stop_file``: the trainer's
    ($FTCTL_STOP_FILE), which SIGTERM or SIGHUP to this process creates (_forwarding_signals); ``signals``: a list
    the signals this process received are appended to; ``heard``: whether the child has said it was interrupted;
    ``log``: a file what passes through (both streams) is appended to, for `ftctl logs` from another terminal."""
    if os.environ.get("FTCTL_DEBUG"):
        proc = subprocess.Popen(cmd, env=env)
        with _forwarding_signals(proc, stop_file, signals, heard) as got:
            rc = proc.wait()
        return rc or (128 + got[0] if got else 0)
    piped = subprocess.PIPE if log is not None else None
    proc = subprocess.Popen(cmd, env=env, stdout=piped, stderr=subprocess.PIPE, text=True, errors="replace")
    holding, kept = False, []
    with _Tee(log) as tee, _forwarding_signals(proc, stop_file, signals, heard) as got:
        relay = None
        if proc.stdout is not None:
            relay = threading.Thread(target=_relay, args=(proc.stdout, sys.stdout, tee), daemon=True)
            relay.start()
        for line in proc.stderr:
            if not holding and _torchrun_report(line):
                holding = True
            if holding:
                kept.append(line)
            else:
                _echo(_shown(line), sys.stderr)
                tee(line)
        rc = proc.wait()
        if relay is not None:
            relay.join()
    try:
        held.write_text("".join(kept))
    except OSError as e:  # a full disk (what the run may have failed of): the failure's message comes first
        click.echo(f"warning: cannot keep torchrun's report in {held}: {e.strerror or e}", err=True)
    return rc or (128 + got[0] if got else 0)  # stopped as asked, with a checkpoint: still not a finished run


# rank 0's own log record, as trainer.__main__.log_to_stderr writes it: "2026-12-07 07:26:50,560 +0000 [rank 0]
# ftctl.checkpoints.resume: resuming from ..." (an older trainer's: no offset)
_RANK0_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}(?: [+-]\d{4})? \[rank 0\] ftctl(?:\.\w+)*: ")


def _shown(line: str) -> str:
    """A trainer line as the terminal of a local run shows it: rank 0's own records as their message alone, like the
    lines around them ("resuming from .../checkpoint-2" was the tail of a line of date, rank and module among plain
    ones). The run's train.log (`ftctl logs`) keeps them whole, their time read back by `ftctl status`; other ranks'
    and other libraries' records keep theirs."""
    return _RANK0_RECORD.sub("", line, count=1)


def _echo(line: str, stream) -> None:
    """Pass a line of the trainer's on; a closed terminal (EIO until its SIGHUP is handled) does not stop the run."""
    try:
        stream.write(line)
        stream.flush()
    except OSError:
        pass


def _relay(source, stream, tee) -> None:
    for line in source:
        _echo(line, stream)
        tee(line)


class _Tee:
    """Appends lines to a run's log (a relaunch's after the last's, under a line saying when), from the threads that
    pass the trainer's two streams on; a log that cannot be written is said once and left, the run goes on."""

    def __init__(self, path: Path | None):
        self.path, self.fh, self.lock = path, None, threading.Lock()

    def __enter__(self):
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
                hold(self.fh)  # `ftctl logs -f` follows while it is held
                self.fh.write(f"ftctl: launched {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
            except OSError as e:
                self._lost(e)
        return self

    def __call__(self, line: str) -> None:
        with self.lock:
            if self.fh is None:
                return
            try:
                self.fh.write(line)
            except OSError as e:  # a full disk: the run's own failure, if it is one, comes first
                self._lost(e)

    def _lost(self, e: OSError) -> None:
        click.echo(f"warning: cannot keep the run's log in {self.path}: {e.strerror or e}", err=True)
        self.__exit__()

    def __exit__(self, *exc):
        if self.fh is not None:
            with contextlib.suppress(OSError):
                self.fh.close()
            self.fh = None


FORWARDED = (signal.SIGTERM, signal.SIGHUP)
STOPPED = tuple(128 + s for s in FORWARDED)  # run_filtered's exit code where the launcher passed one on
CTRL_C_GRACE_S = 3.0  # how long a child has to say it heard a SIGINT before the launcher passes its own on


@contextlib.contextmanager
def _forwarding_signals(
    proc: subprocess.Popen,
    stop_file: Path | None,
    got: list[int] | None = None,
    heard: Callable[[], bool] | None = None,
):
    """SIGTERM or SIGHUP to the launcher alone (`kill PID`) stops the trainer at its next step boundary with a
    checkpoint, and the launcher says so; it trained on alone, its output into a closed pipe. (A signal to the whole
    process group, `timeout`'s or a closed terminal's, reaches the trainer itself too, which stops the same way.)
    Through ``stop_file`` (the trainer's $FTCTL_STOP_FILE, as a Slurm job's): torchrun, signalled, gives its workers
    30 s and kills them mid-save. Without a stop file the signal goes to the child as SIGTERM. A second signal stops
    the child at once, as Ctrl-C does (SIGINT to it; the step it trained, or its checkpoint, is lost). After
    SIGHUP the launcher's terminal is gone: what it passes on and says goes to /dev/null (ftctl.terminal), the run's
    records say how it ended (`ftctl status`). SIGINT stops the child at once: a terminal's Ctrl-C reaches it
    itself; one sent to the launcher alone (`kill -INT PID`) is passed on where the child has not said (``heard``)
    it was interrupted within CTRL_C_GRACE_S. The launcher waits for the child either way, to say how it ended (it
    raised KeyboardInterrupt and left the trainer running unseen). Yields the signals."""
    got = [] if got is None else got
    ttys = terminal.ttys()

    def pass_on_unheard():
        if proc.poll() is None and not (heard is not None and heard()):
            proc.send_signal(signal.SIGINT)

    def forward(signum, frame):
        got.append(signum)
        if signum == signal.SIGHUP:
            terminal.hang_up(ttys)
        if proc.poll() is not None:
            return
        if len(got) > 1:  # again: stop it now, as Ctrl-C does (ftctl's torchrun: its own shutdown)
            proc.send_signal(signal.SIGINT)
        elif signum == signal.SIGINT:
            timer = threading.Timer(CTRL_C_GRACE_S, pass_on_unheard)
            timer.daemon = True
            timer.start()
        elif stop_file is not None:
            try:
                ask_to_stop(stop_file, f"{signal.Signals(signum).name} to ftctl launch")
            except OSError:  # a full disk, a directory gone: the signal itself, as without a stop file
                proc.send_signal(signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)

    before = {s: signal.signal(s, forward) for s in terminal.caught((*FORWARDED, signal.SIGINT))}  # nohup: no HUP
    try:
        yield got
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def ask_to_stop(stop_file: Path, why: str) -> None:
    """The trainer's stop file, created with ``why`` in it: its stop lines say it ("stopping at step 21 (SIGTERM to
    ftctl launch)": they said "stop file", the launcher's own last line SIGTERM; trainer.callbacks.stop_reason).
    One write, through a link as `touch` went (the trainer reads it at its step's end); a stop file that says
    nothing (a Slurm job's trap, a user's `touch`) stops the run the same."""
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.write_text(f"{why}\n")


def _torchrun_report(line: str) -> bool:
    return (
        "torch/distributed/elastic" in line
        or "torch.distributed.elastic" in line
        or line.startswith("Traceback (most recent call last)")
    )


def _logged(paths: RunPaths, error: Stopped) -> Stopped:
    """``error``, its words also at the end of the run's train.log: `ftctl logs RUN` says why a run stopped at once
    (the trainer, stopped where it was, wrote no word of it)."""
    with contextlib.suppress(OSError), open(paths.local_log, "a", encoding="utf-8") as fh:
        fh.write(f"ftctl: {error}\n")
    return error


def stop_file_unheard(holder: str, paths: RunPaths) -> int | None:
    """The pid of the trainer ``holder`` names ("pid N on HOST since ...", its lock's words) where it runs on this
    host and the environment it started with names no STOP_ENV: `ftctl cancel`'s stop file stops nothing (an older
    ftctl's run, upgraded while it trains: its `ftctl train`, which set none before 2026-12-06, or a launch of an
    ftctl whose launcher set none, before 2026-12-03: explore38). None where it does (an `ftctl train` of this ftctl
    sets it in its own process and names itself in the run's stop_heard), or where this cannot be read here (another
    host or user, no /proc)."""
    words = holder.split()
    if len(words) < 4 or words[0] != "pid" or not words[1].isdigit() or words[3:4] != [socket.gethostname()]:
        return None
    with contextlib.suppress(OSError):
        if paths.stop_heard.read_text().strip() == words[1]:
            return None
    try:
        environ = Path("/proc", words[1], "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return None if any(entry.startswith(f"{STOP_ENV}=".encode()) for entry in environ) else int(words[1])


def _ctrl_c_message(spec: RunSpec, paths: RunPaths) -> str:
    """What Ctrl-C cost, and how the run goes on (or stops with a checkpoint next time)."""
    return (
        f"stopped at once (Ctrl-C); {_goes_on(spec)}. To stop with a checkpoint of the step it is on, send SIGTERM "
        f"instead (`kill PID`) or run `ftctl cancel {shlex.quote(str(paths.root))}`."
    )


def train_here(rendered: Rendered) -> int:
    """`ftctl train`: the trainer in this process (no torchrun, no launcher between it and the terminal). Ctrl-C
    stops it at once (its handler: interrupted by SIGINT), and what that cost is said as launch says it. It writes
    its status word where a launch's trainer does (`ftctl status` reads it) and watches the stop file a launch's
    trainer does (`ftctl cancel RUN`; the run's stop_heard names this process), and a run stopped with a checkpoint
    (SIGTERM, SIGHUP) exits as launch does then, 128 + SIGTERM: not finished (the trainer's own exit is 0)."""
    from ftctl.trainer.__main__ import main as trainer_main

    status = Path(os.environ.setdefault(STATUS_ENV, str(rendered.paths.status_file)))  # this process is the trainer
    status.unlink(missing_ok=True)  # an earlier attempt's word is not this one's
    own = trainer_paths_of(rendered.spec)
    if os.environ.setdefault(STOP_ENV, str(own.stop_file)) == str(own.stop_file):  # `ftctl cancel RUN` creates it
        own.stop_file.unlink(missing_ok=True)
        own.stop_heard.parent.mkdir(parents=True, exist_ok=True)
        own.stop_heard.write_text(f"{os.getpid()}\n")
    try:
        rc = trainer_main(["--spec", str(rendered.paths.spec)])
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGINT:
            click.echo(
                f"stopped at once (Ctrl-C); {_goes_on(rendered.spec, 'ftctl train')}. To stop with a checkpoint of "
                "the step it is on, send SIGTERM instead (`kill PID`).",
                err=True,
            )
        raise
    finally:
        own.stop_heard.unlink(missing_ok=True)
    if rc == 0 and _read_word(status) == "preempted":
        return 128 + signal.SIGTERM
    return rc


def _goes_on(spec: RunSpec, command: str = "ftctl launch") -> str:
    """What a stop at once lost since the last complete checkpoint, which the same ``command`` resumes (named)."""
    from ftctl.checkpoints import list_checkpoints

    try:
        saved = [c for c in list_checkpoints(spec.output, endpoint_url=spec.s3_endpoint_url) if c.complete]
    except (FtctlError, OSError):  # the store cannot say now: the relaunch will
        saved = None
    if saved is None:
        again = f"the same `{command}` resumes from the last checkpoint"
    elif saved:
        again = f"the steps since {saved[-1].name} are lost: the same `{command}` resumes from it"
    else:
        again = f"nothing was saved yet: the same `{command}` starts it again"
    return again


def failure_message(paths: RunPaths, rc: int, spec: RunSpec) -> str:
    from ftctl.checkpoints import list_checkpoints

    records = failures.read(paths.failures)
    if records:
        message, resumable = failures.summarize(records)
    else:
        held = paths.launcher_log
        tail = held.read_text().strip().splitlines()[-15:] if held.exists() else []
        if tail:
            click.echo("\n".join(tail), err=True)
        message = f"training exited with code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
        if rc == -signal.SIGKILL:  # nothing recorded: no Python exception; what sends SIGKILL unasked is the OOM killer
            message += (
                ": killed, most often by the kernel's out-of-memory killer (`dmesg` or `journalctl -k` says); "
                "lower -o per_device_train_batch_size or -o model_max_length, or set -o host_memory_gb to what is "
                "free, which the plan fits"
            )
        resumable = True  # killed from outside, or a node went away: a relaunch resumes
    if resumable:
        try:
            done = [c for c in list_checkpoints(spec.output, endpoint_url=spec.s3_endpoint_url) if c.complete]
        except (FtctlError, OSError):  # the store cannot say now: the relaunch will
            done = None
        again = (
            "resume from the last checkpoint"
            if done is None or done
            else "start it again (no checkpoint was saved yet)"
        )
        if done and not is_remote(spec.output) and (room := no_room(paths.root, done[-1].size)):
            again += f" {room}"
        message += f". Run the same `ftctl launch` again to {again}."
    return message
