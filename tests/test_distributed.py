"""Many processes on CPU (torchrun, gloo) with the tiny model: ZeRO-3 (+ offload) parity with one process,
every rank saving the same step on a signal, resume across a change of world size (2 -> 1 -> 2), FSDP's
refusal on CPU, and the network probe (locally with 2 processes, and as the preflight step of a real 2-node
Slurm job). ZeRO-2's parity is in tests/test_trainer.py.

DeepSpeed's CPU Adam (the offload strategies' optimizer) compiles once (35-70 s of g++ on 2 cores) into a cache
under the temp dir that later runs reuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from tests.trainer_fixtures import REPO, losses_by_step, make_run, run_trainer_cli, subprocess_env, write_spec

STEPS = 6
# where scripts/test.sh builds CPU Adam while the first tests run (and tests/test_resume_settings.py loads it from)
DS_ENV = {"TORCH_EXTENSIONS_DIR": Path(tempfile.gettempdir()) / "ftctl-torch-extensions"}


def _run(tiny_model_dir, tiny_data, out, gpus="cpu", **overrides):
    """(spec, plan) of a short fft run: global batch 4 (1 process x 2 x 2 accumulation, or 2 x 2 x 1)."""
    values = dict(max_steps=STEPS, save_steps=3)
    values.update(overrides)
    return make_run(tiny_model_dir, tiny_data, out, "fft", gpus=gpus, **values)


def _torchrun(spec, plan, tmp_path, nproc, env=None, name="spec.json"):
    env = subprocess_env(**{**DS_ENV, **(env or {})})
    proc = run_trainer_cli(write_spec(spec, plan, tmp_path / name), nproc=nproc, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _max_rel_diff(a: dict, b: dict, steps) -> float:
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in steps)


def _train_here(spec, plan):
    """A one-process run without DeepSpeed in this process, on one thread as a subprocess would run it (saves
    the seconds a subprocess spends importing torch and transformers); its result."""
    import torch

    from ftctl.trainer.run import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(spec, plan, echo=lambda line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process_losses(tiny_model_dir, tiny_data, tmp_path_factory):
    """Per-step losses of one process (no DeepSpeed), 2 sequences x 2 accumulation steps."""
    spec, plan = _run(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("one") / "out", save_steps=100)
    assert (plan.world_size, plan.strategy, plan.gradient_accumulation_steps) == (1, "single", 2)
    return losses_by_step(_train_here(spec, plan).output_dir)


# ------------------------------------------------------------------------------------------ strategies
@pytest.mark.slow
def test_zero3_offload_two_processes_match_one_process(tiny_model_dir, tiny_data, tmp_path, one_process_losses):
    """ZeRO-3 with parameters and optimizer states offloaded to CPU RAM (DeepSpeed's CPU Adam), and with
    gradient checkpointing: a block's parameters gathered again for its recompute in the backward (the
    blocks are DeepSpeed leaf modules, distributed.zero3_leaf_blocks). The held-out loss at the end is
    evaluated on both processes' shards of the weights, of two held-out datasets (here the same rows twice: the
    same loss each, and together)."""
    spec, plan = _run(
        tiny_model_dir,
        tiny_data,
        tmp_path / "out",
        gpus="2xcpu",
        strategy="zero3_offload",
        save_steps=100,
        gradient_checkpointing=True,
        eval_data_path=[str(tiny_data), str(tiny_data)],
        eval_steps=STEPS,
    )
    assert plan.gradient_checkpointing
    _torchrun(spec, plan, tmp_path, nproc=2)
    losses = losses_by_step(tmp_path / "out")
    assert list(losses) == list(one_process_losses) == list(range(1, STEPS + 1))
    assert _max_rel_diff(losses, one_process_losses, losses) < 0.01, (losses, one_process_losses)
    assert losses[STEPS] < losses[1]
    assert (tmp_path / "out" / "model.safetensors").is_file()  # gathered from the shards
    records = map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [STEPS] and 0 < evals[0]["eval_loss"] < losses[1]
    each = evals[0]["eval_conversations_loss"], evals[0]["eval_conversations_2_loss"]
    assert each[0] == pytest.approx(each[1], rel=1e-5) and evals[0]["eval_loss"] == pytest.approx(each[0], rel=1e-5)


@pytest.mark.slow
def test_zero2_offload_two_processes_match_one_process(tiny_model_dir, tiny_data, tmp_path, one_process_losses):
    """ZeRO-Offload: ZeRO-2 with the optimizer states (DeepSpeed's CPU Adam) in CPU RAM, the weights kept."""
    from ftctl.trainer.distributed import deepspeed_config

    spec, plan = _run(
        tiny_model_dir, tiny_data, tmp_path / "out", gpus="2xcpu", strategy="zero2_offload", save_steps=100
    )
    zero = deepspeed_config(plan, on_cpu=False)["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero
    proc = _torchrun(spec, plan, tmp_path, nproc=2, env={"FTCTL_CPU_THREADS": "auto"})  # what launchers set
    losses = losses_by_step(tmp_path / "out")
    assert list(losses) == list(one_process_losses) == list(range(1, STEPS + 1))
    assert _max_rel_diff(losses, one_process_losses, losses) < 0.01, (losses, one_process_losses)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    cores = len(os.sched_getaffinity(0))  # CPU Adam's threads: each rank's share, not torchrun's one
    assert f"cpu threads: {max(1, cores // 2)} a process ({cores} cores / 2 on this node" in proc.stdout


@pytest.mark.slow
def test_offloaded_adamw_decays_what_every_other_strategys_does(tiny_model_dir, tiny_data, tmp_path):
    """weight_decay under ZeRO-Offload: DeepSpeed's CPU AdamW over the Trainer's parameter groups, the norms in the
    undecayed one as under every other strategy, and decoupled as AdamW's. Built from the DeepSpeed config's optimizer
    section it took every parameter in one group and decayed the norms too; given to accelerate as DeepSpeed's CPU
    Adam it came back in Adam's L2 mode (the decay added to the gradients), and a 1B fft at weight_decay 0.1 barely
    trained on an H200 (bench/NOTES.md v71). The losses now follow one process's without DeepSpeed."""
    from ftctl.trainer.distributed import deepspeed_config, offloads_optimizer

    decayed = dict(weight_decay=0.1, learning_rate=1e-3, max_steps=4, save_steps=100)
    spec, plan = _run(tiny_model_dir, tiny_data, tmp_path / "out", strategy="zero2_offload", **decayed)
    assert offloads_optimizer(deepspeed_config(plan, on_cpu=True)) and not offloads_optimizer(None)
    groups = tmp_path / "groups.json"
    prelude = (
        "import json\n"
        "from transformers import TrainerCallback\n"
        "class Groups(TrainerCallback):\n"
        "    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):\n"
        "        adam = optimizer.optimizer.optimizer  # accelerate's wrapper, ZeRO's, DeepSpeed's CPU Adam\n"
        "        flat = [sum(p.numel() for p in g['params']) for g in adam.param_groups]\n"
        f"        open({str(groups)!r}, 'w').write(json.dumps([type(adam).__name__, adam.adam_w_mode, [g['weight_decay'] "
        "for g in adam.param_groups], flat]))\n"
        "CALLBACKS = [Groups()]\n"
    )
    proc = run_trainer_cli(
        write_spec(spec, plan, tmp_path / "spec.json"), env=subprocess_env(**DS_ENV), prelude=prelude
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    kind, adamw, decays, sizes = json.loads(groups.read_text())
    assert kind == "DeepSpeedCPUAdam" and adamw and decays == [0.1, 0.0]
    assert sizes[1] >= 5 * 64  # the four layer norms and the final one (ZeRO-2 pads its flat group)
    one, one_plan = _run(tiny_model_dir, tiny_data, tmp_path / "one", **decayed)
    assert one_plan.strategy == "single"
    _train_here(one, one_plan)  # the reference needs no process of its own (one_process_losses: the same)
    offloaded, single = losses_by_step(tmp_path / "out"), losses_by_step(tmp_path / "one")
    assert list(offloaded) == list(single) == [1, 2, 3, 4]
    assert _max_rel_diff(offloaded, single, single) < 1e-3, (offloaded, single)  # Adam's L2: 1.7% at step 4


def test_cpu_threads_share_the_cores_among_the_nodes_processes(monkeypatch):
    import torch

    from ftctl.trainer import distributed

    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's default for several processes, or the user's
    monkeypatch.delenv("FTCTL_CPU_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.cpu_threads() is None and os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun by hand: kept, with a hint
    assert "FTCTL_CPU_THREADS=auto gives each its share of the 32 cores" in distributed.cpu_threads()
    assert os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("FTCTL_CPU_THREADS", "auto")
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    for local, want in (("2", 16), ("8", 4), ("64", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert distributed.cpu_threads().startswith(f"cpu threads: {want} a process (32 cores / {local} on")
        assert os.environ["OMP_NUM_THREADS"] == str(want) and set_to[-1] == want


def test_fsdp_on_cpu_is_refused_not_silently_ddp(tiny_model_dir, tiny_data, tmp_path):
    """accelerate's FSDP2 on CPU runs plain DDP without a word: ftctl refuses it and names the way that
    does shard on CPU; on GPU it configures FSDP2 and checks at the first step that it really sharded."""
    from ftctl.plan import PlanError
    from ftctl.trainer.distributed import Processes, strategy_args

    with pytest.raises(PlanError, match="strategy=fsdp does not run on CPU.*-o strategy=zero3"):  # before the job
        _run(tiny_model_dir, tiny_data, tmp_path, gpus="2xcpu", strategy="fsdp")
    _, plan = _run(tiny_model_dir, tiny_data, tmp_path, gpus="2xA100", strategy="fsdp")
    with pytest.raises(FtctlError, match="strategy=zero3"):  # and the trainer, for a GPU plan on CPU processes
        strategy_args(plan, Processes(0, 0, 2, on_cpu=True))


def test_fsdp_keeps_the_models_outputs_as_computed():
    """accelerate's bf16 policy for FSDP2 casts the root module's outputs (ftctl's fp32 loss sums) to bf16 up to
    1.15 (1.16 leaves them as computed); the trainer takes that cast out of the policy the Trainer's accelerator
    will wrap the model with."""
    import dataclasses
    from types import SimpleNamespace

    import accelerate
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from packaging.version import Version

    from ftctl.trainer.distributed import fsdp_outputs_as_computed

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")  # what accelerate's state does for a bf16 run
    casts = Version(accelerate.__version__) < Version("1.16")  # 1.16 no longer sets output_dtype for FSDP2
    assert plugin.mixed_precision_policy.output_dtype == (torch.bfloat16 if casts else None)
    # the policy accelerate <= 1.15 makes, on any version: the trainer must take the cast out of it
    plugin.mixed_precision_policy = dataclasses.replace(plugin.mixed_precision_policy, output_dtype=torch.bfloat16)
    fsdp_outputs_as_computed(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    policy = plugin.mixed_precision_policy
    assert policy.output_dtype is None
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.bfloat16)
    fsdp_outputs_as_computed(SimpleNamespace(state=SimpleNamespace()))  # no FSDP: nothing to do


def test_the_sharding_check_catches_an_unsharded_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.distributed import check_sharded

    with pytest.raises(FtctlError, match="not sharded"):
        check_sharded(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "fsdp")
    check_sharded(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "ddp")  # nothing to check


def test_zero3_leaf_blocks_are_the_models_unsplittable_blocks_under_zero3_only(tiny_model_dir, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftctl.trainer import distributed
    from ftctl.trainer.distributed import zero3_leaf_blocks

    def leaves(model):
        return [type(m).__name__ for m in model.modules() if getattr(m, "_z3_leaf", False)]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert zero3_leaf_blocks(model, "ddp") == [] and leaves(model) == []
    layers = model.config.num_hidden_layers
    assert zero3_leaf_blocks(model, "zero3") == ["LlamaDecoderLayer"]
    assert leaves(model) == ["LlamaDecoderLayer"] * layers
    # under PEFT: the base model's blocks, LoRA's layers inside them
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(target_modules="all-linear"))
    assert zero3_leaf_blocks(lora, "zero3_offload") == ["LlamaDecoderLayer"]
    assert leaves(lora) == ["LlamaDecoderLayer"] * layers
    # a block over DeepSpeed's live-parameter limit keeps the hooks on each submodule
    monkeypatch.setattr(distributed, "ZERO3_MAX_LIVE", 1000)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert zero3_leaf_blocks(model, "zero3") == [] and leaves(model) == []


# ------------------------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_zero3_resumes_on_another_world_size_and_continues_the_curve(
    tiny_model_dir, tiny_data, tmp_path, one_process_losses
):
    """2 processes write checkpoint-3; 1 process resumes it (universal conversion), stops after step 4 and
    saves; 2 processes resume that one and finish. Every loss stays within 1% of the uninterrupted
    2-process run (the global batch is the same; the per-rank data order may differ). The norms' group stays
    undecayed: DeepSpeed's universal load gives every group the first's settings, weight decay too."""
    straight = tmp_path / "straight"
    decayed = {"weight_decay": 0.1}
    spec, plan = _run(tiny_model_dir, tiny_data, straight, gpus="2xcpu", strategy="zero3", **decayed)
    proc = _torchrun(spec, plan, tmp_path, nproc=2)
    assert "zero3: parameters gathered a block at a time (LlamaDecoderLayer)" in proc.stdout  # one hook a block
    reference = losses_by_step(straight)
    # ZeRO-3 on 2 processes vs 1 process without DeepSpeed, same global batch
    assert _max_rel_diff(reference, one_process_losses, range(1, STEPS + 1)) < 0.01, (reference, one_process_losses)
    assert json.loads((straight / "checkpoint-3" / "ftctl-manifest.json").read_text())["world_size"] == 2

    out = tmp_path / "moved"
    out.mkdir()
    shutil.copytree(straight / "checkpoint-3", out / "checkpoint-3")
    shutil.copy(straight / "metrics.jsonl", out / "metrics.jsonl")
    stop = tmp_path / "stop"
    stop.touch()  # the 1-process run stops after its first step and saves checkpoint-4
    spec1, plan1 = _run(tiny_model_dir, tiny_data, out, strategy="zero3", resume="auto", **decayed)
    assert (plan1.world_size, plan1.gradient_accumulation_steps) == (1, 2)
    decays = tmp_path / "decays.json"
    prelude = (
        "import json\n"
        "from transformers import TrainerCallback\n"
        "class Decays(TrainerCallback):\n"
        "    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):\n"
        f"        open({str(decays)!r}, 'w').write(json.dumps([g['weight_decay'] for g in optimizer.param_groups]))\n"
        "CALLBACKS = [Decays()]\n"
    )
    env = subprocess_env(**DS_ENV, FTCTL_STOP_FILE=stop)
    proc = run_trainer_cli(write_spec(spec1, plan1, tmp_path / "spec1.json"), env=env, prelude=prelude)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert json.loads(decays.read_text()) == [0.1, 0.0]
    assert (out / "checkpoint-3" / "global_step3_universal").is_dir()
    assert (out / "checkpoint-3" / "latest_universal").read_text() == "global_step3_universal"
    manifest = json.loads((out / "checkpoint-4" / "ftctl-manifest.json").read_text())
    assert (manifest["step"], manifest["world_size"]) == (4, 1)
    assert not (out / "model.safetensors").exists()  # preempted, not finished

    stop.unlink()
    spec2, plan2 = _run(tiny_model_dir, tiny_data, out, gpus="2xcpu", strategy="zero3", resume="auto", **decayed)
    _torchrun(spec2, plan2, tmp_path, nproc=2, name="spec2.json")
    assert (out / "checkpoint-4" / "global_step4_universal").is_dir()  # 1 -> 2 converted too
    resumed = losses_by_step(out)
    assert list(resumed) == list(range(1, STEPS + 1))
    assert _max_rel_diff(resumed, reference, range(4, STEPS + 1)) < 0.01, (resumed, reference)
    assert (out / "model.safetensors").is_file()


def test_same_world_size_needs_no_conversion(tmp_path):
    from ftctl.trainer.distributed import Processes
    from ftctl.trainer.reshard import prepare, saved_world_size

    ckpt = tmp_path / "checkpoint-2"
    (ckpt / "global_step2").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step2")
    for rank in (0, 1):
        (ckpt / "global_step2" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert saved_world_size(str(ckpt)) == 2  # no manifest: DeepSpeed's rank files say it

    class Plan:
        strategy = "zero3"

    assert prepare(str(ckpt), Plan, Processes(0, 0, 2, on_cpu=True)) is False
    Plan.strategy = "ddp"
    assert prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True)) is False  # not a DeepSpeed run
    assert prepare(None, Plan, Processes(0, 0, 1, on_cpu=True)) is False


def test_optimizer_steps_follow_their_parameters_after_a_universal_load():
    """DeepSpeed's universal load leaves ``step`` on the CPU; fused AdamW on a GPU refuses that (seen on an
    H200 at the first step after a ZeRO-3 2 -> 1 resume). The meta device stands in for the GPU here."""
    import torch

    from ftctl.trainer.reshard import steps_on_device

    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    inner = torch.optim.AdamW([p])
    inner.state[p] = {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3, device="meta")}

    class Wrapper:  # accelerate's and DeepSpeed's optimizers hold the next one as .optimizer
        state: dict = {}

    outer = Wrapper()
    outer.optimizer = inner
    assert steps_on_device(outer) == 1
    assert inner.state[p]["step"].device.type == "meta"
    assert steps_on_device(outer) == 0  # already there


def _offload_checkpoint(ckpt, config_optimizer: bool, stage: int = 2):
    """A ZeRO checkpoint of 2 processes, converted to DeepSpeed's universal one already (reshard.to_universal
    reuses it): the model states' config, its schedule, the optimizer's settings of one parameter group."""
    import torch

    tag = ckpt / "global_step2"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text("global_step2")
    for rank in (0, 1):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    config = {"zero_optimization": {"stage": stage, "offload_optimizer": {"device": "cpu"}}}
    if config_optimizer:  # what ftctl's offload strategies gave DeepSpeed before 2674431
        config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}}
    schedule = {"base_lrs": [1e-3], "last_epoch": 2, "_last_lr": [5e-4], "lr_lambdas": [{}]}
    torch.save({"ds_config": config, "lr_scheduler": schedule, "module": {}}, tag / "mp_rank_00_model_states.pt")
    zero = ckpt / "global_step2_universal" / "zero"
    zero.mkdir(parents=True)
    group = {"lr": 5e-4, "weight_decay": 0.1, "initial_lr": 1e-3, "params": [0]}
    torch.save({"zero_stage": stage, "param_groups": [group]}, zero / "optimizer_state.pt")
    (ckpt / "latest_universal").write_text("global_step2_universal")
    return zero / "optimizer_state.pt"


def test_an_old_offload_checkpoint_resumes_into_the_trainers_two_groups(tmp_path):
    """An ftctl before 2674431 had DeepSpeed build the offload strategies' optimizer from its config: one group of
    every parameter, and the schedule in DeepSpeed's state. Its ZeRO shards do not load into the Trainer's two
    groups (DeepSpeed's traceback: "parameter-alignment layout does not match" under ZeRO-2, "a different number of
    parameter groups" under ZeRO-3), so it resumes through the universal checkpoint, whose states are a parameter's
    each: given two groups (ZeRO-2 loads them group by group), the second without weight decay. A 2-process
    zero2_offload and zero3_offload checkpoint of that ftctl resumed so (on an older commit by hand): every
    optimizer state carried over (the exp_avg sums of both ranks equal), the losses within 1e-4 of the old
    ftctl's own resume."""
    import torch

    from ftctl.trainer.distributed import Processes
    from ftctl.trainer.reshard import prepare, saved_schedule
    from ftctl.trainer.sft_trainer import each_group

    class Plan:
        strategy = "zero2_offload"

    old = tmp_path / "old" / "checkpoint-2"
    state = _offload_checkpoint(old, config_optimizer=True)
    assert prepare(str(old), Plan, Processes(0, 0, 2, on_cpu=True)) is True  # the same world size
    groups = torch.load(state, weights_only=False)["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[1]["initial_lr"] == 1e-3
    assert prepare(str(old), Plan, Processes(0, 0, 2, on_cpu=True)) is True  # resumed again: split once
    assert len(torch.load(state, weights_only=False)["param_groups"]) == 2
    schedule = saved_schedule(str(old))  # no scheduler.pt: DeepSpeed ran it
    assert each_group(schedule, 2) == {
        **schedule,
        "base_lrs": [1e-3] * 2,
        "_last_lr": [5e-4] * 2,
        "lr_lambdas": [{}, {}],
    }

    Plan.strategy = "zero3_offload"  # ZeRO-3 loads its states whatever the groups: its large file left as it is
    stage3 = _offload_checkpoint(tmp_path / "old3" / "checkpoint-2", config_optimizer=True, stage=3)
    assert prepare(str(stage3.parents[2]), Plan, Processes(0, 0, 2, on_cpu=True)) is True
    assert len(torch.load(stage3, weights_only=False)["param_groups"]) == 1

    Plan.strategy = "zero2_offload"  # this ftctl's own checkpoint: DeepSpeed loads its shards as they are
    new = tmp_path / "new" / "checkpoint-2"
    state = _offload_checkpoint(new, config_optimizer=False)
    assert prepare(str(new), Plan, Processes(0, 0, 2, on_cpu=True)) is False
    assert len(torch.load(state, weights_only=False)["param_groups"]) == 1


def test_a_failed_conversion_says_how_to_resume(tmp_path):
    from ftctl.trainer.distributed import Processes
    from ftctl.trainer.reshard import prepare

    ckpt = tmp_path / "checkpoint-2"
    (ckpt / "global_step2").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step2")
    for rank in (0, 1):  # not real shards
        (ckpt / "global_step2" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"junk")

    class Plan:
        strategy = "zero3"

    with pytest.raises(FtctlError, match="resume on the number of processes that wrote it"):
        prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True))
    assert not (ckpt / "global_step2_universal").exists() and not (ckpt / "latest_universal").exists()


