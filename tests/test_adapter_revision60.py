"""A lora run pinned to a commit writes that commit into its adapter_config.json (PEFT's own ``revision`` key), so the
card's `AutoPeftModelForCausalLM.from_pretrained(RUN)` loads the base the run trained on, not the Hub's main of the day
it is read. On a real Hugging Face cache on disk (tests/hf_cache_fixtures.py: a tiny Llama at two commits, 1 and 2
layers, the cache's refs/main at ONE_LAYER's), the real trainer, offline; nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

from ftctl.plan import dump_run, make_plan
from ftctl.spec import build
from tests.hf_cache_fixtures import (  # noqa: F401 (the fixtures)
    ONE_LAYER,
    REPO,
    TWO_LAYERS,
    hf_cache,
    two_commits,
)


def test_a_pinned_runs_adapter_loads_its_base_at_the_pinned_commit(two_commits, tmp_path, monkeypatch):  # noqa: F811
    from huggingface_hub import constants
    from peft import AutoPeftModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the trainer's process
    # and this one's loads below: huggingface_hub read HF_HUB_OFFLINE at import, so without this they asked the Hub
    # (not the fixture's discard port: its ENDPOINT too is read at import) and waited out its retries, ~100 s
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": "hi hi hi"}) + "\n" for _ in range(4)))
    out = tmp_path / "out"
    spec = build(
        {
            "method": "lora",
            "gpus": "cpu",
            "model_name_or_path": REPO,
            "data_path": str(rows),
            "output_dir": str(out),
            "max_steps": 1,
            "global_batch_size": 2,
        }
    )
    spec = replace(spec, model_revision=TWO_LAYERS)  # as launch pins it: not the cache's main (ONE_LAYER)
    (tmp_path / "spec.json").write_text(dump_run(spec, make_plan(spec)))
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl.trainer", "--spec", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (REPO, TWO_LAYERS)
    checkpoints = sorted(out.glob("checkpoint-*/adapter_config.json"))
    assert all(json.loads(c.read_text())["revision"] == TWO_LAYERS for c in checkpoints)
    assert AutoPeftModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
    # unpinned: PEFT's own null, so its loader takes main (ONE_LAYER here), as before
    (out / "adapter_config.json").write_text(json.dumps(config | {"revision": None}))
    assert AutoPeftModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1
