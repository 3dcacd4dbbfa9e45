"""`ftctl chat` and `ftctl merge` on what a real CPU run of the tiny model leaves: which weights they find, and
what they refuse. The learned-fact check with the real demo model is in test_demo_model.py."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from ftctl.errors import FtctlError
from tests.trainer_fixtures import make_run, subprocess_env

FTCTL = str(Path(sys.executable).parent / "ftctl")


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A finished lora run of the tiny model: its final adapter and checkpoint-3, checkpoint-6."""
    import torch

    from ftctl.trainer.run import train

    torch.set_num_threads(1)
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("chat") / "run", "lora", lora_r=4)
    return Path(train(spec, plan, echo=lambda line: None).output_dir)


def _greedy(model, tokenizer, question: str, max_new_tokens: int) -> str:
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_chat_answers_with_the_runs_adapter(lora_run, tiny_model_dir):
    """As a user runs it: stdout is the answer alone (script-friendly), stderr what loads."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    question = "What is the capital of France?"
    proc = subprocess.run(
        [FTCTL, "chat", str(lora_run), "-p", question, "--max-new-tokens", "12"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    # stderr: what loads, one line (no library chatter)
    assert proc.returncode == 0 and proc.stderr.splitlines() == [
        f"loading the LoRA adapter {lora_run} on {tiny_model_dir}, fp32 on CPU ..."
    ], proc.stderr
    assert not json.loads((lora_run / "metrics.jsonl").read_text().splitlines()[0])["plain_text"]  # conversations
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(lora_run)).eval()
    assert proc.stdout.strip() == _greedy(tuned, AutoTokenizer.from_pretrained(lora_run), question, 12)

    from ftctl.cli import main

    two = CliRunner().invoke(main, ["chat", str(lora_run), "-p", "a?", "-p", "b?", "--max-new-tokens", "3"])
    assert two.exit_code == 0 and two.stdout.startswith("> a?\n") and "\n\n> b?\n" in two.stdout, two.output
    # what is loading is said first, on stderr (a 7B model on CPU was minutes of silence)
    assert two.stderr.startswith(f"loading the LoRA adapter {lora_run} on "), two.stderr


def test_compare_puts_the_base_models_answer_beside_the_runs(lora_run, tiny_model_dir, tiny_data, tmp_path):
    """--compare: the adapter switched off for the base's answer (no second copy in memory), or the base of a
    full-model run loaded beside it; both answers as each model alone gives them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.cli import main
    from ftctl.trainer.run import train

    question = "What is the capital of France?"
    base = _greedy(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
        AutoTokenizer.from_pretrained(lora_run),
        question,
        6,
    )
    got = CliRunner().invoke(main, ["chat", str(lora_run), "--compare", "-p", question, "--max-new-tokens", "6"])
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    assert lines[0] == f"> {question}" and lines[1] == f"base:  {base}".rstrip() and lines[2].startswith("tuned: ")

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "fft", "fft", max_steps=2, save_steps=2)
    fft = Path(train(spec, plan, echo=lambda line: None).output_dir)
    tuned = _greedy(AutoModelForCausalLM.from_pretrained(fft).eval(), AutoTokenizer.from_pretrained(fft), question, 6)
    got = CliRunner().invoke(main, ["chat", str(fft), "--compare", "-p", question, "--max-new-tokens", "6"])
    assert got.stdout.splitlines()[1:] == [f"base:  {base}".rstrip(), f"tuned: {tuned}".rstrip()], got.output

    alone = CliRunner().invoke(main, ["chat", str(lora_run), "--compare"])
    assert alone.exit_code == 2 and "give them with -p" in alone.output


def test_without_a_final_adapter_the_newest_complete_checkpoint_is_loaded(lora_run, tmp_path, caplog):
    from ftctl.trainer import trained

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(lora_run / "checkpoint-3", partial / "checkpoint-3")
    shutil.copytree(lora_run / "checkpoint-6", partial / "checkpoint-6")
    (partial / "checkpoint-6" / "ftctl-manifest.json").unlink()  # killed before its commit
    with caplog.at_level(logging.WARNING):
        found = trained.find(str(partial))
    assert found.path == partial / "checkpoint-3" and found.adapter
    assert "skipping checkpoint-6" in caplog.text and "loading its newest checkpoint checkpoint-3" in caplog.text
    assert found.precision is None  # no spec.json in the run dir: unknown (merge takes fp32, chat the device's)
    shutil.copy(lora_run / "spec.json", partial / "spec.json")
    assert found.precision == "fp32"  # the run's, read from above the checkpoint
    assert trained.find(str(lora_run / "checkpoint-6")).path == lora_run / "checkpoint-6"


