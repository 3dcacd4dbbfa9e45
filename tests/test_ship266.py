"""Shipping what a run trained (explore58, task 266): the cards of a run and of its merge name how it was trained.

A card said the run's settings were in spec.json beside it, which the upload docs/results.md gives leaves out (it holds
the training machine's paths): an adapter or merge uploaded to the Hub named no rank, learning rate, batch or steps.
"""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from tests.trainer_fixtures import make_run

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _training(card: str) -> str:
    assert "## Training" in card, card
    return card[card.index("## Training") :]


def test_a_runs_card_names_its_method_data_and_hyperparameters(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer import model_card

    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"target_modules": LORA_TARGETS, "r": 8}))
    spec, plan = make_run(
        tiny_model_dir,
        tiny_data,
        out,
        "qlora",
        lora_r=8,
        lora_alpha=16,
        learning_rate=3e-4,
        warmup_ratio=0.1,
        eval_split=0.05,
        use_rslora=True,
    )
    card = model_card.text(spec, str(tiny_model_dir), adapter=True, local_dir=str(out), plan=plan)
    ModelCard(card)  # a card the Hub reads
    said = _training(card)
    assert "- method: qlora\n- LoRA: rank 8, alpha 16, dropout 0.05; rsLoRA\n" in said
    assert "- adapted modules: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj\n" in said
    assert "- base: 4-bit NF4 with double quantization (bitsandbytes)\n" in said
    assert "- data: `conversations.json`\n- held-out data: 5% of the data\n" in said
    assert "- learning rate: 0.0003\n- schedule: cosine, warm-up 10% of the steps\n" in said
    assert "- batch: 4 sequences a step (2 a process x 2 accumulation x 1 process)\n- steps: 6\n" in said
    assert (
        "- sequence length: at most 128 tokens" in said and "- loss on: a conversation's assistant turns only" in said
    )
    assert "- precision: fp32\n" in said and "- seed: 7\n" in said
    assert "Trained with ftctl " in said and "transformers " in said and "peft " in said
    # no claim that spec.json is beside the card (an upload leaves it out), and no path of this machine
    assert "spec.json" not in card and str(tmp_path) not in card


def test_an_sft_and_an_fft_runs_card_say_what_trained(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer import model_card

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "sft", "sft", trainable_layers=1, max_steps=-1)
    said = _training(model_card.text(spec, str(tiny_model_dir), adapter=False, local_dir=str(tmp_path), plan=plan))
    assert "- method: sft\n- trained: the top 1 of 2 blocks and the output head\n" in said
    assert "- steps: 1 epoch\n" in said and "LoRA" not in said
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "fft", "fft", warmup_ratio=0.0, warmup_steps=None)
    said = _training(model_card.text(spec, str(tiny_model_dir), adapter=False, local_dir=str(tmp_path), plan=plan))
    assert "- method: fft\n- data:" in said and "warm-up none" in said and "learning rate: 0.001\n" in said
    # a checkpoint's card too
    card = model_card.text(spec, str(tiny_model_dir), False, str(tmp_path), step=3, plan=plan)
    assert "(checkpoint-3)" in card and "- method: fft\n" in _training(card)
    assert "- steps: 3 (a checkpoint of the run's 6)\n" in _training(card)