def _printed_by_two_ranks(tmp_path, code: str) -> list:
    """Run ``code`` on 2 gloo processes (torchrun); the JSON lists the ranks printed, in output order."""
    script = tmp_path / "two_ranks.py"
    script.write_text(code)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--tee=1"]
    proc = subprocess.run(
        [*cmd, str(script)], env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line.split("]:", 1)[1]) for line in proc.stdout.splitlines() if "]:[" in line]


STOP_VOTE = """
import json, os, sys
import torch.distributed as dist
from ftctl.trainer.distributed import StopVote
dist.init_process_group("gloo")
rank = dist.get_rank()
flags = [False, rank == 1, rank == 1, False]  # rank 1 is asked to stop at its second step
vote = StopVote()
decided = [vote(f) for f in flags]
print(json.dumps(decided))
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def two_rank_rows(tmp_path_factory) -> tuple[list, list]:
    """STOP_VOTE's rows, then FSDP_GRAD_NORM's, printed by the same 2 gloo processes: one torchrun for both tests (each
    ~10 s of two processes importing torch on 2 cores, for well under a second of work)."""
    both = STOP_VOTE.replace("dist.destroy_process_group()\n", "") + FSDP_GRAD_NORM.replace(
        'dist.init_process_group("gloo")\n', ""
    )
    # each process leaves by os._exit once it has printed: torch 2.13's gloo processes here aborted in the interpreter's
    # finalization, after the script's last line and destroy_process_group ("terminate called without an active
    # exception", no Python frame left: PYTHONFAULTHANDLER), about 1 run in 20 on 2 busy cores (a CI run lost both
    # tests to it), with the FSDP2 modules and their mesh still held by the script's globals
    rows = _printed_by_two_ranks(
        tmp_path_factory.mktemp("two-ranks"), both + "import os, sys\nsys.stdout.flush()\nos._exit(0)\n"
    )
    votes = [row for row in rows if all(isinstance(x, bool) for x in row)]
    return votes, [row for row in rows if row not in votes]


def test_the_stop_vote_decides_on_every_rank_one_step_after_the_request(two_rank_rows):
    """distributed.StopVote: each step's vote comes back at the next step, the same on every rank."""
    votes, _ = two_rank_rows
    assert votes == [[False, False, True, True]] * 2
    from ftctl.trainer.distributed import StopVote

    assert StopVote()(True) is True  # one process: at once