def test_a_full_model_run_loads_as_itself(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer import chat, trained

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "fft", "fft", max_steps=2, save_steps=2)
    from ftctl.trainer.run import train

    out = Path(train(spec, plan, echo=lambda line: None).output_dir)
    found = trained.find(str(out))
    assert found == trained.Trained(out, adapter=False)
    loaded = chat.load(str(out))
    assert loaded.what == f"model {out}, fp32 on CPU"
    with pytest.raises(FtctlError, match="full model .* nothing to merge"):
        trained.find(str(out), adapter_only=True)


def test_a_run_on_plain_text_is_prompted_with_plain_text(tiny_model_dir, tmp_path, monkeypatch):
    """Text rows (and prompt-completion strings) train without the chat template: `ftctl chat` continues the
    prompt as written, as they trained (its metrics.jsonl says so), each line of a conversation on its own.
    --chat-template and --plain-text choose either way; --system needs a template. A run on conversations
    keeps the template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.cli import main
    from ftctl.runpaths import METRICS_FILE, PLAIN_TEXT
    from ftctl.trainer import chat
    from ftctl.trainer.run import train

    data = tmp_path / "notes.jsonl"
    rows = [{"text": f"Note {i}: the boiler is checked every {i + 2} days."} for i in range(6)]
    rows += [{"prompt": "The boiler is", "completion": " checked weekly."}] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec, plan = make_run(tiny_model_dir, data, tmp_path / "run", "fft", max_steps=2, save_steps=2)
    out = Path(train(spec, plan, echo=lambda line: None).output_dir)
    starts = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if '"start"' in line]
    assert [r[PLAIN_TEXT] for r in starts] == [True]
    loaded = chat.load(str(out))
    assert loaded.plain_text and loaded.what.endswith("plain text: prompts continued as written"), loaded.what

    model, tokenizer = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("The boiler is", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    raw = tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    runner = CliRunner()
    asked = runner.invoke(main, ["chat", str(out), "-p", "The boiler is", "--max-new-tokens", "6"])
    assert asked.exit_code == 0 and asked.stdout.strip() == raw, asked.output
    templated = runner.invoke(
        main, ["chat", str(out), "-p", "The boiler is", "--max-new-tokens", "6", "--chat-template"]
    )
    assert templated.exit_code == 0 and templated.stdout.strip() == _greedy(model, tokenizer, "The boiler is", 6)
    assert asked.stdout != templated.stdout  # the two prompts differ, and so do their continuations
    system = runner.invoke(main, ["chat", str(out), "-p", "The boiler is", "--system", "Be brief."])
    assert system.exit_code == 2 and "--chat-template" in system.output and "Traceback" not in system.output

    seen = []
    real = chat.answer

    def spy(model, tokenizer, messages, decoding=chat.Decoding(), streamer=None, plain_text=False):
        seen.append(([m["content"] for m in messages], plain_text))
        return real(model, tokenizer, messages, decoding, streamer, plain_text)

    monkeypatch.setattr(chat, "answer", spy)
    lines = iter(["one", "two", ""])
    chat.converse(
        loaded, chat.Decoding(max_new_tokens=2), read=lambda p: next(lines), echo=lambda s: None, interactive=False
    )
    assert seen == [(["one"], True), (["two"], True)]  # no history: each line continued on its own


def test_a_conversation_on_stdin_keeps_its_turns_until_new(lora_run, monkeypatch):
    from ftctl.trainer import chat

    loaded = chat.load(str(lora_run))
    seen = []
    real = chat.answer

    def spy(model, tokenizer, messages, decoding=chat.Decoding(), streamer=None, plain_text=False):
        seen.append([m["content"] for m in messages])
        return real(model, tokenizer, messages, decoding, streamer, plain_text)

    monkeypatch.setattr(chat, "answer", spy)
    lines = iter(["first?", "second?", "/new", "third?", "", "never read"])
    out = []
    chat.converse(
        loaded, chat.Decoding(max_new_tokens=2), read=lambda prompt: next(lines), echo=out.append, interactive=False
    )
    assert [s[0::2] for s in seen] == [
        ["first?"],
        ["first?", "second?"],
        ["third?"],
    ]  # questions, with the answers between
    assert len(out) == 3 and all(o.endswith("\n") for o in out)


def test_an_outgrown_conversation_drops_its_oldest_turns(lora_run):
    from ftctl.trainer import chat

    loaded = chat.load(str(lora_run))
    limit = loaded.model.config.max_position_embeddings
    long = "word " * (limit // 3)
    messages = [
        {"role": "user", "content": long},
        {"role": "assistant", "content": long},
        {"role": "user", "content": "short?"},
    ]
    inputs = chat._fit(loaded.model, loaded.tokenizer, messages, max_new_tokens=8)
    assert inputs["input_ids"].shape[1] + 8 <= limit
    text = loaded.tokenizer.decode(inputs["input_ids"][0])
    assert "short?" in text and "word" not in text
    with pytest.raises(FtctlError, match="more than the model's context"):
        chat._fit(loaded.model, loaded.tokenizer, [{"role": "user", "content": long * 4}], max_new_tokens=8)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "No model or LoRA adapter (adapter_config.json) in"),
        (["{empty}", "--temperature", "-1"], "--temperature -1.0: give 0 (greedy) or more, a finite number."),
        (["{empty}", "--max-new-tokens", "0"], "--max-new-tokens 0: give at least 1."),
    ],
)
def test_chat_refuses_in_one_line(tmp_path, args, message):
    from ftctl.cli import main

    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["chat", *args, "-p", "hi"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_a_mistyped_run_is_refused_at_once(tmp_path, monkeypatch):
    """``runs/nope`` where runs/ is a directory here is a run's path, not a hub id to look up (that took ~50 s of
    the Hub's retries and ended in a traceback), and is said as `ftctl merge` says it; an id the Hub cannot give is
    one line as well."""
    from ftctl.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')  # eval reads its data path first (before any model loads)
    for command in (
        ["chat", "runs/nope", "-p", "hi"],
        ["eval", "runs/nope", "--data", "x.jsonl"],
        ["merge", "runs/nope"],
    ):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output == (
            "error: runs/nope is not a directory: pass the output directory of a run (or a checkpoint-* in it).\n"
        )
    # the Hub read in a process of its own: huggingface_hub reads HF_HUB_OFFLINE when it is imported
    result = subprocess.run(
        [FTCTL, "chat", "no-such-org/no-such-model", "-p", "hi"],
        capture_output=True,
        text=True,
        env=subprocess_env(HF_HUB_OFFLINE=1),
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = result.stderr.splitlines()[-1]
    assert said.startswith("error: Cannot load no-such-org/no-such-model: ") and "HF_TOKEN" in said


@pytest.mark.parametrize("run", ["./runs/r1", "runs/r1/checkpoint-4", "~/no-such-ftctl-run"])
def test_a_missing_run_that_is_a_path_by_its_form_is_said_as_merge_says_it(run, tmp_path, monkeypatch):
    """`ftctl chat runs/r1` was looked up on the Hub where `ftctl merge` said it is not a directory: a path by its
    form (./, /, ~, more parts than ORG/NAME) is never a model id."""
    from ftctl.cli import main

    def no_hub(repo_id):
        raise AssertionError(f"{repo_id} was looked up on the Hub")

    monkeypatch.setattr("ftctl.hub.model_config", no_hub)
    monkeypatch.chdir(tmp_path)  # no runs/ here
    said = {CliRunner().invoke(main, [cmd, run, *args]).output for cmd, args in (("chat", ["-p", "hi"]), ("merge", []))}
    assert len(said) == 1 and said.pop().endswith(
        " is not a directory: pass the output directory of a run (or a checkpoint-* in it).\n"
    )


def test_an_org_name_that_is_neither_a_directory_nor_a_model_says_both(tmp_path, monkeypatch):
    """runs/my-lora-run typed in another directory than the run's is a model id by its form (ORG/NAME, no runs/
    here): it is looked up, and where that fails the error says it is not a directory here either."""
    from ftctl.cli import main
    from ftctl.hub import HubError

    def missing(repo_id):
        raise HubError("the Hub has no model repository of that name (check the id)", "missing")

    monkeypatch.setattr("ftctl.hub.model_config", missing)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["chat", "runs/my-lora-run", "-p", "hi"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output == (
        f"error: Cannot load runs/my-lora-run: it is not a directory here (in {tmp_path}), and as a model id: the Hub "
        "has no model repository of that name (check the id); check the id as huggingface.co spells it (org/name), or "
        "pass a local model directory.\n"
    )
    # the Hub out of reach: transformers' own words, after the same
    result = subprocess.run(
        [FTCTL, "chat", "runs/my-lora-run", "-p", "hi"],
        capture_output=True,
        text=True,
        env=subprocess_env(HF_HUB_OFFLINE=1),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = result.stderr.splitlines()[-1]
    assert said.startswith(
        f"error: Cannot load runs/my-lora-run: it is not a directory here (in {tmp_path}), and as a model id: "
    ), said


def test_a_run_in_object_storage_talks_from_its_top_level_files(lora_run, s3_bucket):
    """A SkyPilot run's output: its final adapter downloaded (checkpoints left where they are); a run with no final
    adapter there yet says how to pull its checkpoints. A real S3 server on loopback (moto)."""
    from ftctl import storage
    from ftctl.trainer import chat

    run = f"{s3_bucket}/runs/r1"
    for file in lora_run.iterdir():
        if file.is_file():
            storage.put_file(str(file), f"{run}/{file.name}")
    storage.put_file(str(lora_run / "checkpoint-3" / "ftctl-manifest.json"), f"{s3_bucket}/runs/r2/checkpoint-3/m.json")
    remote, local = chat.load(run), chat.load(str(lora_run))
    assert (
        remote.what
        == f"LoRA adapter {run} on {json.loads((lora_run / 'adapter_config.json').read_text())['base_model_name_or_path']}, fp32 on CPU"
    )
    question = [{"role": "user", "content": "What is the capital of France?"}]
    decoding = chat.Decoding(8)
    assert chat.answer(remote.model, remote.tokenizer, question, decoding) == chat.answer(
        local.model, local.tokenizer, question, decoding
    )
    with pytest.raises(
        FtctlError, match=f"holds no final model or adapter .* `ftctl sync pull {s3_bucket}/runs/r2 DIR`"
    ):
        chat.load(f"{s3_bucket}/runs/r2")


def test_a_run_in_object_storage_trained_past_its_final_adapter_talks_from_that_checkpoint(
    lora_run, s3_bucket, tmp_path
):
    """A relaunch of a store's run (-o max_steps raised) saved checkpoint-7 and stopped before its end: the store's
    top still holds the step-6 adapter, and chat/eval loaded it without a word (review 61 finding 10); now
    checkpoint-7, named in the load line."""
    import shutil

    from ftctl import storage
    from ftctl.checkpoints import write_manifest
    from ftctl.trainer import chat

    run = f"{s3_bucket}/runs/past"
    for file in lora_run.iterdir():
        if file.is_file():
            storage.put_file(str(file), f"{run}/{file.name}")
    seventh = shutil.copytree(lora_run / "checkpoint-6", tmp_path / "checkpoint-7")
    (seventh / "ftctl-manifest.json").unlink()
    write_manifest(str(seventh), 7, 1, "h")
    for file in seventh.iterdir():
        storage.put_file(str(file), f"{run}/checkpoint-7/{file.name}")
    loaded = chat.load(run)
    assert loaded.what.startswith(f"LoRA adapter {run}/checkpoint-7 on "), loaded.what


def test_merge_never_overwrites(lora_run, tmp_path):
    from ftctl.trainer.merge import merge

    out = merge(str(lora_run), str(tmp_path / "merged"))
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftover of the atomic write
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1 and modes["model.safetensors"] & 0o044, modes  # readable as the others
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FtctlError, match="holds the merge of this adapter as it is now .*: nothing to merge again"):
        merge(str(lora_run), str(out))
    with pytest.raises(FtctlError, match="already exists and is not empty: choose another --out"):
        merge(str(lora_run / "checkpoint-3"), str(out))  # another adapter's
    assert (out / "model.safetensors").read_bytes() == before
    data = tmp_path / "chats.jsonl"  # --out naming a file (the training data): it was offered `rm -r chats.jsonl`
    data.write_text('{"text": "x"}\n')
    with pytest.raises(FtctlError, match=r"--out .*chats.jsonl is a file, not a directory: choose another --out") as e:
        merge(str(lora_run), str(data))
    assert "rm -r" not in str(e.value) and data.read_text() == '{"text": "x"}\n'
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (merge(str(lora_run), str(empty)) / "model.safetensors").is_file()  # an empty directory is fine


def test_a_merge_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(lora_run, small_disk):
    """safetensors' own error ("I/O error: No space left on device (os error 28)") came out as a traceback."""
    from ftctl.trainer.merge import merge

    with pytest.raises(FtctlError) as got:
        merge(str(lora_run), str(small_disk / "merged"))  # 0.6 MB of weights onto 64 KB
    assert str(got.value).startswith(f"no space left on the disk of {small_disk}: saving failed with 0.1 MB free, and ")
    assert str(got.value).endswith("one save needs ~0.6 MB; free some space there or choose --out on another disk")
    assert not list(small_disk.iterdir())  # nor a hidden partial merge


