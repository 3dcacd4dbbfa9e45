"""Two GPUs of one host against one, through `ftctl launch`: every strategy, lora/qlora, resume across GPU counts.

Run on the device machine (never in CI) on the 2-GPU kind, with the wheels carried (README.md
"multi_gpu.py"). Each case is its own `ftctl launch --backend local` (torchrun and NCCL on 2 GPUs: the line
every backend runs), 20 steps of packed 2,048-token rows of the Llama-3.2-1B shape, global batch 16 rows in
every case (1 GPU: 8 x 2 accumulation; 2 GPUs: 8 x 1; --global-batch 64: 8 x 8 and 8 x 4), so the losses of
the same steps are comparable:

    single                  fft on 1 GPU (the planner's single)
    ddp zero2 zero3 fsdp zero2_offload zero3_offload   fft on 2 GPUs with -o strategy= (fsdp: FSDP2 through accelerate)
    <strategy>:1            the same strategy forced on ONE GPU (zero3:1: a same-strategy scaling baseline)
    lora:1 qlora:1          lora / qlora on 1 GPU;   lora:ddp qlora:ddp   the same on 2 GPUs (DDP)
    lora:fsdp               lora on 2 GPUs with the base sharded by FSDP2 (-o strategy=fsdp)
    single:weak             fft on 1 GPU with half the global batch (8 x 1): one GPU's share of a 2-GPU step,
                            the baseline of weak scaling (scaling_weak; no parity: other batches)
    resume:<s>:2to1         resume the checkpoint the 2-GPU case <s> wrote at step 10 on 1 GPU (new output
    resume:<s>:1to2         dir, -o resume=<checkpoint>); 1to2: the one case <s>:1 wrote, on 2 GPUs. <s> is
                            zero3 or fsdp; the source case must come earlier in --cases (it then saves at
                            step 10). Its steps 11..20 are compared with the source's own steps 11..20.
    A+B                     two 1-GPU cases at the same time, one on each GPU (CUDA_VISIBLE_DEVICES 0 and 1,
                            their own rendezvous and master ports): e.g. single+lora:1
    <case>@profile          the case through bench/profile_runner.py instead of `ftctl launch` (the spec launch
                            would write, torchrun): torch.profiler over steps 6-8 on every rank (rank 0's
                            report: kernel time a step, GPU idle by what the host ran, the top kernels; compare.py's
                            analysis), then it stops. No rate (the profiler slows the steps it traces); e.g.
                            single@profile,ddp@profile says where a second GPU's time goes
    <case>@env:K=V[;K=V]    the case with environment variables set (NCCL's, torch's), e.g. ddp@env:NCCL_PROTO=Simple
                            beside ddp; combines with @profile (<case>@env:...@profile)
    <case>@o:K=V[;K=V]      the case with more run options (-o K=V), e.g. ddp@o:ddp_comm_dtype=bf16 beside ddp

--save-at N: every case saves checkpoint-N (not only resume sources, which save at N instead of steps // 2),
and its row records, before its output is deleted, what is on disk: ckpt_files {path in checkpoint-N: bytes}
(DeepSpeed's ranks and global_step* grouped as rank_* and global_step*), ckpt_bytes, ckpt_bytes_per_param
(over the model's parameter count), and final_files, final_bytes, final_bytes_per_param for the rest of the
output dir (the final model, its tokenizer, metrics.jsonl, spec.json).

First the network probe across both GPUs (python -m ftctl.trainer.netcheck; --no-netcheck skips it). Writes,
after every case (a run cut short still leaves its rows):

    $OUT/multi_gpu.json   {"card", "kind", "torch", "netcheck", "rows": [{case, card, gpus, method, strategy,
                          tokens_per_s, scaling_vs_1gpu, scaling_vs_same_strategy_1gpu, parity_max_rel_diff,
                          peak_gib, plan_peak_gib, mfu, losses, first_step, concurrent_with,
                          resume_first_step, resume_max_rel_diff, ...}]}
    $OUT/multi_gpu.md     the same as a table;  $OUT/logs/<case>.log  each case's output

    python3 bench/multi_gpu.py --out DIR [--steps 20] [--cases single,ddp,zero2,zero3,fsdp] [--budget-s 480]
    python3 bench/multi_gpu.py --plot DIR/multi_gpu.json   (here, with matplotlib: the loss curves as a PNG)
    python3 bench/multi_gpu.py --merge A/multi_gpu.json B/multi_gpu.json --out DIR   (several calls, one table)
    BENCH_CPU=1 python bench/multi_gpu.py --out DIR --cases ...   (here: the same orchestration on CPU with the
                          tests' tiny model, gloo, 1 or 2 processes; fsdp cases get an error row, ftctl refuses
                          fsdp on CPU)

tokens_per_s counts steps 6.. (the first ones compile and warm the allocator), leaving out the intervals
around a checkpoint save and the last one (those steps log at once, the others a step late);
scaling_vs_1gpu divides by the 1-GPU row of the same method (single, lora:1, qlora:1), scaling_vs_same_strategy_1gpu by the <strategy>:1 row, scaling_weak (fft) by single:weak (one GPU doing one
GPU's share of the step: the per-step costs that accumulation amortises on `single` are not counted against
the second GPU); parity_max_rel_diff is the largest
|loss - loss_1gpu| / loss_1gpu over the common steps against that same 1-GPU row; peak_gib is rank 0's
torch.cuda.max_memory_allocated; plan_peak_gib the planner's memory_gb in GiB; mfu counts 6 (fft) or 4
(lora/qlora) x parameters x tokens against the card's dense bf16 peak (attention left out). Case outputs
live under --work (local disk: a 1B fft checkpoint with optimizer states is ~15 GB) and are deleted as soon
as no later case needs them (a resume source keeps only its checkpoint until its resume cases ran).
Each case (or concurrent pair) gets min(budget left, 200 s; 300 s with a resume: the universal conversion);
none starts with less than 80 s of budget left (a GPU case takes ~85-90 s, most of it start-up and saves).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ftctl.envvars import THREADS_ENV  # noqa: E402

# BENCH_CPU=1: the same orchestration on CPU (tiny model, gloo), to debug it before spending device time
CPU = os.environ.get("BENCH_CPU") == "1"
GLOBAL_BATCH, MICRO, SEQ, WARM = (4, 2, 128, 1) if CPU else (16, 8, 2048, 5)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp", "zero2_offload", "zero3_offload")
BASE = {"fft": "single", "lora": "lora:1", "qlora": "qlora:1"}  # the 1-GPU row each method is held against
RESUMABLE = ("zero3", "fsdp")
CASE_TIMEOUT_S, RESUME_TIMEOUT_S = 200, 300
MIN_START_S = 20 if CPU else 80  # a case is not started with less budget left (a GPU case takes ~85-90 s)
PORT_BASE = 29500  # slot i: rendezvous port PORT_BASE + 10 i, master port (1 process) PORT_BASE + 10 i + 1


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    gpus: int
    strategy: str | None  # forced with -o strategy=; None: the planner's
    source: str | None = None  # resume cases: the case whose checkpoint they resume
    global_batch: int = GLOBAL_BATCH
    profile: bool = False  # <case>@profile: through bench/profile_runner.py
    env: tuple[tuple[str, str], ...] = ()  # <case>@env:K=V;K=V: set for the case's processes
    options: tuple[str, ...] = ()  # <case>@o:K=V;K=V: more -o options

    @property
    def asked(self) -> str:
        return self.strategy or "single"


def parse_case(name: str) -> Case:
    if name.endswith("@profile") and "resume" not in name:
        return replace(parse_case(name.removesuffix("@profile")), name=name, profile=True)
    for tag in ("@env:", "@o:"):
        if tag in name:
            base, _, body = name.rpartition(tag)
            pairs = tuple(tuple(kv.split("=", 1)) for kv in body.split(";") if kv)
            if not pairs or any(len(kv) != 2 for kv in pairs):
                raise ValueError(f"{name!r}: write <case>{tag}KEY=VALUE[;KEY=VALUE]")
            case = parse_case(base)
            if tag == "@o:":
                return replace(case, name=name, options=case.options + tuple(f"{k}={v}" for k, v in pairs))
            return replace(case, name=name, env=case.env + pairs)
    parts = name.split(":")
    if name == "single":
        return Case(name, "fft", 1, "single")
    if name == "single:weak":
        return Case(name, "fft", 1, "single", global_batch=GLOBAL_BATCH // 2)
    if name in STRATEGIES:
        return Case(name, "fft", 2, name)
    if len(parts) == 2 and parts[0] in ("lora", "qlora") and parts[1] in ("1", "ddp"):
        return Case(name, parts[0], 1, None) if parts[1] == "1" else Case(name, parts[0], 2, "ddp")
    if name == "lora:fsdp":  # the planner's choice for a LoRA base no single GPU holds
        return Case(name, "lora", 2, "fsdp")
    if len(parts) == 2 and parts[0] in STRATEGIES and parts[1] == "1":
        return Case(name, "fft", 1, parts[0])
    if len(parts) == 3 and parts[0] == "resume" and parts[1] in RESUMABLE and parts[2] in ("2to1", "1to2"):
        two_to_one = parts[2] == "2to1"
        return Case(name, "fft", 1 if two_to_one else 2, parts[1], parts[1] if two_to_one else f"{parts[1]}:1")
    raise ValueError(
        f"unknown case {name!r}: use single, single:weak, {', '.join(STRATEGIES)}, <strategy>:1, lora:1, lora:ddp, lora:fsdp, qlora:1, "
        f"qlora:ddp, resume:<{'|'.join(RESUMABLE)}>:<2to1|1to2>, <case>@profile, <case>@env:K=V, <case>@o:K=V; A+B runs two 1-GPU cases at once"
    )


def parse_groups(text: str) -> list[list[Case]]:
    """--cases: comma-separated groups, each one case or two 1-GPU cases joined by '+'. Every error at once."""
    groups, errors, seen = [], [], set()
    for part in text.split(","):
        group = []
        for name in part.strip().split("+"):
            try:
                case = parse_case(name.strip())
            except ValueError as e:
                errors.append(str(e))
                continue
            if case.name in seen:
                errors.append(f"{case.name} is listed twice")
            if case.source and case.source not in seen:
                errors.append(
                    f"{case.name} resumes the checkpoint of {case.source}: list {case.source} in an earlier group"
                )
            group.append(case)
        if len(group) > 2 or (len(group) == 2 and any(c.gpus != 1 for c in group)):
            errors.append(f"{part}: '+' joins two 1-GPU cases (one on each GPU)")
        seen.update(c.name for c in group)
        groups.append(group)
    if errors:
        raise SystemExit("bad --cases:\n  " + "\n  ".join(errors))
    return groups


# ------------------------------------------------------------------------------------------ one case
@dataclass
class Running:
    case: Case
    out: Path
    log: Path
    proc: subprocess.Popen
    t0: float


def overrides(case: Case, steps: int, save_step: int | None, resume: Path | None, slot: int) -> list[str]:
    values = {
        "max_steps": steps,
        "global_batch_size": case.global_batch,
        "per_device_train_batch_size": MICRO,
        "model_max_length": SEQ,
        "save_steps": save_step or 100000,
        "logging_steps": 1,
        "resume": str(resume) if resume else "never",
        "seed": 7,
        "warmup_ratio": 0.0,
        "rdzv_port": PORT_BASE + 10 * slot,
    }
    if case.strategy:
        values["strategy"] = case.strategy
    if CPU:
        values["learning_rate"] = 1e-3  # the tests' rate: the tiny model's curve moves in 8 steps
    return [f"{k}={v}" for k, v in values.items()] + list(case.options)


def command(case: Case, model: Path, data: Path, out: Path, opts: list[str]) -> list[str]:
    """GPU: `ftctl launch --backend local`. CPU, and every @profile case: the spec that launch would write, run
    with torchrun --standalone (the local backend takes one node, and 2 CPU processes are 2 nodes to ftctl:
    --gpus 2xcpu), through bench/profile_runner.py for a profile."""
    tier = os.environ.get("BENCH_TIER", "H200")
    if not CPU and not case.profile:
        cmd = [sys.executable, "-m", "ftctl.cli", "launch", "--backend", "local", "--gpus", f"{case.gpus}x{tier}"]
        cmd += ["--method", case.method, "--model", str(model), "--data", str(data), "--output", str(out)]
        for o in opts:
            cmd += ["-o", o]
        return cmd
    from ftctl.plan import dump_run, make_plan
    from ftctl.spec import build

    gpus = ("2xcpu" if case.gpus == 2 else "cpu") if CPU else f"{case.gpus}x{tier}"
    flags = dict(method=case.method, model_name_or_path=str(model), data_path=str(data), output_dir=str(out))
    spec = build(flags={**flags, "gpus": gpus, "backend": "local"}, overrides=opts)
    path = out.with_name(out.name + ".spec.json")
    path.write_text(dump_run(spec, make_plan(spec)))
    script = ["-m", "ftctl.trainer", "--spec", str(path)]
    if case.profile:
        script = [str(REPO / "bench" / "profile_runner.py"), str(path), str(profile_report(out))]
    if case.gpus == 1:
        return [sys.executable, *script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *script]


def dirname(case_name: str) -> str:
    """A case's output and log name: letters, digits, '.', '_' and '-' only (the device tool returns no other)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", case_name)