def test_a_merges_card_names_the_runs_data_and_hyperparameters(tiny_model_dir, tiny_data, tmp_path):
    """ftctl merge's card, of the run's final adapter and of one of its checkpoints (spec.json above it)."""
    from ftctl.plan import dump_run
    from ftctl.trainer import model_card

    run = tmp_path / "run"
    spec, plan = make_run(tiny_model_dir, tiny_data, run, "lora", lora_r=4, lora_alpha=8, learning_rate=5e-4)
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "spec.json").write_text(dump_run(spec, plan))
    for adapter in (run, run / "checkpoint-3"):
        (adapter / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj", "v_proj"], "r": 4}))
        merged = tmp_path / f"merged-{adapter.name}"
        merged.mkdir()
        model_card.write_merged(merged, str(adapter), str(tiny_model_dir), "lora", "its weights", trained=adapter)
        card = (merged / "README.md").read_text()
        ModelCard(card)
        said = _training(card)
        assert "- method: lora\n- LoRA: rank 4, alpha 8, dropout 0.05\n- adapted modules: q_proj, v_proj\n" in said
        assert "- data: `conversations.json`\n" in said and "- learning rate: 0.0005\n" in said
        assert "Trained with" not in said  # this machine's versions are the merge's, not the training's
        steps = "- steps: 3 (a checkpoint of the run's 6)\n" if adapter.name == "checkpoint-3" else "- steps: 6\n"
        assert steps in said
        assert str(tmp_path) not in card
    # an adapter without its run's spec.json (another tool's): the card as before, no section
    bare = tmp_path / "bare"
    bare.mkdir()
    card = model_card.merged_text("bare", "Org/Base", "lora", "its weights", None, bare)
    assert "## Training" not in card and "## Use it" in card


def test_a_cards_vllm_line_serves_the_adapter_as_vllm_loads_it(tiny_model_dir, tiny_data, tmp_path):
    """docs/results.md gave one `vllm serve BASE --enable-lora --lora-modules run=RUN` for every adapter: vLLM refuses
    a rank over its default --max-lora-rank 16 ("LoRA rank 32 is greater than max_lora_rank 16") and any DoRA adapter,
    and puts a qlora adapter onto the unquantized base (another model than trained). Each card says how to serve it."""
    from ftctl.trainer import model_card

    out = tmp_path / "r1"
    out.mkdir()

    def card(method="lora", base="Org/Base-1B", adapter=True, **keys):
        spec, plan = make_run(tiny_model_dir, tiny_data, out, method, **keys)
        return model_card.text(spec, base, adapter=adapter, local_dir=str(out), plan=plan)

    said = card(lora_r=16)
    assert "vllm serve Org/Base-1B --enable-lora --lora-modules r1=DIR\n" in said
    assert "vllm serve Org/Base-1B --enable-lora --lora-modules r1=DIR --max-lora-rank 32\n" in card(lora_r=24)
    # the rank the adapter saved (a fused MoE's gate_up at twice lora_r: rank_pattern)
    (out / "adapter_config.json").write_text(json.dumps({"r": 32, "rank_pattern": {"experts.gate_up_proj": 64}}))
    (out / "generation_config.json").write_text("{}")
    said = card(lora_r=32, base=str(tiny_model_dir))
    assert "(BASE: the base model's directory)" in said
    assert "vllm serve BASE --enable-lora --lora-modules r1=DIR --max-lora-rank 64 --generation-config DIR\n" in said
    (out / "adapter_config.json").unlink()
    assert "vLLM serves adapters up to rank 512, this one is of rank 1024: `ftctl merge DIR`" in card(lora_r=1024)
    assert "vLLM does not load DoRA adapters: to serve it, `ftctl merge DIR`, then `vllm serve DIR/merged`" in card(
        use_dora=True
    )
    said = card("qlora")
    assert "Served by vLLM: `ftctl merge DIR`, then `vllm serve DIR/merged`" in said and "--enable-lora" not in said
    assert "Served by vLLM: `vllm serve DIR`." in card("fft", adapter=False)
    merged = model_card.merged_text("r1", "Org/Base-1B", "lora", "its weights")
    assert "Served by vLLM: `vllm serve DIR`." in merged


def _published(doc_line: str, run, tmp_path) -> list[str]:
    """The files of ``run`` that a `hf upload ORG/NAME RUN ...` line of the docs uploads: the line run by the real
    `hf` (offline: it stops after reading its arguments, at the Hub), its --include patterns applied as hf applies
    them (huggingface_hub's filter_repo_objects)."""
    import os
    import shlex
    import subprocess

    from huggingface_hub.utils import filter_repo_objects

    from tests.trainer_fixtures import REPO

    words = shlex.split(doc_line)
    assert words[:4] == ["hf", "upload", "ORG/NAME", "RUN"], doc_line
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_unused", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "hf"), "upload", "org/name", str(run), *words[4:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "offline mode" in done.stdout + done.stderr, (doc_line, done.stdout, done.stderr)  # read, reached the Hub
    patterns = [words[i + 1] for i, word in enumerate(words) if word == "--include"]
    assert len(patterns) == len(words[4:]) // 2  # nothing else: no folder in the repository, no stray word
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(files, allow_patterns=patterns))


def test_the_docs_hf_upload_lines_upload_the_final_model_and_nothing_else(tmp_path):
    """docs/results.md's `hf upload ORG/NAME RUN --include "adapter_*" "tokenizer*" ...` is refused by hf 2.4 ("Got
    unexpected extra arguments"); with two patterns it uploaded the adapter's files into a folder named tokenizer*.
    And an fft or sft run had no line. Each line now uploads the final model's files, no checkpoint, spec.json
    (this machine's paths) or pickle."""
    import re
    from pathlib import Path

    from tests.trainer_fixtures import REPO

    text = (REPO / "docs" / "results.md").read_text()
    lines = [m.replace("\\\n", " ") for m in re.findall(r"^hf upload ORG/NAME RUN (?:.*\\\n)*.*$", text, re.M)]
    assert len(lines) == 2, lines
    common = ["README.md", "chat_template.jinja", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    left = [
        "checkpoint-2/adapter_model.safetensors",
        "checkpoint-2/config.json",
        "checkpoint-2/model.safetensors",
        "checkpoint-2/optimizer.pt",
        "checkpoint-2/tokenizer.json",
        "merged/model.safetensors",
        "metrics.jsonl",
        "spec.json",
        "train.log",
        "training_args.bin",
        ".ftctl/status",
    ]
    adapter = ["adapter_config.json", "adapter_model.safetensors"]
    full = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    full.append("model.safetensors.index.json")
    run = Path(tmp_path, "run")
    for name in common + left + adapter + full:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    assert _published(lines[0], run, tmp_path) == sorted(common + adapter)
    assert _published(lines[1], run, tmp_path) == sorted(common + full)