FSDP_GRAD_NORM = """
import json
from collections import OrderedDict
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from ftctl.trainer.distributed import adapter_state_dict, to_host_later
dist.init_process_group("gloo")
torch.manual_seed(0)
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
layer = torch.nn.Linear(8, 8)
fully_shard(layer, mesh=mesh)
layer(torch.randn(4, 8)).square().sum().backward()
norm = torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
host = to_host_later(torch.stack([torch.zeros((), dtype=torch.float64), norm.double()]))()
# a frozen projection beside its trainable LoRA pair in each block, sharded per block (strategy=fsdp's lora run), between
# a frozen embedding and a frozen LM head tied to it (tie_word_embeddings)
def tied_lora(seed):
    torch.manual_seed(seed)
    embed, head = torch.nn.Embedding(32, 16).requires_grad_(False), torch.nn.Linear(16, 32, bias=False)
    head.weight = embed.weight
    blocks = [torch.nn.Sequential(OrderedDict(
        base_layer=torch.nn.Linear(16, 16).requires_grad_(False),
        lora_A=torch.nn.Linear(16, 2, bias=False),
        lora_B=torch.nn.Linear(2, 16, bias=False),
    )) for _ in range(3)]
    model = torch.nn.Sequential(embed, *blocks, head)
    expected = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, expected
lora, expected = tied_lora(0)
adapter = adapter_state_dict(lora)
# what a resume does with it (accelerate's load_fsdp_model(adapter_only=True) on 2 processes): rank 0's file into
# a fresh model, broadcast from rank 0, the keys it lacks left as they are
fresh, _ = tied_lora(1)
head = fresh[-1].weight.full_tensor().clone()
options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=True, strict=False)
set_model_state_dict(fresh, dict(adapter) if dist.get_rank() == 0 else {}, options=options)  # it fills in the dict
loaded = adapter_state_dict(fresh)
gathered = {
    "rank": dist.get_rank(),
    "keys": sorted(adapter),
    "same": all(k in expected and torch.equal(adapter[k], expected[k]) and type(adapter[k]) is torch.Tensor for k in adapter),
    "loaded": loaded.keys() == adapter.keys() and all(torch.equal(loaded[k], adapter[k]) for k in adapter),
    "head_kept": torch.equal(fresh[-1].weight.full_tensor(), head) and fresh[-1].weight is fresh[0].weight,
}
print(json.dumps([isinstance(norm, DTensor), type(host).__name__, host[1].item(), norm.full_tensor().item(), gathered]))
dist.destroy_process_group()
"""