def profile_report(out: Path) -> Path:
    """Where a @profile case's report goes: beside its output dir, which cleanup() deletes."""
    return out.with_name(out.name + ".profile.json")


def start(case: Case, slot: int, concurrent: bool, opts: list[str], model: Path, data: Path, work: Path) -> Running:
    out = work / dirname(case.name)
    shutil.rmtree(out, ignore_errors=True)
    profile_report(out).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    env["CUDA_VISIBLE_DEVICES"] = str(slot) if concurrent else ("0" if case.gpus == 1 else "0,1")
    env.update(dict(case.env))
    if case.gpus == 1:  # one process without torchrun: DeepSpeed's (and FSDP's) group of one uses it
        env["MASTER_PORT"] = str(PORT_BASE + 10 * slot + 1)
    if CPU:
        env["OMP_NUM_THREADS"] = "1"
    elif case.profile and "OMP_NUM_THREADS" not in env:  # what `ftctl launch` sets (launch.trainer_env)
        env[THREADS_ENV] = "auto"
    log = work / f"{out.name}.log"
    cmd = command(case, model, data, out, opts)
    # its own session: on a timeout the whole tree goes (torchrun's workers would keep the GPUs otherwise)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    return Running(case, out, log, proc, time.time())


def wait(running: list[Running], timeout: float) -> dict[str, object]:
    """Exit code (or 'timeout') of each case by name; a case past the deadline is killed with its tree."""
    deadline = time.time() + timeout
    codes: dict[str, object] = {}
    for r in running:
        try:
            codes[r.case.name] = r.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
            codes[r.case.name] = "timeout"
    return codes


