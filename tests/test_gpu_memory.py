"""Out of GPU memory (ftctl/trainer/gpu_memory.py): PyTorch's message read, and the plan the one-line error
offers, checked against the planner itself. A GPU cannot run out of memory here: the error is PyTorch's own
text (as one H200 printed it, bench/NOTES.md v44) raised at the trainer's outermost boundary."""

from __future__ import annotations

import re

import pytest
import torch

from ftctl.plan import make_plan, within
from ftctl.spec import build
from ftctl.trainer import gpu_memory

GIB = 2**30 / 1e9


def oom(total_gib: float, free_gib: float, this_gib: float, asked_gib: float = 1.96) -> torch.OutOfMemoryError:
    """PyTorch's CUDA allocator's message (torch 2.11 on an H200, bench/results/2026-12-02-h200-oom-v44.json),
    with the numbers given."""
    return torch.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {asked_gib:.2f} GiB. GPU 0 has a total capacity of {total_gib:.2f} GiB "
        f"of which {free_gib:.2f} GiB is free. Including non-PyTorch memory, this process has {this_gib:.2f} GiB "
        "memory in use. Of the allocated memory 70.02 GiB is allocated by PyTorch, and 1.51 GiB is reserved by "
        "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-"
        "alloc-conf)"
    )


def _run(method="lora", gpus="1xH100", **values):
    spec = build(
        {
            "method": method,
            "gpus": gpus,
            "model_name_or_path": "meta-llama/Llama-3.1-8B",
            "data_path": "/d/train.json",
            "output_dir": "/o",
            **values,
        }
    )
    return spec, make_plan(spec)


def _relaunched(spec, line: str):
    """The plan of ``spec`` relaunched with the ``-o KEY=VALUE`` the message names."""
    flags = dict(re.findall(r"-o (\w+)=(\S+)", line))
    assert flags, line
    values = {k: v for k, v in spec.to_dict().items() if v is not None}
    return make_plan(build({**values, **flags}))


def test_reads_pytorch_message():
    h200 = gpu_memory.card(
        "CUDA out of memory. Tried to allocate 372.53 GiB. GPU 0 has a total capacity of 139.80 GiB of which 139.29 "
        "GiB is free. Including non-PyTorch memory, this process has 518.00 MiB memory in use. Of the allocated memory "
        "0 bytes is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated."
    )
    assert (h200.total, h200.this_process, h200.asked) == pytest.approx((150.11, 0.543, 400.0), abs=0.01)
    c = gpu_memory.card(str(oom(79.19, 0.5, 78.1, asked_gib=2.0)))
    assert c.gpu == "GPU 0"
    assert c.total == pytest.approx(79.19 * GIB) and c.asked == pytest.approx(2.0 * GIB)
    assert c.this_process == pytest.approx(78.1 * GIB) and c.others == pytest.approx(0.59 * GIB, abs=0.01)
    assert gpu_memory.card("CUDA error: out of memory") is None
    assert gpu_memory.is_out_of_memory(oom(80, 1, 79))
    assert gpu_memory.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not gpu_memory.is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    "method,gpus,values,missed",
    [
        ("lora", "1xH100", {}, 1.15),
        ("qlora", "1xA10G", {}, 1.15),
        ("fft", "2xH100", {"model_name_or_path": "meta-llama/Llama-3.2-1B"}, 1.15),
        ("lora", "1xH100", {"per_device_train_batch_size": 4, "gradient_checkpointing": False}, 1.15),  # forced: freed
        # checkpointing alone would let the planner take micro-batch 8 again on the whole card: the batch is named too
        ("sft", "4xL4", {"model_name_or_path": "meta-llama/Llama-3.2-1B"}, 1.6),
    ],
)
def test_the_offered_plan_is_the_planners_and_needs_less(method, gpus, values, missed):
    spec, plan = _run(method, gpus, **values)
    total = plan.gpu_memory_gb / GIB
    this = min(missed * plan.memory_gb / GIB, total - 0.2)  # what it held when it ran out, at most the card
    exc = oom(total, total - this - 0.1, this)
    line = gpu_memory.message(exc, spec, plan)
    assert line.startswith(f"out of memory on GPU 0 ({gpu_memory.card(str(exc)).total:.1f} GB): this process held ")
    miss = (this + 1.96) * GIB / plan.memory_gb
    assert f"; {miss:.1f}x the plan's estimate of {plan.memory_gb:.1f} GB." in line and "other processes" not in line
    new = _relaunched(spec, line)
    # the planner's own plan, estimated to fit the card even if its estimate misses by as much again
    assert new.memory_gb * miss <= 0.92 * plan.gpu_memory_gb + 0.01 and new.memory_gb < plan.memory_gb
    assert f"estimated {new.memory_gb:.1f} GB" in line
    assert f"global batch stays {plan.global_batch_size}" in line and new.global_batch_size == plan.global_batch_size