def test_fsdp2s_gradient_norm_reaches_the_host_as_a_plain_value(two_rank_rows):
    """Regression (bench/NOTES.md v19, two H200s): under FSDP2 the gradient norm is a DTensor; the deferred log stacked it with
    the loss and copied the stack into pinned memory: "aten.copy_.default got mixed torch.Tensor and DTensor"
    at the first step. to_host_later hands back its full value as a plain tensor. In the same processes, a lora run's
    adapter under FSDP2 (distributed.adapter_state_dict, what sft_trainer.save_model saves): its trainable weights
    whole, as plain tensors, on rank 0 only, without the frozen base transformers' save gathered there too, nor the
    frozen LM head tied to the embedding (torch's get_model_state_dict(ignore_frozen_params=True) kept it: bench/NOTES.md
    v82), and loaded back as a resume on 2 processes loads it (broadcast from rank 0, strict=False)."""
    _, rows = two_rank_rows  # printed by the processes of the stop vote's test, after its vote
    assert len(rows) == 2
    for is_dtensor, host_type, on_host, full, _ in rows:
        assert is_dtensor and host_type == "Tensor" and on_host == pytest.approx(full) and full > 0
    first, second = sorted((row[-1] for row in rows), key=lambda gathered: gathered["rank"])
    assert first["same"] and len(first["keys"]) == 6 and all(".lora_" in k for k in first["keys"])  # no tied head
    assert second["keys"] == []
    assert first["loaded"] and first["head_kept"] and second["head_kept"]  # as a resume loads it