def test_a_merge_into_a_read_only_directory_says_so_in_one_line(lora_run, small_disk):
    """mkdtemp's OSError came out as a traceback (after the base had loaded, which takes minutes for a large one)."""
    from ftctl.trainer.merge import merge

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(FtctlError, match=rf"^cannot write the merge into {small_disk}: Read-only file system; choose "):
        merge(str(lora_run), str(small_disk / "merged"))


def test_a_merge_removes_the_partial_merge_a_killed_one_left_beside_its_out(lora_run, tmp_path, caplog):
    """A merge killed while writing left RUN/.merged.XXXX, a model's size, hidden and never read. The next merge
    removes such leftovers, saying so, and leaves alone the one a merge writes now (it holds it locked)."""
    import fcntl

    from ftctl.trainer.merge import merge

    left = tmp_path / ".merged.partial-killed1"  # what a merge killed at its weights leaves
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"w" * 1000)
    busy = tmp_path / ".merged.partial-running"  # another merge's, writing now
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with caplog.at_level(logging.WARNING, logger="ftctl.trainer.merge"):
            out = merge(str(lora_run), str(tmp_path / "merged"))
    finally:
        os.close(fd)
    assert (out / "model.safetensors").is_file()
    assert not left.exists() and busy.is_dir()
    assert f"removed {left} (1 KB): a merge stopped before it finished left it" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merged.partial-running", "merged"]


