"""Datasets on the Hugging Face Hub (hf://datasets/ORG/NAME/FILES), read through huggingface_hub's HfFileSystem
against a stand-in for the Hub's HTTP API on loopback (tests/hub_fixtures.py: the Hub cannot be reached here)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from ftctl import storage
from ftctl.errors import FtctlError
from tests.hub_fixtures import FakeHub, hub_env
from tests.trainer_fixtures import REPO, make_run, subprocess_env

TRAIN, TEST = "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"
CHAT = "hf://datasets/org/chat"


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(start, start + n)
    ]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Two public dataset repos (one with train/test parquet splits and a README, one JSON Lines) and a gated one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "hub"
    chat = root / "datasets" / "org" / "chat"
    (chat / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_rows(15)), chat / TRAIN)
    pq.write_table(pa.Table.from_pylist(_rows(5, 15)), chat / TEST)
    (chat / "README.md").write_text("# chat\n")
    # splits named by the dataset card, not by train/test (ultrachat_200k's layout)
    uc = root / "datasets" / "org" / "uc"
    (uc / "data").mkdir(parents=True)
    for name, rows in (("train_sft-00000-of-00002", _rows(3)), ("train_sft-00001-of-00002", _rows(3, 3))):
        pq.write_table(pa.Table.from_pylist(rows), uc / "data" / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(_rows(2, 6)), uc / "data" / "test_sft-00000-of-00001.parquet")
    card = ["configs:", "- config_name: default", "  data_files:"]
    card += [f"  - split: {n}\n    path: data/{n}-*" for n in ("train_sft", "test_sft")]
    (uc / "README.md").write_text("---\n" + "\n".join(card) + "\n---\n# uc\n")
    # a card whose splits the file names would not give
    named = root / "datasets" / "org" / "named"
    (named / "raw").mkdir(parents=True)
    (named / "raw" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(4)))
    (named / "raw" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    (named / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: raw/test.jsonl\n"
        "  - split: test\n    path: raw/a.jsonl\n---\n"
    )
    gated = root / "datasets" / "org" / "gated"
    gated.mkdir(parents=True)
    (gated / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(4)))
    server = FakeHub(root, gated=("org/gated",)).start()
    for key, value in hub_env(server.endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.stop()


def test_one_split_by_pattern_or_the_whole_repository(hub, tiny_model_dir):
    from ftctl.trainer.data import build_dataset
    from ftctl.trainer.formats import resolve_files
    from ftctl.trainer.model import load_tokenizer

    assert resolve_files(f"{CHAT}/data/train-*.parquet") == [f"{CHAT}/{TRAIN}"]
    # the repository whole: its train split for training, its test split for held-out data, never both
    assert resolve_files(CHAT) == [f"{CHAT}/{TRAIN}"]
    assert resolve_files(CHAT, held_out=True) == [f"{CHAT}/{TEST}"]
    assert resolve_files(f"{CHAT}/{TEST}") == [f"{CHAT}/{TEST}"]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert len(build_dataset(f"{CHAT}/data/train-*.parquet", tokenizer, 128)) == 15
    with pytest.raises(FtctlError, match=r"No .json, .jsonl \(.gz\), .parquet or .arrow file matches"):
        resolve_files(f"{CHAT}/data/validation-*.parquet")


def test_a_repository_gives_the_split_its_dataset_card_names(hub):
    from ftctl.trainer.formats import resolve_files

    named = "hf://datasets/org/named"
    assert resolve_files(named) == [f"{named}/raw/test.jsonl"]  # the card's train split, whatever its file's name
    assert resolve_files(named, held_out=True) == [f"{named}/raw/a.jsonl"]
    uc = "hf://datasets/org/uc"
    with pytest.raises(FtctlError) as e:
        resolve_files(uc)
    assert str(e.value) == (
        f"{uc} has no 'train' split; its splits: train_sft (2 files), test_sft (1 file). Name the files of the one to "
        f"use, e.g. --data '{uc}/data/train_sft-*.parquet'."
    )
    assert len(resolve_files(f"{uc}/data/train_sft-*.parquet")) == 2  # the example given resolves
    with pytest.raises(FtctlError, match=f"{uc} has no 'test' or 'validation' split; .* e.g. --eval-data '"):
        resolve_files(uc, held_out=True)


def test_a_missing_private_or_gated_dataset_says_to_check_the_id_and_hf_token(hub, monkeypatch):
    from ftctl.trainer.formats import resolve_files

    for uri in ("hf://datasets/org/missing/data/train-*.parquet", "hf://datasets/org/gated"):
        with pytest.raises(storage.StorageError) as e:
            resolve_files(uri)
        text = str(e.value)
        assert text.startswith("No dataset repository 'datasets/org/") and "or it is private or gated" in text
        assert f"on the Hugging Face Hub at {hub.endpoint}" in text and "set HF_TOKEN" in text

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    assert resolve_files("hf://datasets/org/gated") == ["hf://datasets/org/gated/train.jsonl"]
    assert "Bearer hf_secret_value_123" in hub.authorizations  # the token reached the Hub, from the environment
    with pytest.raises(storage.StorageError) as e:
        resolve_files("hf://datasets/org/missing")
    assert "hf_secret_value_123" not in str(e.value)


def test_the_hub_unreachable_is_one_line(hub, monkeypatch):
    from ftctl.trainer.formats import resolve_files

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(storage.StorageError, match=f"Cannot reach the Hugging Face Hub at http://127.0.0.1:{port}"):
        resolve_files(f"{CHAT}/{TRAIN}")


def test_a_hub_dataset_under_hf_hub_offline_says_so(monkeypatch):
    """HF_HUB_OFFLINE=1 (a login node without internet; `trl` users set it): hf://datasets/... is listed on the Hub
    itself, and the check said "No dataset repository ..., or it is private or gated", sending them to check the id."""
    from ftctl.preflight import check_data

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (found,) = check_data(f"{CHAT}/{TRAIN}", None, "--data")
    assert found.what.startswith(f"--data {CHAT}/{TRAIN}: HF_HUB_OFFLINE is set, and {CHAT}/{TRAIN} is read from")
    assert "No dataset repository" not in found.what and "unset HF_HUB_OFFLINE" in found.fix


def test_a_bare_repository_id_is_answered_with_its_hf_uri(tmp_path, monkeypatch):
    from ftctl.trainer.formats import resolve_files

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FtctlError) as e:
        resolve_files("HuggingFaceH4/ultrachat_200k")
    assert "hf://datasets/HuggingFaceH4/ultrachat_200k (its train split" in str(e.value)


def test_local_patterns_name_files_as_the_user_spelled_them(tmp_path, monkeypatch):
    from ftctl.trainer.formats import resolve_files

    (tmp_path / "d").mkdir()
    for name in ("a.jsonl", "b.json", "c.txt", "e[1].json", "e1.json"):
        (tmp_path / "d" / name).write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_files("d/*.jsonl") == ["d/a.jsonl"]
    assert resolve_files("d/[ab].json*") == ["d/a.jsonl", "d/b.json"]
    assert resolve_files("d/e[1].json") == ["d/e[1].json"]  # a file of that name is that file, not a pattern


def test_the_hub_is_read_not_written(tmp_path):
    from ftctl.checkpoints import push
    from ftctl.spec import build

    with pytest.raises(FtctlError, match="output_dir 'hf://datasets/org/out': the Hugging Face Hub is read here"):
        build({"output_dir": "hf://datasets/org/out"})
    with pytest.raises(FtctlError, match="the Hugging Face Hub is read here"):
        push(str(tmp_path), "hf://datasets/org/out")
    assert build({"data_path": f"{CHAT}/{TRAIN}", "eval_data_path": f"{CHAT}/{TEST}"}).data_paths[1].startswith("hf://")


def test_training_reads_its_data_and_held_out_data_from_the_hub(hub, tiny_model_dir, tmp_path, one_thread):
    from ftctl.preflight import check_data
    from ftctl.trainer.data import build_datasets
    from ftctl.trainer.model import load_tokenizer
    from ftctl.trainer.run import train

    assert check_data(f"{CHAT}/data/train-*.parquet") == []
    assert check_data(CHAT, flag="--eval-data") == []
    assert "No dataset repository" in check_data("hf://datasets/org/missing/x.jsonl")[0].text
    assert "has no 'train' split" in check_data("hf://datasets/org/uc")[0].text
    # the same repository for both: its train split trains, its test split is held out
    spec, plan = make_run(
        tiny_model_dir, CHAT, tmp_path / "out", "lora", max_steps=2, eval_steps=2, eval_data_path=CHAT
    )
    assert [len(d) for d in build_datasets(spec, load_tokenizer(str(tiny_model_dir)))] == [15, 5]
    result = train(spec, plan, echo=lambda line: None)
    assert result.status == "complete"
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "eval"] == [2]


def test_data_check_reads_a_hub_split_in_a_new_process(hub, tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "data", "check", f"{CHAT}/data/train-*.parquet", "--model", tiny_model_dir],
        cwd=REPO,
        env=subprocess_env(**hub_env(hub.endpoint)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rows              15" in proc.stdout and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ models
def test_plan_sizes_a_hub_model_from_its_config_on_the_hub(hub, tmp_path, monkeypatch):
    """An id that is neither a local directory nor a known one: `plan` reads its config.json from the Hub (once),
    with HF_TOKEN where the model is gated; what it cannot read is one line saying why."""
    from ftctl import hub as hub_mod
    from ftctl.plan import model_shape

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login, an empty cache
    hub_mod.model_config.cache_clear()
    config = {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4}
    config |= {"intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False}
    for repo in ("acme/chat-7b", "org/gated"):
        (hub.root / "models" / repo).mkdir(parents=True)
        (hub.root / "models" / repo / "config.json").write_text(json.dumps(config))

    shape = model_shape("acme/chat-7b")
    assert shape.source == "acme/chat-7b on the Hub" and (shape.hidden, shape.layers) == (3584, 28)
    assert 7.5 < shape.params_b < 7.7  # Qwen2.5-7B's shape: 7.62B
    with pytest.raises(FtctlError, match="private or gated and HF_TOKEN is not set"):
        model_shape("org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert model_shape("org/gated").layers == 28 and hub.authorizations[-1] == "Bearer hf_test"
    with pytest.raises(FtctlError, match="the Hub has no model repository of that name \\(check the id\\)"):
        model_shape("acme/no-such-model")
    with pytest.raises(FtctlError, match="the Hub has no model .* Did you mean 'meta-llama/Llama-3.1-8B'\\?"):
        model_shape("meta-llama/Llama-3-8B")  # a typo of a known id: named, spelled as typed where it agrees
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(
        FtctlError, match="did not answer \\(ConnectError\\). Or pass its size, e.g. --model-params"
    ) as e:
        model_shape("acme/other-7b")
    assert "The ids sized without it (and their -Instruct, -chat, -it variants): google/gemma-2-27b," in str(e.value)
    assert "Did you mean" not in str(e.value)  # unreachable: the id may well be right
    assert model_shape("acme/chat-7b").hidden == 3584  # asked once a process
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtctlError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        model_shape("acme/third-7b")
    # offline, a known id mistyped: the known ids are here. The -Instruct id typed, not its base model (explore60 #3a:
    # this asserted 'meta-llama/llama-3.1-8b', the base, as the key the known shapes are stored under; a user who
    # typed an -Instruct id and pasted the suggestion trained the base model, without a chat template's tuning)
    with pytest.raises(FtctlError, match="HF_HUB_OFFLINE is set. Did you mean 'meta-llama/Llama-3.1-8b-instruct'\\?"):
        model_shape("meta-llama/Llama-3.1-8b-instrut")
    hub_mod.model_config.cache_clear()


def test_tuned_variants_of_a_known_model_are_known():
    from ftctl.plan import model_shape

    for model in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-2-7b-chat-hf"):
        assert model_shape(model).source == "known id", model


def test_the_preflight_asks_the_hub_for_the_model(hub, tmp_path, monkeypatch):
    """A typo in --model or a gated model without access stops launch before anything is submitted (a queued
    job would fail hours later on its first load); the demo model never asks the Hub."""
    from ftctl import hub as hub_mod
    from ftctl.preflight import ERROR, check_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub_mod.model_config.cache_clear()
    for repo in ("acme/chat-7b", "org/gated"):
        (hub.root / "models" / repo).mkdir(parents=True)
        (hub.root / "models" / repo / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}))

    assert check_model("acme/chat-7b") == []
    [typo] = check_model("acme/chat-7B-typo")
    assert typo.level == ERROR and "the Hub has no model repository of that name" in typo.text
    assert "check the id as huggingface.co spells it" in typo.text
    [gated] = check_model("org/gated")
    assert gated.level == ERROR and "HF_TOKEN is not set" in gated.text and "accept the model's licence" in gated.text
    asked = len(hub.authorizations)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    hub_mod.model_config.cache_clear()
    assert check_model("org/gated") == [] and len(hub.authorizations) == asked + 1
    seen = []
    monkeypatch.setattr(hub_mod, "model_config", lambda repo: seen.append(repo))
    assert check_model("HuggingFaceTB/SmolLM2-135M-Instruct") == [] and seen == []