# ------------------------------------------------------------------------------------------ preemption
SIGNAL_RUNNER = """
import json, os, signal, sys
from pathlib import Path
from transformers import TrainerCallback
import ftctl.trainer.run as run

MODE, OUT = sys.argv[1], Path(sys.argv[2])
RANK = int(os.environ["RANK"])

class Trigger(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 2:
            return
        if MODE == "usr2-one-rank" and RANK == 1:
            os.kill(os.getpid(), signal.SIGUSR2)   # only rank 1 is told
        elif MODE in ("sigterm-torchrun", "sigterm-ftctl-torchrun") and RANK == 0:
            os.kill(os.getppid(), signal.SIGTERM)  # torchrun forwards it to every rank; ftctl's, the stop file
        elif MODE == "stop-file" and RANK == 0:
            Path(os.environ["FTCTL_STOP_FILE"]).touch()

    def on_train_end(self, args, state, control, **kwargs):
        (OUT.parent / f"rank{RANK}.json").write_text(json.dumps({"step": state.global_step}))

train = run.train
run.train = lambda spec, plan, callbacks=(), echo=print: train(spec, plan, [*callbacks, Trigger()], echo)
from ftctl.trainer.__main__ import main
sys.exit(main(["--spec", sys.argv[3]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["usr2-one-rank", "sigterm-torchrun", "stop-file", "sigterm-ftctl-torchrun"])
def test_every_rank_saves_the_same_step_when_stopped(tiny_model_dir, tiny_data, tmp_path, mode):
    """DDP on 2 processes: however the stop arrives (one rank signalled, torchrun terminated, the stop
    file, ftctl's torchrun terminated), both ranks stop after the same step and write their parts of one
    checkpoint. ftctl's torchrun (every backend's launch line) does not signal its workers, which torchrun kills
    30 s later, often mid-save: it asks them through a stop file of its own (the job set none here)."""
    out = tmp_path / "out"
    spec, plan = _run(tiny_model_dir, tiny_data, out, gpus="2xcpu", max_steps=200, save_steps=1000)
    spec_path = write_spec(spec, plan, tmp_path / "spec.json")
    runner = tmp_path / "runner.py"
    runner.write_text(SIGNAL_RUNNER)
    env = subprocess_env(FTCTL_STOP_FILE=tmp_path / "stop", FTCTL_STATUS_FILE=tmp_path / "status")
    torchrun = "torch.distributed.run"
    if mode == "sigterm-ftctl-torchrun":
        torchrun = "ftctl.trainer.torchrun"
        del env["FTCTL_STOP_FILE"]
    cmd = [sys.executable, "-m", torchrun, "--standalone", "--nproc-per-node=2", str(runner)]
    proc = subprocess.run(
        [*cmd, mode, str(out), str(spec_path)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if mode == "sigterm-ftctl-torchrun":
        assert proc.returncode == 143 and "ftctl: torchrun: stopped by SIGTERM: the workers saved" in proc.stderr, (
            proc.stderr
        )
        assert "exists: saving a checkpoint at the next step" in proc.stderr, proc.stderr[-4000:]
        assert "SIGTERM received" not in proc.stderr  # no worker was signalled
    elif mode != "sigterm-torchrun":  # torchrun itself exits non-zero when it is terminated
        assert proc.returncode == 0, proc.stderr[-4000:]

    steps = {json.loads((tmp_path / f"rank{r}.json").read_text())["step"] for r in (0, 1)}
    assert len(steps) == 1, proc.stderr[-4000:]
    step = steps.pop()
    assert 2 <= step < 200
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    ckpt = out / f"checkpoint-{step}"
    manifest = json.loads((ckpt / "ftctl-manifest.json").read_text())
    assert (manifest["step"], manifest["world_size"]) == (step, 2)
    listed = {f["path"] for f in manifest["files"]}
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "model.safetensors"} <= listed
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == step
    assert (tmp_path / "status").read_text().strip() == "preempted"


# ------------------------------------------------------------------------------------------ network
def test_bus_bandwidth_is_nccl_tests_convention():
    from ftctl.trainer.netcheck import bus_bandwidth

    assert bus_bandwidth(10**9, 1.0, 2) == (1.0, 1.0)
    assert bus_bandwidth(10**9, 0.5, 8) == (2.0, 3.5)  # algbw x 2(n-1)/n


def test_nccl_choice_is_read_from_its_info_log():
    from ftctl.trainer.netcheck import parse_nccl_log

    log = "\n".join(
        [
            "node1:123:123 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB eth0:10.0.0.1<0>",
            "node1:123:123 [0] NCCL INFO Using network IB",
            "node1:123:130 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read",
            "node1:123:130 [0] NCCL INFO Channel 01/0 : 7[7] -> 8[0] [send] via NET/IB/0(8)/GDRDMA",
        ]
    )
    found = parse_nccl_log(log)
    assert found["network"] == "IB"
    assert found["interface"].startswith("[0]mlx5_0:1/IB") and found["interface"].endswith("(IB)")
    assert found["transports"] == ["NET/IB", "P2P/CUMEM"]
    assert parse_nccl_log("") == {"network": None, "interface": None, "transports": []}


def _doctor_network(*args, where=("--gpus", "cpu", "--nodes", "2")):
    ftctl = str(Path(sys.executable).parent / "ftctl")
    return subprocess.run(
        [ftctl, "doctor", "--network", *where, *args],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_doctor_network_all_reduces_across_two_processes_and_enforces_a_floor():
    proc = _doctor_network()
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("netcheck: 2 processes"))
    assert "(gloo)" in line and float(line.split("busbw ")[1].split()[0]) > 0
    assert "netcheck: gloo network gloo/tcp, interface " in proc.stdout

    proc = _doctor_network("--min-busbw-gbps", "100000")
    assert proc.returncode == 3  # as --help says; torchrun's own failure report held back
    assert "netcheck: FAILED: bus bandwidth" in proc.stderr and "lower --min-busbw-gbps." in proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    # what it cannot measure here is refused: GPUs this machine lacks, one process
    refused = _doctor_network(where=("--gpus", "8xA100"))
    assert refused.returncode == 2 and refused.stderr.startswith("error: --gpus 8xA100: this machine has no GPU")
    alone = _doctor_network(where=("--gpus", "cpu"))
    assert alone.returncode == 2 and "an all-reduce needs two to measure" in alone.stderr


def test_the_preflight_runs_the_probe_in_the_training_steps_shape(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.slurm.render import render

    spec, plan = _run(tiny_model_dir, tiny_data, tmp_path / "out", gpus="cpu", nodes=2, preflight_network=True)
    lines = render(spec, plan).splitlines()
    probe = next(i for i, x in enumerate(lines) if "-m ftctl.trainer.netcheck" in x)
    train = next(i for i, x in enumerate(lines) if "-m ftctl.trainer --spec" in x)
    trap = next(i for i, x in enumerate(lines) if x.startswith("trap on_signal USR2"))
    assert trap < probe < train
    shape = lines[train].split(" -m ftctl.trainer")[0].replace(f"--rdzv-id {spec.name}", "")
    assert lines[probe].split(" -m ftctl.trainer")[0].replace(f"--rdzv-id {spec.name}-netcheck", "") == shape
    # on CPU it checks that the processes meet; the exit status is kept under set -e too
    assert lines[probe].endswith("--min-busbw-gbps 0' || PREFLIGHT_RC=$?")
    assert '  exit "$PREFLIGHT_RC"' in lines[probe:train]

    spec, plan = _run(tiny_model_dir, tiny_data, tmp_path / "out", gpus="cpu", nodes=2)
    assert "netcheck" not in render(spec, plan)


def test_bf16_all_reduce_sets_accelerates_comm_hook_on_the_trainers_ddp_handler():
    """-o ddp_comm_dtype=bf16 (GPU only: torch's hook refuses CPU builds, plan.py refuses it on CPU): the hook is
    set on the handler the Trainer built (keeping its other settings), or on a new one."""
    from types import SimpleNamespace

    from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs

    from ftctl.trainer.distributed import all_reduce_in_bf16

    built = DistributedDataParallelKwargs(gradient_as_bucket_view=True, bucket_cap_mb=100)
    accelerator = SimpleNamespace(ddp_handler=built)
    all_reduce_in_bf16(accelerator)
    assert accelerator.ddp_handler is built and built.comm_hook == DDPCommunicationHookType.BF16
    assert built.gradient_as_bucket_view and built.bucket_cap_mb == 100
    bare = SimpleNamespace(ddp_handler=None)
    all_reduce_in_bf16(bare)
    assert bare.ddp_handler.comm_hook == DDPCommunicationHookType.BF16