def test_a_merge_of_an_adapter_trained_on_since_is_said_to_be_stale(tiny_model_dir, tiny_data, tmp_path, caplog):
    """RUN/merged kept the weights of the adapter it was merged from after the run trained on, and nothing said so:
    `ftctl chat RUN/merged` answered with the old ones. The trainer says it when it saves the new adapter, and
    merge's refusal names it."""
    import logging

    from ftctl.runpaths import MERGE_RECORD, MERGED_DIR
    from ftctl.trainer.merge import merge
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, save_steps=2), echo=lambda _: None)
    merged = merge(str(out), str(out / MERGED_DIR))
    assert json.loads((merged / MERGE_RECORD).read_text())["adapter"] == ".."  # RUN, from RUN/merged (task 129)
    with pytest.raises(FtctlError, match="as it is now"):  # the same adapter: nothing stale
        merge(str(out), str(merged))
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, save_steps=2, resume="auto")
        assert train(spec, plan, echo=lambda _: None)
    assert f"{merged} holds a merge of this run's adapter as it was before it trained on" in caplog.text
    with pytest.raises(FtctlError, match=r"holds the merge of this adapter as it was on .*; the run has trained on "):
        merge(str(out), str(merged))


def test_an_adapter_over_a_merge_merged_again_since_is_said(lora_run, tiny_data, tmp_path, caplog):
    """A lora run over RUN/merged; then RUN's merge made again (`rm -r RUN/merged && ftctl merge RUN`, as the
    trainer's next: line says after RUN trained on): chat, eval and merge of the run over it loaded the new weights
    under it without a word. The run keeps its base's merge record, and a load onto another merge says so."""
    from ftctl.runpaths import BASE_MERGE, MERGE_RECORD
    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.merge import merge
    from ftctl.trainer.run import train

    base = merge(str(lora_run), str(tmp_path / "merged"))
    over = tmp_path / "over"
    assert train(*make_run(base, tiny_data, over, "lora", max_steps=1), echo=lambda _: None)
    assert (over / BASE_MERGE).read_bytes() == (base / MERGE_RECORD).read_bytes()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        trained_mod.load(trained_mod.find(str(over)), "fp32")
    assert "is not the model" not in caplog.text
    record = json.loads((base / MERGE_RECORD).read_text())  # merged again from RUN as it is after training on
    (base / MERGE_RECORD).write_text(json.dumps({**record, "adapter_digest": "0" * 64, "merged_at": "later"}))
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        trained_mod.load(trained_mod.find(str(over)), "fp32")
    assert (
        f"{base} is not the model {over} trained over: it was merged again (at later, from {lora_run.resolve()} as it "
        f"is now; the adapter trained over the merge of {record['merged_at']}), so the adapter goes onto other weights"
    ) in caplog.text