def files_of(d: Path) -> dict[str, int]:
    """{path relative to d: bytes} of every file under d but checkpoint-* dirs (DeepSpeed's per-rank, per-step
    names grouped: rank_*, global_step*)."""
    files: dict[str, int] = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and not re.match(r"checkpoint-\d+/", rel):
            key = re.sub(r"global_step\d+", "global_step*", re.sub(r"rank_\d+", "rank_*", rel))
            files[key] = files.get(key, 0) + p.stat().st_size
    return files


def disk_row(out: Path, save_step: int, n_params: int) -> dict:
    """What a case left on disk: checkpoint-<save_step> and the rest of its output dir (the final model)."""
    row: dict = {}
    ckpt = out / f"checkpoint-{save_step}"
    for key, files in (("ckpt", files_of(ckpt) if ckpt.is_dir() else {}), ("final", files_of(out))):
        total = sum(files.values())
        row |= {f"{key}_files": files, f"{key}_bytes": total, f"{key}_bytes_per_param": round(total / n_params, 3)}
    return row


def read_row(r: Running, rc, save_step: int | None, logs: Path) -> dict:
    wall = round(time.time() - r.t0, 1)
    shutil.copy(r.log, logs / r.log.name)
    c = r.case
    row = {"case": c.name, "gpus": c.gpus, "method": c.method, "strategy": c.asked, "wall_s": wall}
    row["global_batch"] = c.global_batch
    rows = []
    if (r.out / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (r.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in rows if "loss" in x]
    row["steps"] = len(steps)
    row["times"] = [x["time"] for x in steps]  # when each record was written (a rate can be recomputed)
    if rc != 0 or (len(steps) <= WARM + 1 and not c.profile):  # a profile may stop early (PROFILE_FIRST)
        tail = r.log.read_text(errors="replace")[-3000:]
        if rc == "timeout":  # killed at its budget: say so first (the log's last line is often only a warning)
            return {**row, "error": f"timeout: killed after {wall} s (its budget), {len(steps)} steps written; {tail}"}
        return {**row, "error": f"exit {rc}: {tail}"}
    tokens = dt = 0.0
    last = steps[-1]["step"]
    for prev, cur in zip(steps[WARM - 1 : -1], steps[WARM:]):
        # on a GPU a step's record is written at the next step's end (sft_trainer's deferred log), but a step
        # that saves or ends writes its own at once: the interval ending there holds a step's tokens and no
        # time, the one after a save two steps' time and one step's tokens (before v27 the last interval
        # was counted: the rates were (n + 1) / n too high, 1.07x at 20 steps, the ratios unchanged)
        if cur["step"] == last or (save_step and save_step in (prev["step"], cur["step"])):
            continue
        tokens += cur["tokens"] - prev["tokens"]
        dt += cur["time"] - prev["time"]
    plan = json.loads((r.out / "spec.json").read_text())["plan"]
    if c.profile:  # the profiler slowed the steps it traced: no rate
        report = profile_report(r.out)
        row["profile"] = json.loads(report.read_text()) if report.exists() else {"error": "no report written"}
        tokens = dt = 0.0
    start_rec = next((x for x in rows if x.get("event") == "start"), {})
    peaks = [x["peak_mem_gib"] for x in steps if x.get("peak_mem_gib") is not None]
    return {
        **row,
        "strategy": plan["strategy"],
        "tokens_per_s": round(tokens / dt, 1) if dt else None,
        "peak_gib": max(peaks) if peaks else None,
        "plan_peak_gib": round(plan["memory_gb"] * 1e9 / 2**30, 2),
        "plan": {
            k: plan.get(k)
            for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "memory")
        },
        "attention": start_rec.get("attention"),
        "final_loss": steps[-1]["loss"],
        "first_step": steps[0]["step"],
        "losses": [x["loss"] for x in steps],
    }