def test_other_processes_memory_is_named_and_left_out():
    spec, plan = _run("lora", "1xH100")
    total, others = plan.gpu_memory_gb / GIB, 20.0
    this = total - others - 0.3  # stopped before its estimated peak: the card was not the run's
    line = gpu_memory.message(oom(total, total - others - this, this), spec, plan)
    assert f"other processes held {others * GIB:.1f} GB" in line, line
    new = _relaunched(spec, line)
    assert new.memory_gb <= 0.92 * (plan.gpu_memory_gb - others * GIB)


def test_no_plan_fits_what_is_left():
    spec, plan = _run("fft", "2xH100", model_name_or_path="meta-llama/Llama-3.2-1B")
    total = plan.gpu_memory_gb / GIB
    line = gpu_memory.message(oom(total, 0.1, 2.0), spec, plan)  # others hold all but 2 GiB
    assert "No plan of fft on 2xH100 is estimated to fit in 2.1 GB: free the card, or use more GPUs" in line, line
    assert "--method lora, or a shorter" in line, line
    assert within(spec, plan, 1.0) is None
    spec, plan = _run("qlora", "1xH100", model_name_or_path="meta-llama/Llama-3.2-1B")  # nothing is lighter
    line = gpu_memory.message(oom(plan.gpu_memory_gb / GIB, 0.1, 0.5), spec, plan)
    assert "No plan of qlora" in line and "--method" not in line, line


def test_an_error_without_numbers_offers_a_leaner_plan():
    spec, plan = _run("lora", "1xH100")
    line = gpu_memory.message(RuntimeError("CUDA error: out of memory\nCUDA kernel errors..."), spec, plan)
    assert line.startswith("out of GPU memory (CUDA error: out of memory); the plan estimated")
    assert _relaunched(spec, line).memory_gb <= 0.8 * plan.memory_gb


def test_a_run_with_a_checkpoint_is_offered_a_plan_that_resumes_it(tmp_path):
    """13B qlora on an A10G that other processes hold 10.25 GB of: the planner's leaner plan would take bitsandbytes'
    paged 8-bit AdamW, whose states a checkpoint saved with fused AdamW's cannot continue (the relaunch's resume
    would be refused). Once the output holds a checkpoint, the offer keeps the optimizer and finds the memory in
    the batch instead."""
    from ftctl.checkpoints import write_manifest
    from ftctl.trainer.run import holds_checkpoint

    spec, plan = _run("qlora", "1xA10G", output_dir=str(tmp_path / "run"), model_name_or_path="lmsys/vicuna-13b-v1.5")
    assert plan.optim == "adamw_torch_fused"
    total, others, this = plan.gpu_memory_gb / GIB, 10.25 / GIB, 10 / GIB
    exc = oom(total, total - others - this, this)
    assert _relaunched(spec, gpu_memory.message(exc, spec, plan)).optim == "paged_adamw_8bit"

    assert not holds_checkpoint(spec)
    ckpt = tmp_path / "run" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 5}')
    assert not holds_checkpoint(spec)  # no manifest: not a checkpoint a relaunch resumes
    write_manifest(str(ckpt), 5, 1, "abc")
    assert holds_checkpoint(spec)
    line = gpu_memory.message(exc, spec, plan, holds_checkpoint(spec))
    new = _relaunched(spec, line)
    assert new.optim == plan.optim and new.memory_gb < plan.memory_gb, line
    assert new.global_batch_size == plan.global_batch_size