def test_a_qlora_adapter_talks_on_the_4bit_base_it_trained_on(tiny_model_dir, tiny_data, tmp_path):
    """What it learned against, computing as the loss did (the training layout, not bitsandbytes' CPU inference
    repack), and what fits where the run fit; merge folds it into that 4-bit base dequantized (explore19)."""
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.trainer import chat
    from ftctl.trainer.methods import training_layout
    from ftctl.trainer.model import nf4_config
    from ftctl.trainer.run import train

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "q", "qlora", lora_r=4, max_steps=2, save_steps=2)
    out = Path(train(spec, plan, echo=lambda line: None).output_dir)
    loaded = chat.load(str(out))
    assert loaded.what == f"LoRA adapter {out} on {tiny_model_dir} in 4 bits, fp32 on CPU"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    quantized = {"quantization_config": nf4_config(torch.float32), "device_map": {"": "cpu"}}
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, **quantized), str(out))
    training_layout(by_hand)
    question = "What is the capital of France?"
    asked = chat.answer(loaded.model, loaded.tokenizer, [{"role": "user", "content": question}], chat.Decoding(8))
    assert asked == _greedy(by_hand.eval(), AutoTokenizer.from_pretrained(out), question, 8)
    from click.testing import CliRunner

    from ftctl.cli import main

    got = CliRunner().invoke(main, ["merge", str(out), "--out", str(tmp_path / "m")])
    assert got.exit_code == 0, got.output
    assert "as the run trained over it: 4-bit NF4 with double quantization from fp32" in got.stderr
    assert "--original-base" not in got.stderr  # the model chat answered as: no note that it differs


