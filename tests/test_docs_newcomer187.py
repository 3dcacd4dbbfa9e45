"""What a newcomer following README.md met (helper 187): the walk-through tried on CPU with the demo's model."""

from __future__ import annotations

import shutil

from ftctl import preflight
from ftctl.preflight import NOTE
from ftctl.spec import DEMO_MODEL, build


def test_a_dry_run_tokenizes_with_the_demo_models_tokenizer_as_data_check_does(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """`ftctl data check chats.jsonl --model HuggingFaceTB/SmolLM2-135M-Instruct` tokenized with the demo's model
    (built in ftctl's cache), but `ftctl launch ... --dry-run` of the same said "not tokenized here (its tokenizer is
    not in this machine's Hugging Face cache)": the README's walk-through tried on CPU checked no row before its run."""
    monkeypatch.setenv("FTCTL_CACHE", str(tmp_path / "cache"))
    spec = build(flags={"model_name_or_path": DEMO_MODEL, "data_path": str(tiny_data), "gpus": "cpu"})  # as typed
    (note,) = preflight.check_tokenized(spec, dry_run=True)  # no demo model built: left to the trainer, as before
    assert note.level == NOTE and "not tokenized here" in note.what, note.what
    built = tmp_path / "cache" / "models" / DEMO_MODEL.replace("/", "--")
    shutil.copytree(tiny_model_dir, built)  # what `ftctl demo` leaves there: a model directory, tokenizer included
    (note,) = preflight.check_tokenized(spec, dry_run=True)
    assert note.level == NOTE and note.what.startswith(f"--data {tiny_data}: 48 rows tokenized here"), note.what