# ------------------------------------------------------------------------------------------ rows
def loss_by_step(row: dict) -> dict[int, float]:
    return {row["first_step"] + i: v for i, v in enumerate(row["losses"])}


def max_rel_diff(row: dict, ref: dict) -> float | None:
    a, b = loss_by_step(row), loss_by_step(ref)
    common = sorted(set(a) & set(b))
    return round(max(abs(a[s] - b[s]) / abs(b[s]) for s in common), 5) if common else None


def ratio(a: dict, b: dict | None) -> float | None:
    if not b or not a.get("tokens_per_s") or not b.get("tokens_per_s"):
        return None
    return round(a["tokens_per_s"] / b["tokens_per_s"], 3)


def finish(rows: list[dict], card: str, n_params: int) -> None:
    """Scaling, parity, resume continuity and MFU of every row against the others (in place)."""
    done = {r["case"]: r for r in rows if "error" not in r}
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
    for r in rows:
        r["card"] = card
        if "error" in r:
            continue
        flops = (6 if r["method"] == "fft" else 4) * n_params
        r["mfu"] = (
            round(flops * r["tokens_per_s"] / (r["gpus"] * peak * 1e12), 3) if peak and r["tokens_per_s"] else None
        )
        case = parse_case(r["case"])
        if case.source:  # a resume: its steps against the source's own
            source = done.get(case.source)
            r["resume_first_step"] = r["first_step"]
            r["resume_max_rel_diff"] = max_rel_diff(r, source) if source else None
            continue
        weak = done.get("single:weak") if r["gpus"] == 2 and r["method"] == "fft" else None
        if weak:  # the same work per GPU and per optimizer step: what a second GPU adds
            r["scaling_weak"] = ratio(r, weak)
        if case.name == "single:weak":
            continue
        base = done.get(BASE[r["method"]])
        r["scaling_vs_1gpu"] = ratio(r, base)
        r["parity_max_rel_diff"] = max_rel_diff(r, base) if base else None
        same = done.get(f"{case.strategy}:1") if r["gpus"] == 2 and r["method"] == "fft" else None
        if same:
            r["scaling_vs_same_strategy_1gpu"] = ratio(r, same)
            r["parity_vs_same_strategy_1gpu"] = max_rel_diff(r, same)