TURNS = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}<|im_start|>"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def test_a_run_trains_with_the_chat_template_path_it_names_and_chat_stops_at_its_end_of_turn(
    tiny_model_dir, tiny_data, tmp_path
):
    """TRL's chat_template_path: a Jinja file (here one closing assistant turns with a special token that is not
    eos, as Llama 3's <|eot_id|> is) replaces the model's template in training, is saved with the run's tokenizer,
    and `chat` stops an answer at that token."""
    from ftctl.preflight import check_chat_template
    from ftctl.trainer import chat
    from ftctl.trainer.masks import end_of_turn_ids
    from ftctl.trainer.run import train

    template = tmp_path / "turns.jinja"
    template.write_text(TURNS)
    assert check_chat_template(str(template)) == []
    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "t", "lora", lora_r=4, max_steps=1, chat_template_path=str(template)
    )
    out = Path(train(spec, plan, echo=lambda line: None).output_dir)
    loaded = chat.load(str(out))
    assert loaded.tokenizer.chat_template == TURNS  # saved with the run's tokenizer
    start = loaded.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert end_of_turn_ids(loaded.tokenizer) == [start]
    assert chat.stop_ids(loaded.model, loaded.tokenizer) == [loaded.tokenizer.eos_token_id, start]
    own = chat.load(str(tiny_model_dir))  # ChatML: its turns end in eos itself
    assert end_of_turn_ids(own.tokenizer) == [] and chat.stop_ids(own.model, own.tokenizer) == [
        own.tokenizer.eos_token_id
    ]


def test_a_chat_template_path_that_holds_none_is_one_line(tmp_path, tiny_model_dir):
    from ftctl.preflight import check_chat_template
    from ftctl.trainer.masks import chat_template_from

    (tmp_path / "plain.txt").write_text("USER: hi\n")
    with pytest.raises(FtctlError, match="holds no Jinja"):
        chat_template_from(str(tmp_path / "plain.txt"))
    assert "no such file or directory" in check_chat_template(str(tmp_path / "gone.jinja"))[0].text
    assert "holds no Jinja" in check_chat_template(str(tmp_path / "plain.txt"))[0].text
    assert chat_template_from(str(tiny_model_dir)).startswith("{%")  # a model directory: its tokenizer's template
    assert check_chat_template("org/some-instruct-model") == []  # a hub id: the trainer loads it


def test_merge_from_and_to_object_storage_never_overwrites(lora_run, s3_bucket, tmp_path, caplog):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from ftctl import storage
    from ftctl.cli import main
    from ftctl.trainer.merge import merge

    run, out = f"{s3_bucket}/runs/r1", f"{s3_bucket}/merged/r1"
    for file in lora_run.iterdir():
        if file.is_file():
            storage.put_file(str(file), f"{run}/{file.name}")
    got = CliRunner().invoke(main, ["merge", run, "--out", out])  # what it says: the URI whole, the store's size
    assert got.exit_code == 0 and got.stderr.startswith(f"merging the LoRA adapter {run} into "), got.output
    size = storage.file_sizes(out)["model.safetensors"] / 1e6
    assert size > 0.1 and f"merged into {out} ({size:.1f} MB of weights)" in got.stdout, got.stdout
    assert f"ftctl chat {out} -p" in got.stdout
    names = {e["name"] for e in storage.ls(out)}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names and "adapter_config.json" not in names
    storage.get_dir(out, str(tmp_path / "got"))
    AutoModelForCausalLM.from_pretrained(tmp_path / "got")  # a plain model
    with pytest.raises(FtctlError, match=f"{out} holds the merge of this adapter as it is now"):
        merge(run, out)
    # the run trained on (another adapter in the store): the merge there is named stale, and left as it was
    before = storage.read_bytes(f"{out}/model.safetensors")
    storage.put_file(str(lora_run / "checkpoint-3" / "adapter_model.safetensors"), f"{run}/adapter_model.safetensors")
    with pytest.raises(FtctlError, match="as it was on .*; the run has trained on since: delete it") as refused:
        merge(run, out)
    assert f"(`aws s3 rm --recursive {out}/ --endpoint-url " in str(refused.value)  # the command, not "from the store"
    assert storage.read_bytes(f"{out}/model.safetensors") == before
    # RUN/merged in the store: a run that trains on says so when it saves its new adapter (it looked at its node only)
    from ftctl.trainer.run import warn_stale_merge

    merge(run, f"{run}/merged")
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        warn_stale_merge(
            SimpleNamespace(remote_uri=run, local_dir=str(tmp_path), spec=SimpleNamespace(s3_endpoint_url=None))
        )
    assert f"{run}/merged holds a merge of this run's adapter as it was before it trained on" in caplog.text
    assert f"remove it (`aws s3 rm --recursive {run}/merged/ --endpoint-url " in caplog.text


