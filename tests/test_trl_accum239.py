"""A TRL run file that gives gradient_accumulation_steps but no per_device_train_batch_size trains ftctl's micro-batch
(the largest that fits up to its global batch of 32 over all GPUs) times that accumulation, where TRL steps after 8 a
GPU times it: a note says so and how to have TRL's (spec.TOOL_DEFAULTS_NOT_TAKEN), and the -o it names trains TRL's
batch. Before, no note: spec left every batch to plan.py once one batch key was given, and plan.py notes
per_device_train_batch_size alone only (tests/test_trl_batch230.py)."""

from __future__ import annotations

import pytest

NOTE = (
    "gradient_accumulation_steps 4 without per_device_train_batch_size, in a run file in TRL's vocabulary "
    "(dataset_name, use_peft): ftctl's micro-batch is the largest that fits up to its global batch of 32 sequences "
    "over all GPUs (at least 1 a GPU), and a step accumulates 4 of them (`ftctl plan` says the batch); TRL's "
    "SFTConfig takes 8 a GPU, a step of 8 x 4 a GPU: -o per_device_train_batch_size=8 for TRL's"
)


def _built(values, overrides=()):
    from ftctl.spec import build

    notes: list[str] = []
    spec = build(values, None, list(overrides), notes=notes)
    return spec, [n for n in notes if "batch" in n]


def test_a_trl_file_with_accumulation_alone_is_told_ftctls_batch_and_how_to_have_trls(tiny_model_dir, tiny_data):
    from ftctl.plan import make_plan

    trl = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(tiny_data), "max_length": 128}
    trl |= {"use_peft": True, "gradient_accumulation_steps": 4}
    assert _built(trl)[1] == [NOTE]
    # what the note says to write trains TRL's batch: 8 a process, 4 accumulated
    spec, notes = _built(trl, ["gpus=2xcpu", "per_device_train_batch_size=8"])
    plan = make_plan(spec)
    assert notes == [] and (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (8, 4)
    assert plan.global_batch_size == 64


@pytest.mark.parametrize("given", [{"global_batch_size": 64}, {"per_device_train_batch_size": 2}])
def test_accumulation_with_another_batch_key_gets_no_such_note(given):
    trl = {"dataset_name": "trl-lib/Capybara", "use_peft": True, "gradient_accumulation_steps": 4, **given}
    assert not [n for n in _built(trl)[1] if n.startswith("gradient_accumulation_steps 4 without")]
    assert not _built({"data_path": "builtin:demo", "gradient_accumulation_steps": 4})[1]  # ftctl's own vocabulary