COLUMNS = ["case", "gpus", "strategy", "tokens_per_s", "scaling_vs_1gpu", "scaling_vs_same_strategy_1gpu"]
COLUMNS += ["scaling_weak", "mfu"]
COLUMNS += [
    "parity_max_rel_diff",
    "parity_vs_same_strategy_1gpu",
    "resume_first_step",
    "resume_max_rel_diff",
    "peak_gib",
    "plan_peak_gib",
]
COLUMNS += ["ckpt_bytes_per_param", "final_bytes_per_param"]
COLUMNS += ["final_loss", "wall_s", "concurrent_with", "call"]


def write(out: Path, result: dict) -> None:
    (out / "multi_gpu.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Llama-3.2-1B shape, {result['card']} ({result['kind']}), torch {result['torch']}, {result['steps']} steps, "
        f"global batch {result.get('global_batch', GLOBAL_BATCH)} x {SEQ} tokens",
        "",
        f"netcheck: {json.dumps(result.get('netcheck'))}",
        "",
        "| " + " | ".join(COLUMNS) + " | error |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for r in result["rows"]:
        err = r.get("error", "")
        err = err.partition(";")[0] if err.startswith("timeout:") else err[-200:]  # a timeout's own words, not its log
        err = err.replace("\n", " ").replace("|", "/")
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + f" | {err} |")
    for r in result["rows"]:
        prof = r.get("profile")
        if prof and "error" not in prof:
            gaps = prof.get("gaps", {})
            lines += ["", f"## {r['case']}: {prof['kernels_s_per_step']} s of kernels a step (rank 0)", ""]
            lines += [f"GPU idle {gaps.get('idle_ms_per_step')} ms a step; by what the host ran:"]
            lines += [
                f"    {json.dumps(gaps.get('by_host_activity'))}",
                "",
                "```",
                *prof["table"].splitlines()[:25],
                "```",
            ]
    (out / "multi_gpu.md").write_text("\n".join(lines) + "\n")


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in result["rows"]:
        if r.get("losses"):
            steps = range(r.get("first_step", 1), r.get("first_step", 1) + len(r["losses"]))
            ax.plot(steps, r["losses"], label=f"{r.get('case', r['strategy'])} ({r['gpus']} GPU)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"1B shape, {result['card']}: loss parity and resume")
    ax.legend(fontsize=7)
    png = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return png


def merge(paths: list[str], out: Path) -> None:
    """One table from several calls' multi_gpu.json (each row gets its ``call``, 1-based, in the order
    given; rows skipped for budget are left out): scaling, parity and resume recomputed across all rows, a
    later call's row of a case being the reference for it. Rows of different calls ran under different
    conditions (what else shared the host): the report says so."""
    from bench.gpu_train import SHAPES

    results = [json.loads(Path(p).read_text()) for p in paths]
    rows = [
        {**r, "call": i}
        for i, res in enumerate(results, 1)
        for r in res["rows"]
        if not r.get("error", "").startswith("skipped")
    ]
    merged = {**results[0], "cases": " | ".join(r["cases"] for r in results), "rows": rows}
    finish(rows, merged["card"], params_of_config(SHAPES["1b"]))
    out.mkdir(parents=True, exist_ok=True)
    write(out, merged)


# ------------------------------------------------------------------------------------------ setup
def netcheck(out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "ftctl.trainer.netcheck", "--json", str(out / "netcheck.json")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads((out / "netcheck.json").read_text())


def params_of(model_dir: Path) -> int:
    return params_of_config(json.loads((model_dir / "config.json").read_text()))


def params_of_config(cfg: dict) -> int:
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * i + 2 * h
    return n * per_layer + v * h * (1 if cfg.get("tie_word_embeddings") else 2) + h


def inputs(work: Path, rows: int) -> tuple[Path, Path]:
    """The model and ``rows`` conversations (~0.8 packed 2,048-token rows each): one epoch for the whole run,
    since the short steps at an epoch's end would be timed with the others (v27's 64-row steps crossed two)."""
    from bench.gpu_train import make_data, make_model

    if CPU:  # the tests' tiny model and the demo's short conversations (make_data's outgrow 128 tokens)
        from ftctl.demo import demo_data_path
        from tests.tiny_fixtures import make_tiny_model_dir

        model = work / "llama-tiny"
        if not (model / "config.json").exists():
            make_tiny_model_dir(model)
        return model, demo_data_path()
    return make_model("1b", work), make_data(work / f"data-{rows}.json", rows)


def refusal(case: Case) -> str | None:
    """Why a case cannot run here, before spending its time."""
    if CPU and case.strategy == "fsdp":
        return "skipped: fsdp does not run on CPU (ftctl refuses it: distributed.fsdp_settings); GPU only"
    if case.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes is not installed (qlora needs it: carry its wheel)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=8 if CPU else 20)
    ap.add_argument("--cases", default="single,ddp,zero2,zero3,fsdp")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting cases after this many seconds")
    ap.add_argument(
        "--global-batch",
        type=int,
        default=GLOBAL_BATCH,
        help=f"rows a step in every case (single:weak half of it); a multiple of {2 * MICRO}: more accumulation",
    )
    ap.add_argument("--save-at", type=int, help="every case saves checkpoint-N; rows record its files and bytes")
    ap.add_argument("--work", default="/tmp/ftctl-bench-cpu" if CPU else "/tmp/ftctl-bench")
    ap.add_argument("--no-netcheck", action="store_true", help="skip the all-reduce probe across both GPUs")
    ap.add_argument("--plot", help="a multi_gpu.json to draw (no GPU needed)")
    ap.add_argument("--merge", nargs="+", help="several calls' multi_gpu.json into one table in --out")
    a = ap.parse_args()
    if a.plot:
        print(plot(Path(a.plot)))
        return
    if a.merge:
        return merge(a.merge, Path(a.out))
    t0 = time.time()
    groups = parse_groups(a.cases)
    if a.global_batch % (2 * MICRO):
        raise SystemExit(
            f"--global-batch {a.global_batch}: use a multiple of {2 * MICRO} (micro-batch {MICRO} on 2 GPUs)"
        )
    scale = a.global_batch // GLOBAL_BATCH  # 16 -> 1; 64 -> 4: 8 x 8 on one GPU, 8 x 4 on each of two
    groups = [[replace(c, global_batch=c.global_batch * scale) for c in g] for g in groups]
    sources = {c.source for g in groups for c in g if c.source}
    save_step = a.save_at or a.steps // 2  # the checkpoint a resume case starts from (10 of 20)
    saves = {c.name for g in groups for c in g if a.save_at or c.name in sources}
    import torch

    out, work = Path(a.out), Path(a.work)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    card = "cpu (BENCH_CPU=1 dry run)" if CPU else torch.cuda.get_device_name(0)
    kind = (
        "cpu"
        if CPU
        else ("nvidia-h200" if torch.cuda.device_count() == 1 else f"nvidia-h200-x{torch.cuda.device_count()}")
    )
    result = {"card": card, "kind": kind, "torch": torch.__version__, "steps": a.steps, "cases": a.cases, "rows": []}
    result["global_batch"] = a.global_batch
    # the base image's too: v109's losses moved from step 1 when the device image changed under the same wheels
    for mod in ("deepspeed", "trl", "transformers", "accelerate", "bitsandbytes", "tokenizers", "safetensors", "numpy"):
        try:
            result[mod] = __import__(mod).__version__
        except Exception as e:  # deepspeed missing: its rows fail with the reason
            result[mod] = f"missing: {e}"
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    result["netcheck"] = "skipped" if a.no_netcheck else netcheck(out)
    write(out, result)
    model, data = inputs(work, max(400, round(1.5 * a.global_batch * a.steps)))
    n_params = params_of(model)
    rows = result["rows"]
    for gi, group in enumerate(groups):
        left = a.budget_s - (time.time() - t0)
        running, names = [], [c.name for c in group]
        for slot, case in enumerate(group):
            others = [n for n in names if n != case.name]
            why = refusal(case) or ("skipped: budget" if left < MIN_START_S else None)
            resume = work / dirname(case.source) / f"checkpoint-{save_step}" if case.source else None
            if why is None and resume is not None and not resume.is_dir():
                why = f"skipped: {case.source} left no {resume.name} to resume"
            if why:
                row = {"case": case.name, "gpus": case.gpus, "method": case.method, "strategy": case.asked}
                rows.append({**row, "error": why, **({"concurrent_with": others[0]} if others else {})})
                continue
            opts = overrides(case, a.steps, save_step if case.name in saves else None, resume, slot)
            print(f"--- {case.name} on {case.gpus} GPU(s){' with ' + others[0] if others else ''}, {left:.0f} s left")
            running.append(start(case, slot, len(group) > 1, opts, model, data, work))
        timeout = min(left, RESUME_TIMEOUT_S if any(r.case.source for r in running) else CASE_TIMEOUT_S)
        codes = wait(running, timeout)
        for r in running:
            row = read_row(r, codes[r.case.name], save_step if r.case.name in saves else None, logs)
            if a.save_at:
                row |= disk_row(r.out, save_step, n_params)
            if len(running) > 1:
                row["concurrent_with"] = next(x.case.name for x in running if x is not r)
            row["disk_free_gib"] = round(shutil.disk_usage(work).free / 2**30, 1)
            print(json.dumps({k: v for k, v in row.items() if k not in ("losses", "plan", "times")})[:2500], flush=True)
            rows.append(row)
        finish(rows, card, n_params)
        write(out, result)
        cleanup(work, groups[gi + 1 :], save_step, [r.case for r in running])
    cleanup(work, [], save_step, [])
    print((out / "multi_gpu.md").read_text(), flush=True)


def cleanup(work: Path, later: list[list[Case]], save_step: int, ran: list[Case]) -> None:
    """Delete each case output no later case needs; a resume source keeps only its checkpoint. With no
    later cases and nothing ran: every case output (the model and data stay for a warm machine's next call)."""
    needed = {c.source for g in later for c in g if c.source}
    dirs = [work / dirname(c.name) for c in ran] if ran or later else [p for p in work.iterdir() if p.is_dir()]
    for d in dirs:
        if d.name.startswith("llama-") or not d.exists():
            continue
        if d.name in {dirname(s) for s in needed}:
            for p in d.iterdir():
                if p.name != f"checkpoint-{save_step}":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        else:
            shutil.rmtree(d)
    for case in ran:  # a source whose last resume case just ran
        if case.source and case.source not in needed:
            shutil.rmtree(work / dirname(case.source), ignore_errors=True)


if __name__ == "__main__":
    main()
