"""helper 150's preflight patch: a model that needs its repository's code is refused before the job."""

from __future__ import annotations

import json
import shutil


def test_a_model_of_remote_code_only_is_refused_before_the_job(tmp_path, tiny_model_dir):
    """trust_remote_code: true is left off (ftctl never runs a repository's code); a model whose architecture is
    its repository's own (auto_map, a model_type transformers lacks) failed at the trainer's load, after the queue
    wait, saying to pass trust_remote_code=True, which ftctl does not take."""
    from ftctl.preflight import ERROR, check_model, remote_code_only

    model = tmp_path / "qwen"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    mapped = {"auto_map": {"AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}}
    (model / "config.json").write_text(json.dumps({**config, **mapped, "model_type": "qwen"}))
    (found,) = check_model(str(model))
    assert found.level == ERROR and "model_type 'qwen') is its repository's own code" in found.what, found.what
    assert "Qwen/Qwen2.5-7B" in found.fix
    assert remote_code_only({**config, **mapped}, "m") == []  # llama's: transformers' own class loads it
    assert check_model(str(tiny_model_dir)) == []
