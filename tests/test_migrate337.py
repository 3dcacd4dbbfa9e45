"""Other tools' run files as their users wrote them (helper 337): an axolotl file without adapter is a full fine-tune,
as in axolotl; axolotl's per-dataset chat_template read as its top-level one is; LLaMA-Factory's max_samples over
eval_dataset too."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.test_migrate333 import _axolotl


def test_an_axolotl_file_without_adapter_trains_every_weight_as_axolotl_does(tiny_model_dir, tmp_path, monkeypatch):
    """No adapter key was lora, ftctl's default, and axolotl's full fine-tunes at 1e-5 / 2e-5 (21 of its examples) were
    refused by the learning-rate check: axolotl trains every weight there, so method fft, noted; --method and -o
    method win, and adapter: lora is LoRA."""
    notes: list[str] = []
    spec = build(_axolotl(tiny_model_dir, tmp_path, learning_rate=2e-5), notes=notes)
    assert spec.method == "fft", notes
    assert any(
        n.startswith("method fft: axolotl trains every weight where adapter is left out") and "adapter: lora" in n
        for n in notes
    ), notes
    assert build(_axolotl(tiny_model_dir, tmp_path), flags={"method": "lora"}).method == "lora"
    assert build(_axolotl(tiny_model_dir, tmp_path, adapter="lora")).method == "lora"
    # LoRA's keys without adapter (none of axolotl's examples): axolotl would leave them unused; refused, saying both
    with pytest.raises(
        FtctlError, match="lora_r \\(run file\\), lora_target_linear \\(run file\\) set LoRA's .*adapter: lora"
    ):
        build(_axolotl(tiny_model_dir, tmp_path, lora_r=16, lora_target_linear=True))
    assert build(_axolotl(tiny_model_dir, tmp_path, lora_r=16), flags={"method": "fft"}).method == "fft"
    # through the command line: -o method wins over axolotl's default, which the dry run says otherwise
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ax.yaml").write_text(
        yaml.safe_dump(_axolotl(tiny_model_dir, tmp_path, output_dir=str(tmp_path / "o")))
    )
    said = CliRunner().invoke(main, ["launch", "-c", "ax.yaml", "--gpus", "cpu", "--dry-run"])
    assert said.exit_code == 0 and "method fft: axolotl trains every weight" in said.output, said.output
    said = CliRunner().invoke(main, ["launch", "-c", "ax.yaml", "--gpus", "cpu", "--dry-run", "-o", "method=lora"])
    assert said.exit_code == 0 and "axolotl trains every weight" not in said.output, said.output


def test_a_datasets_entrys_own_chat_template_is_read_as_the_top_level_one(tiny_model_dir, tmp_path):
    """A datasets entry's chat_template: chatml was refused ("give the template as a file") where the top-level one is
    taken over a ChatML model: taken the same way; one of another format refused naming the entry; entries of
    different formats refused in one line saying ftctl formats every dataset with one template."""
    run = _axolotl(tiny_model_dir, tmp_path)
    path = run["datasets"][0]["path"]
    notes: list[str] = []
    build({**run, "datasets": [{"path": path, "type": "chat_template", "chat_template": "chatml"}]}, notes=notes)
    assert any(n.startswith(f"datasets: {path}'s chat_template: chatml (run file): taken:") for n in notes), notes
    with pytest.raises(FtctlError) as e:
        build({**run, "datasets": [{"path": path, "type": "chat_template", "chat_template": "llama3"}]})
    assert f"{path}'s chat_template: llama3" in str(e.value) and "which is ChatML" in str(e.value)
    assert "chat_template_path" in str(e.value)
    both = [
        {"path": path, "type": "chat_template", "chat_template": "chatml"},
        {"path": path, "type": "chat_template", "chat_template": "llama3"},
    ]
    with pytest.raises(FtctlError, match="name chat templates of different formats, and ftctl formats every dataset"):
        build({**run, "datasets": both})


def test_llama_factorys_max_samples_cuts_eval_dataset_too(tiny_model_dir, tmp_path):
    """max_samples was applied to dataset alone: LLaMA-Factory cuts eval_dataset's datasets to their first rows too
    (its loader's _load_single_dataset), and ftctl evaluates every held-out row: a smaller one is noted, a larger one
    refused saying to give a file of its first rows."""
    (tmp_path / "data").mkdir()
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]
    row = json.dumps({"messages": turns}) + "\n"
    (tmp_path / "data" / "b.jsonl").write_text(row * 5)
    (tmp_path / "data" / "e.jsonl").write_text(row * 40)
    info = {"b": {"file_name": "b.jsonl"}, "e": {"file_name": "e.jsonl"}}
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    run = {
        "model_name_or_path": str(tiny_model_dir),
        "stage": "sft",
        "finetuning_type": "lora",
        "dataset": "b",
        "eval_dataset": "e",
        "dataset_dir": str(tmp_path / "data"),
        "cutoff_len": 64,
        "max_samples": 1000,
    }
    notes: list[str] = []
    build(run, notes=notes)
    assert any("every held-out dataset has that many rows or fewer" in n for n in notes), notes
    with pytest.raises(FtctlError, match="cuts eval_dataset's datasets too, as LLaMA-Factory does.*head -n 10"):
        build({**run, "max_samples": 10})
