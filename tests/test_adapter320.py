"""Helper 320: lora_model_dir (a run's adapters start from an earlier adapter's weights, its optimizer fresh) under
several processes, and relaunched into an output whose checkpoints started from another adapter.

The multi-process runs are torchrun's over gloo on CPU: DDP as ftctl runs 2xcpu, FSDP2 through
trainer_fixtures.FSDP_ON_GLOO (accelerate runs FSDP on GPUs only), as the suite's other FSDP tests do."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest

from tests.trainer_fixtures import FSDP_ON_GLOO, REPO, losses_by_step, make_run, subprocess_env, write_spec

SMALL = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": "q_proj,v_proj", "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """An adapter of the tiny model (r 4 on q_proj, v_proj) as PEFT saves one, its B weights far from PEFT's zero
    init, so that a run that starts from it has another first loss than one with fresh adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("adapter320") / "first"
    model.save_pretrained(path)
    return path


# both strategies' runs, one after the other in the same 2 processes (torch imported once: one torchrun's start, ~30 s
# of the suite, spared), each with the environment it was launched with (TrainingArguments sets FSDP's variables)
_EACH_RUN = """
import os, sys
from ftctl.plan import load_run
from ftctl.trainer.run import train
launched = dict(os.environ)
for path in sys.argv[1:]:
    os.environ.clear()
    os.environ.update(launched)
    assert train(*load_run(path)).status == "complete"
"""
STRATEGIES = ("ddp", "fsdp")  # ddp first: FSDP_ON_GLOO leaves accelerate's shared state FSDP's


@pytest.fixture(scope="module")
def first_losses(adapter, tiny_model_dir, tiny_data, tmp_path_factory) -> dict:
    """The first step's loss of a 1-step lora run started from the adapter on 2 processes (torchrun, gloo), under DDP
    and under FSDP2, by strategy."""
    tmp_path = tmp_path_factory.mktemp("two320")
    values = {"max_steps": 1, "save_steps": 100, "logging_steps": 1, **SMALL, "lora_model_dir": str(adapter)}
    specs = []
    for strategy in STRATEGIES:
        spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / strategy, "lora", gpus="2xcpu", **values)
        plan = dataclasses.replace(plan, strategy=strategy)  # fsdp: refused on CPU (see FSDP_ON_GLOO)
        specs.append(str(write_spec(spec, plan, tmp_path / f"{strategy}.json")))
    script = tmp_path / "each_run.py"
    script.write_text(FSDP_ON_GLOO + _EACH_RUN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run([*torchrun, str(script), *specs], env=subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {strategy: losses_by_step(tmp_path / strategy)[1] for strategy in STRATEGIES}


@pytest.fixture(scope="module")
def one_process(adapter, tiny_model_dir, tiny_data, tmp_path_factory) -> dict:
    """The first step's loss on 1 process, in this one: started from the adapter, and with fresh adapters (runs
    "adapter" and "fresh" in its "runs" directory, a checkpoint-1 each)."""
    import torch

    from ftctl.trainer.run import train

    before, out = torch.get_num_threads(), tmp_path_factory.mktemp("one320")
    torch.set_num_threads(1)
    try:
        for name, given in (("adapter", {"lora_model_dir": str(adapter)}), ("fresh", {})):
            values = {"max_steps": 1, "save_steps": 1, "logging_steps": 1, **SMALL, **given}
            assert train(*make_run(tiny_model_dir, tiny_data, out / name, "lora", **values)).status == "complete"
    finally:
        torch.set_num_threads(before)
    return {"runs": out, **{name: losses_by_step(out / name)[1] for name in ("adapter", "fresh")}}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_process_starts_from_the_adapter(strategy, one_process, first_losses):
    """The first step's loss of a run started from the adapter on 2 processes (DDP; FSDP2, each rank a shard) is the
    1-process run's: every rank's adapters hold the adapter's weights, none PEFT's fresh init (whose loss differs)."""
    two = first_losses[strategy]
    assert abs(one_process["adapter"] - one_process["fresh"]) > 0.02, one_process
    assert two == pytest.approx(one_process["adapter"], abs=1e-5), (two, one_process)


def test_a_relaunch_that_names_another_adapter_is_refused(one_process, adapter, tiny_model_dir, tiny_data, tmp_path):
    """A relaunch into an output whose checkpoints started from adapter A, naming adapter B (or naming one where they
    started with new adapters), resumed the checkpoint and never read B, with no word: the launch's preflight and the
    trainer (`ftctl train`, a job) now refuse it, offering another --output. The same adapter, or none named, goes on."""
    from ftctl.errors import FtctlError
    from ftctl.preflight import ERROR, check_resume
    from ftctl.trainer.run import train

    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    runs = one_process["runs"]

    def relaunch(name, **given):
        values = {"max_steps": 2, "save_steps": 1, "logging_steps": 1, "resume": "auto", **SMALL, **given}
        return make_run(tiny_model_dir, tiny_data, runs / name, "lora", **values)

    for name, given, started in (
        ("adapter", other, f"from the adapter lora_model_dir={adapter}"),
        ("fresh", adapter, "with new adapters (no lora_model_dir)"),
    ):
        checkpoint = f"{runs / name}/checkpoint-1"
        said = (
            f"{checkpoint} is of a run that started {started}; this launch names lora_model_dir={given}, which it "
            "would not read: it would resume checkpoint-1, its adapters' weights, optimizer and schedule. To start "
            "from that adapter, give another --output; to go on with this run, "
        )
        found = check_resume(*relaunch(name, lora_model_dir=str(given)))
        assert [f.level for f in found] == [ERROR] and found[0].what.startswith(said), found
        with pytest.raises(FtctlError) as e:  # the trainer's own check: `ftctl train`, a job launched before
            train(*relaunch(name, lora_model_dir=str(given)), echo=lambda *_: None)
        assert str(e.value).startswith(said), str(e.value)
    keep = f"relaunch with lora_model_dir: {adapter} in the run file (or without it)."
    assert found[0].what.endswith("leave lora_model_dir out.") and str(e.value).endswith("leave lora_model_dir out.")
    assert check_resume(*relaunch("adapter", lora_model_dir=str(other)))[0].what.endswith(keep)
    for given in ({"lora_model_dir": str(adapter)}, {}):  # its own adapter again, or none: it goes on
        assert ERROR not in [f.level for f in check_resume(*relaunch("adapter", **given))]
