"""Helper 336 (explore69), patch tests: an adapter's base not at the path its adapter_config.json names, with a model
directory of that name here (a run and its base copied to another machine): the hint named no flag ("did you mean the
adapter's base llama?") and dropped the way to give it (preflight._near_model); and the data's warnings (a chat
template whose turns never stop) said by `ftctl data check` only, never by the run that trains on them
(data.build_dataset)."""

from __future__ import annotations

import json
import shutil

import pytest

from ftctl.errors import FtctlError


def test_a_moved_adapters_base_found_here_is_said_with_the_way_to_give_it(tiny_model_dir, tmp_path, monkeypatch):
    from ftctl.trainer.merge import merge

    shutil.copytree(tiny_model_dir, tmp_path / "llama")
    run = tmp_path / "run"
    run.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": "/home/alice/models/llama", "r": 4, "lora_alpha": 8}
    (run / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FtctlError) as said:
        merge("run", "merged")
    assert "did you mean llama? put the same model at that path here" in str(said.value), said.value
    assert "--base DIR" in str(said.value) and "the adapter's base llama" not in str(said.value)


def test_the_run_says_the_datas_warnings_a_template_whose_turns_never_stop(tiny_tokenizer, tmp_path, monkeypatch):
    """A chat template whose assistant turns end in no special token of the tokenizer (ChatML's <|im_end|> on a base
    without it, -o chat_template_path): the model learns the tag as text and never stops (generation_config's eos is
    never trained; vLLM and generate() run to max_tokens). `ftctl data check` warned; `ftctl train` and `ftctl launch`
    (its preflight and its trainer) trained and shipped it in silence."""
    from ftctl.trainer.data import build_dataset
    from tests.test_data import write_jsonl

    template = (
        "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
    )
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    said: list[str] = []
    build_dataset(str(write_jsonl(tmp_path / "r.jsonl", rows)), tiny_tokenizer, 64, echo=said.append)
    (warning,) = [line for line in said if line.startswith("warning: ")]
    assert "'<|end|>'" in warning and "the model will not learn to stop" in warning, said
