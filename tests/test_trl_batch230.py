"""A TRL run file with no batch key trains ftctl's global batch of 32 over all GPUs, not TRL's 8 a GPU without
accumulation: a note says so and how to have TRL's (spec.TOOL_DEFAULTS_NOT_TAKEN), as for its learning rate; the
-o it names trains 8 a GPU a step. A file that gives a batch key gets none from spec (per_device_train_batch_size
alone: plan.py's note on accumulating it)."""

from __future__ import annotations

import pytest

TRL_BATCH = "-o per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for TRL's"


def _built(values, overrides=()):
    from ftctl.spec import build

    notes: list[str] = []
    spec = build(values, None, list(overrides), notes=notes)
    return spec, [n for n in notes if "global_batch_size" in n or "per_device_train_batch_size" in n]


@pytest.mark.parametrize("method", [{"use_peft": True}, {"use_peft": False}])
def test_a_trl_file_without_a_batch_is_told_ftctls_and_how_to_have_trls(method, tiny_model_dir, tiny_data):
    from ftctl.plan import make_plan

    trl = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(tiny_data), "max_length": 128, **method}
    spec, notes = _built(trl)
    assert spec.global_batch == 32 and notes == [
        "global_batch_size 32, ftctl's default, in a run file in TRL's vocabulary (dataset_name, use_peft): sequences "
        "a step over all GPUs, accumulated from micro-batches that fit; TRL's SFTConfig steps after 8 a GPU "
        f"(per_device_train_batch_size 8, gradient_accumulation_steps 1): {TRL_BATCH}"
    ]
    # what the note says to write trains TRL's batch: 8 a process a step, no accumulation
    spec, notes = _built(trl, ["gpus=2xcpu", "per_device_train_batch_size=8", "gradient_accumulation_steps=1"])
    plan = make_plan(spec)
    assert notes == [] and (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (8, 1)
    assert plan.global_batch_size == 16


@pytest.mark.parametrize(
    "given",
    [{"per_device_train_batch_size": 4}, {"gradient_accumulation_steps": 4}, {"global_batch_size": 16}],
)
def test_a_trl_file_that_gives_a_batch_key_gets_no_batch_default_note(given):
    spec, notes = _built({"dataset_name": "trl-lib/Capybara", "use_peft": True, **given})
    assert not [n for n in notes if TRL_BATCH in n]
    assert not [n for n in _built({"dataset_name": "trl-lib/Capybara"}, [f"{k}={v}" for k, v in given.items()])[1]
                if TRL_BATCH in n]  # fmt: skip


def test_a_file_in_ftctls_own_vocabulary_gets_no_batch_note():
    assert _built({"data_path": "builtin:demo"})[1] == []