def test_eval_scores_the_tokens_training_scores(lora_run, tiny_model_dir, tmp_path):
    """`ftctl eval`: one row's loss is transformers' own loss of it; several rows weigh by their scored tokens; the
    batch size (right padding) changes nothing; --compare puts the base's numbers above."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.cli import main
    from ftctl.trainer import chat
    from ftctl.trainer.data import build_dataset
    from ftctl.trainer.heldout import score

    rows = [
        {"messages": [{"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": "AMBER-42."}]},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello there, how are you?"},
            ]
        },
    ]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = chat.load(str(lora_run))
    dataset = build_dataset(str(tmp_path / "held.jsonl"), loaded.tokenizer, 128)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(lora_run)).eval()
    own, tokens = [], []
    with torch.no_grad():
        for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
            own.append(float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss))
            tokens.append(sum(label != -100 for label in labels[1:]))
    one = score(loaded.model, loaded.tokenizer, dataset.select([0]))
    assert one.loss == pytest.approx(own[0], rel=1e-5) and one.tokens == tokens[0]
    both = [score(loaded.model, loaded.tokenizer, dataset, batch_size=b) for b in (1, 2)]
    weighted = (own[0] * tokens[0] + own[1] * tokens[1]) / sum(tokens)
    assert both[0].loss == pytest.approx(weighted, rel=1e-5) and both[1].loss == pytest.approx(weighted, rel=1e-5)
    assert both[0].token_accuracy == both[1].token_accuracy and both[0].rows == 2

    got = CliRunner().invoke(main, ["eval", str(lora_run), "--data", str(tmp_path / "held.jsonl"), "--compare"])
    assert got.exit_code == 0, got.output
    base, tuned = got.stdout.splitlines()
    assert base.startswith("base:  loss ") and tuned.startswith(f"tuned: loss {both[0].loss:.4f}  perplexity")

    # a run trained with assistant_only_loss=false is scored on every token, as it trained
    every = tmp_path / "every"
    shutil.copytree(lora_run, every)
    recorded = json.loads((every / "spec.json").read_text())
    recorded["spec"]["assistant_only_loss"] = False
    (every / "spec.json").write_text(json.dumps(recorded))
    got = CliRunner().invoke(main, ["eval", str(every), "--data", str(tmp_path / "held.jsonl")])
    scored = sum(len(ids) - 1 for ids in dataset["input_ids"])
    assert got.exit_code == 0 and got.stdout.endswith(f"(2 rows, {scored:,} scored tokens)\n"), got.output


def test_eval_scores_each_dataset_then_all_together(lora_run, tmp_path):
    """Two datasets: each scored on its own, base above tuned, then all of them, which is what the two read as one
    file score (each row weighs by its scored tokens wherever it is)."""
    from ftctl.cli import main

    def chat_rows(*pairs):
        return "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in pairs
        )

    a = chat_rows(("What is the code?", "AMBER-42."), ("hi", "Hello there, how are you?"))
    b = chat_rows(("Name a river.", "The Danube, which runs through ten countries."))
    (tmp_path / "a.jsonl").write_text(a)
    (tmp_path / "b.jsonl").write_text(b)
    (tmp_path / "ab.jsonl").write_text(a + b)
    got = CliRunner().invoke(
        main,
        ["eval", str(lora_run), "--data", str(tmp_path / "a.jsonl"), "--data", str(tmp_path / "b.jsonl"), "--compare"],
    )
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    assert [line for line in lines if not line.startswith("  ")] == [
        f"{tmp_path / n}:" for n in ("a.jsonl", "b.jsonl")
    ] + ["all:"]
    assert [line.split(":")[0].strip() for line in lines if line.startswith("  ")] == ["base", "tuned"] * 3
    assert "(2 rows," in lines[2] and "(1 row," in lines[5] and "(3 rows," in lines[8]
    one = CliRunner().invoke(main, ["eval", str(lora_run), "--data", str(tmp_path / "ab.jsonl"), "--compare"])
    assert one.exit_code == 0, one.output
    base, tuned = one.stdout.splitlines()
    loss = re.compile(r"loss (\d+\.\d+)  perplexity [\d,.]+  token accuracy (\d\.\d+)  \((.*)\)")
    assert loss.search(lines[7]).groups() == loss.search(base).groups()
    assert loss.search(lines[8]).groups() == loss.search(tuned).groups()


def test_eval_out_of_gpu_memory_says_which_flag_to_lower(lora_run, tmp_path, monkeypatch):
    """No GPU here: the model's forward raises PyTorch's own error, as a card too small for the batch's logits does."""
    import torch

    from ftctl.trainer import chat
    from ftctl.trainer.data import build_dataset
    from ftctl.trainer.heldout import score

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.83 GiB.")

    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]}] * 3
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = chat.load(str(lora_run))
    dataset = build_dataset(str(tmp_path / "held.jsonl"), loaded.tokenizer, 128)
    monkeypatch.setattr(loaded.model, "forward", out_of_memory)
    with pytest.raises(FtctlError, match=r"scoring 3 row\(s\) of up to \d+ tokens at a time .*: use --batch-size 2\.$"):
        score(loaded.model, loaded.tokenizer, dataset, batch_size=4)
    with pytest.raises(FtctlError, match=r"use a shorter --max-length\.$"):
        score(loaded.model, loaded.tokenizer, dataset, batch_size=1)


