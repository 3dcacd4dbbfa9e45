"""The plan's note for a full fine-tune under FSDP2 that evaluates held-out data (bench/NOTES.md v91-v94: on one
H100 such a run died at the step after an evaluation and a checkpoint of one step; ZeRO-3 trained the same)."""

import pytest

from ftctl.plan import make_plan
from ftctl.spec import build

BIG_FFT = {"method": "fft", "gpus": "2xH100", "model_params": "8b"}  # the planner's own choice: FSDP2


def said(settings: dict) -> list[str]:
    return [n for n in make_plan(build(settings)).notes if n.startswith("strategy=fsdp with held-out evaluations")]


def test_an_fft_sharded_by_fsdp_that_evaluates_is_told_of_zero3():
    plan = make_plan(build({**BIG_FFT, "eval_split": 0.05}))
    assert plan.strategy == "fsdp"
    (note,) = said({**BIG_FFT, "eval_split": 0.05})
    assert "-o strategy=zero3" in note and "several GPUs not yet tried" in note


@pytest.mark.parametrize(
    "settings",
    [
        BIG_FFT,  # nothing held out: no evaluation
        {**BIG_FFT, "eval_split": 0.05, "strategy": "zero3"},
        {**BIG_FFT, "method": "lora", "eval_split": 0.05, "strategy": "fsdp"},  # LoRA under FSDP2 evaluated (v89)
    ],
)
def test_no_note_where_it_did_not_fail(settings):
    assert said(settings) == []
