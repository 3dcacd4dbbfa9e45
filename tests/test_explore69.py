"""Shipping a run (helper 336, explore69): two `ftctl merge` of one run into one --out at once, and the demo base's
license on the cards an upload carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A finished 1-step lora run of the tiny model."""
    import torch

    from ftctl.trainer.run import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("explore69") / "run"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "lora", lora_r=4, max_steps=1, save_steps=1, model_max_length=64
    )
    return Path(train(spec, plan, echo=lambda line: None).output_dir)


def test_a_merge_another_merge_finished_into_its_out_meanwhile_is_said_not_a_traceback(lora_run, tmp_path):
    """Two `ftctl merge RUN --out DIR` at once (two terminals, a script run twice): both passed the check that DIR is
    empty, and the one that finished second died at its rename with a traceback (OSError: [Errno 39] Directory not
    empty) after loading and merging the whole model. It says what DIR holds now, as a merge started after would."""
    from ftctl.trainer.merge import merge

    out = tmp_path / "merged"

    def other_merge_finishes_first(line: str) -> None:  # told before the base loads: the other merge runs then
        if line.startswith("merging"):
            merge(str(lora_run), str(out))

    with pytest.raises(FtctlError, match="holds the merge of this adapter as it is now .*nothing to merge again"):
        merge(str(lora_run), str(out), echo=other_merge_finishes_first)
    assert (out / "model.safetensors").is_file()  # the other's merge, whole
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no partial merge left beside it


def test_the_demo_bases_cards_carry_its_license():
    """A run of the demo model (SmolLM2-135M-Instruct, Apache 2.0) uploaded as the docs say showed on the Hub as of
    unknown license: its base is ftctl's build, with no card here nor in the Hub cache to read the license from."""
    from huggingface_hub import ModelCard

    from ftctl.spec import DEMO_MODEL
    from ftctl.trainer.model_card import base_license, merged_text

    assert base_license(DEMO_MODEL) == {"license": "apache-2.0"}
    card = ModelCard(merged_text("runs/demo", DEMO_MODEL, "lora", "its unquantized weights, in fp32"))
    assert card.data.license == "apache-2.0" and card.data.base_model == DEMO_MODEL


def test_a_merge_of_a_run_whose_template_never_stops_says_so(lora_run, tmp_path):
    """A run whose chat template ends assistant turns in no special token of its tokenizer (a template of another
    model's, -o chat_template_path) learned the end as text: its generation_config cannot stop there, and the merged
    model, served, ran on to max_tokens. The merge said nothing; it says so now (a run of a template that stops, as
    the fixture's ChatML one, says nothing)."""
    import shutil

    from ftctl.trainer.merge import merge

    said: list[str] = []
    merge(str(lora_run), str(tmp_path / "ok"), echo=said.append)
    assert not [line for line in said if line.startswith("warning:")], said
    run = shutil.copytree(lora_run, tmp_path / "run", ignore=shutil.ignore_patterns("merged*"))
    template = (
        "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
    )
    (run / "chat_template.jinja").write_text(template)
    merge(str(run), str(tmp_path / "merged"), echo=said.append)
    (warning,) = [line for line in said if line.startswith("warning:")]
    assert "'<|end|>'" in warning and "runs on to max_tokens" in warning, said