def test_merge_through_the_cli_says_what_it_wrote(lora_run, tmp_path):
    from click.testing import CliRunner

    from ftctl.cli import main

    out = tmp_path / "m"
    got = CliRunner().invoke(main, ["merge", str(lora_run), "--out", str(out)])
    assert got.exit_code == 0, got.output
    size = (out / "model.safetensors").stat().st_size / 1e6  # the tiny model's: MB
    assert got.stderr.startswith(f"merging the LoRA adapter {lora_run} into "), got.stderr
    assert "QLoRA" not in got.stderr  # the note of a qlora run's merge (QLORA_NOTE)
    # the weights as readable as the rest (safetensors wrote them 0600), a tokenizer class transformers 4 knows too
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct((out / "config.json").stat().st_mode & 0o777)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert got.stdout.splitlines()[-3:] == [
        f"merged into {out} ({size:.1f} MB of weights): a plain transformers model, no PEFT needed",
        "next:",
        f"  ftctl chat {out} -p 'A question'",
    ]


def test_an_adapters_base_not_on_this_machine_is_said_with_the_fix(lora_run, tmp_path):
    """A run copied from the machine it trained on names its base there (an absolute path): chat, eval and merge said
    '--model PATH: no such directory', a flag none of them takes (explore17)."""
    import shutil

    from click.testing import CliRunner

    from ftctl.cli import main

    run = shutil.copytree(lora_run, tmp_path / "copied run", ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((run / "adapter_config.json").read_text())
    gone = str(tmp_path / "on the other machine" / "base")
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": gone}))
    for args in (["merge", str(run), "--out", str(tmp_path / "m")], ["chat", str(run), "-p", "hi"]):
        got = CliRunner().invoke(main, args)
        assert got.exit_code == 2, got.output
        assert (
            f"error: the adapter's base {gone}: no such directory; put the same model at that path here" in got.output
        )
        assert "--model" not in got.output and "Traceback" not in got.output
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.partial-*"))
    got = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "m"), "--base", gone])
    assert got.exit_code == 2 and f"error: --base {gone}: no such directory;" in got.output, got.output


def test_merge_into_a_pre_quantized_base_says_to_merge_into_the_model_it_was_made_from(
    lora_run, tiny_model_dir, tmp_path
):
    """An adapter trained over a *-bnb-4bit base: transformers cannot save merged 4-bit weights as a plain model (a
    NotImplementedError traceback after the whole load); the merge names --base, which takes the unquantized model."""
    import json
    import shutil

    from ftctl.trainer.merge import merge

    quantized = tmp_path / "base-bnb-4bit"
    shutil.copytree(tiny_model_dir, quantized)  # its config.json says 4-bit: what the merge reads first
    config = json.loads((quantized / "config.json").read_text())
    q = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": q}))
    run = shutil.copytree(lora_run, tmp_path / "run over 4-bit")
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(quantized)}))
    with pytest.raises(
        FtctlError, match=r"stored quantized \(bitsandbytes 4-bit\).*ftctl merge '.*run over 4-bit' --base"
    ):
        merge(str(run), str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()
    assert (merge(str(run), str(tmp_path / "m"), base=str(tiny_model_dir)) / "model.safetensors").is_file()
