"""What `ftctl chat`, `ftctl eval` and `ftctl merge` give after a real CPU lora run of the tiny model is what the
user's own transformers/PEFT code gives (explore45): chat's greedy answers are a plain ``PeftModel`` +
``apply_chat_template(add_generation_prompt=True)`` + ``generate(do_sample=False)`` with the run's generation config,
a system message and a multi-turn history included; eval's loss is the mean over every assistant token (their
end-of-turn included) computed from the chat template's own renders, and the trainer's logged eval_loss is the same
rows' batch means weighted by rows (TRL's, docs/data.md); the merge loads in plain transformers with the PeftModel's
logits. Drift in any of them fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.trainer_fixtures import TINY_ROWS, make_run

ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
EVAL_BATCH = 2  # the run's per_device_train_batch_size (make_run), which its evaluation takes


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished lora run with held-out rows it never trained on, evaluated at its end."""
    import torch

    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    torch.set_num_threads(1)
    where = tmp_path_factory.mktemp("parity233")
    rows = json.loads(demo_data_path().read_text())
    (where / "train.json").write_text(json.dumps(rows[:TINY_ROWS]))
    (where / "held.json").write_text(json.dumps(rows[TINY_ROWS + 2 : TINY_ROWS + 8]))  # not a training row's copy
    spec, plan = make_run(
        tiny_model_dir, where / "train.json", where / "run", "lora", max_steps=4, save_steps=4,
        eval_data_path=str(where / "held.json"),
    )  # fmt: skip
    return Path(train(spec, plan, echo=lambda line: None).output_dir)


def _plain_model(run: Path):
    """The user's own: the base the adapter names, the adapter on it, the tokenizer saved with the run, and the run's
    generation config where it saved one (docs/results.md "Generation config")."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    base = json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run)).eval()
    if (run / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(run)
    return model, AutoTokenizer.from_pretrained(run)


def _plain_answer(model, tokenizer, messages, max_new_tokens) -> list[int]:
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_chat_answers_as_plain_generate_does(run):
    """Single prompts (-p), then a conversation with --system: each turn's tokens are plain generate()'s, and the
    answer ends where the run's template ends a turn (<|im_end|>, the tiny model's eos)."""
    from ftctl.trainer import chat

    model, tokenizer = _plain_model(run)
    loaded = chat.load(str(run))
    questions = ["What is the capital of France?", "Name a river."]
    said = chat.ask(loaded, questions, chat.Decoding(max_new_tokens=12), echo=lambda line: None)
    for question, answer in zip(questions, said):
        tokens = _plain_answer(model, tokenizer, [{"role": "user", "content": question}], 12)
        assert answer == tokenizer.decode(tokens, skip_special_tokens=True).strip()
        assert len(tokens) == 12 or tokens[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert any(said), said  # not all empty: the comparison compares tokens

    lines, turns = iter(["hi", "Name a river.", ""]), []
    decoding = chat.Decoding(max_new_tokens=10, system="Be brief.")
    chat.converse(loaded, decoding, read=lambda prompt: next(lines), echo=turns.append, interactive=False)
    messages = [{"role": "system", "content": "Be brief."}]
    for question, answer in zip(["hi", "Name a river."], turns):
        messages.append({"role": "user", "content": question})
        tokens = _plain_answer(model, tokenizer, messages, 10)
        reply = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        assert answer.strip() == reply
        messages.append({"role": "assistant", "content": reply})
    assert len(turns) == 2


def _plain_labels(tokenizer, messages, max_length):
    """(ids, labels) of one conversation as the user would mask it from the template's renders: each assistant turn
    from the end of the prompt before it (add_generation_prompt) to its end-of-turn token (the newline after is no
    answer), every other token -100; cut at the run's max length."""

    def tokens(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    ids = tokens(tokenizer.apply_chat_template(messages, tokenize=False))
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(tokens(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)))
            end = len(tokens(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False).rstrip("\n")))
            labels[start:end] = ids[start:end]
    return ids[:max_length], labels[:max_length]


def test_eval_is_the_plain_token_mean_and_the_trainers_the_row_weighted_batch_mean(run):
    import torch

    from ftctl.cli import main

    model, tokenizer = _plain_model(run)
    held = Path(json.loads((run / "spec.json").read_text())["spec"]["eval_data_path"])
    rows = [
        _plain_labels(tokenizer, [{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]], 128)
        for row in json.loads(held.read_text())
    ]
    total = count = 0.0
    means = []
    with torch.no_grad():
        for ids, labels in rows:
            loss = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)
            scored = sum(label != -100 for label in labels[1:])
            total, count = total + loss * scored, count + scored
        for lo in range(0, len(rows), EVAL_BATCH):  # the trainer's: right-padded batches, each one's token mean
            batch = rows[lo : lo + EVAL_BATCH]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([la + [-100] * (width - len(la)) for _, la in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            means += [float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)] * len(batch)

    got = CliRunner().invoke(main, ["eval", str(run), "--data", str(held)])
    assert got.exit_code == 0, got.output
    assert got.stdout.startswith(f"loss {total / count:.4f}  perplexity "), (got.stdout, total / count)
    assert got.stdout.endswith(f"({len(rows)} rows, {int(count)} scored tokens)\n")
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    logged = [r["eval_loss"] for r in records if r.get("event") == "eval"][-1]
    assert logged == pytest.approx(sum(means) / len(means), abs=2e-5)
    assert abs(logged - total / count) > 1e-4  # the two weightings differ here: docs/results.md says which is which


def test_the_merge_loads_in_plain_transformers_with_the_adapters_logits(run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.merge import merge

    model, tokenizer = _plain_model(run)
    merged = merge(str(run), str(tmp_path / "merged"))
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )["input_ids"]  # fmt: skip
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_sampled_answers_take_the_generation_configs_top_p_as_generate_does(run):
    """--temperature without --top-p: the model's generation config gives top_p (Qwen2.5-Instruct's 0.8), as the
    user's own generate(do_sample=True, temperature=...) takes it; ftctl passed 1.0, sampling from the whole
    distribution. Seeded alike, the answers are the same tokens."""
    import torch

    from ftctl.trainer import chat

    loaded = chat.load(str(run))
    config = loaded.model.get_base_model().generation_config
    config.top_p, config.top_k = 0.3, None
    question = [{"role": "user", "content": "Name a river."}]
    torch.manual_seed(0)
    said = chat.answer(loaded.model, loaded.tokenizer, question, chat.Decoding(max_new_tokens=12, temperature=1.5))
    inputs = loaded.tokenizer.apply_chat_template(
        question, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=1.5)
    assert said == loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_eval_reads_the_field_names_and_text_field_the_run_read_its_data_by(run, tmp_path, monkeypatch):
    """read_as_trained: the run's dataset_text_field, and its data_columns of the --data given (by the resolved path:
    a relative name finds the run's absolute one), for `ftctl eval` (cli.eval_) to read the rows as the run did."""
    import shutil

    from ftctl.trainer.heldout import read_as_trained

    named = tmp_path / "run"
    shutil.copytree(run, named)
    recorded = json.loads((named / "spec.json").read_text())
    recorded["spec"] |= {"dataset_text_field": "body", "data_columns": {str(tmp_path / "d.jsonl"): '{"x": "y"}'}}
    (named / "spec.json").write_text(json.dumps(recorded))
    monkeypatch.chdir(tmp_path)
    assert read_as_trained(str(named), ["d.jsonl", "e.jsonl"]) == {
        "text_field": "body",
        "columns": {"d.jsonl": '{"x": "y"}'},
    }
    assert read_as_trained(str(named / "checkpoint-4"), ["e.jsonl"]) == {"text_field": "body"}
    assert read_as_trained(str(tmp_path / "nowhere"), ["d.jsonl"]) == {"text_field": "text"}


def test_eval_reads_a_runs_own_held_out_file_by_the_field_names_the_run_read_it_by(run, tmp_path):
    """An axolotl run file's test_datasets entry that names its fields otherwise (field_messages, system_prompt: the
    run's data_columns) trained and evaluated on those rows; `ftctl eval RUN --data` of that file read it without
    them: refused as no conversation. Read as the run read it, it scores as the same rows in ftctl's own names."""
    import shutil

    from ftctl.cli import main

    named = tmp_path / "run"
    shutil.copytree(run, named)
    turns = [{"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": "AMBER-42."}]
    (tmp_path / "dialog.jsonl").write_text(json.dumps({"dialog": turns}) + "\n")
    system = [{"role": "system", "content": "Answer in one word."}]
    (tmp_path / "messages.jsonl").write_text(json.dumps({"messages": system + turns}) + "\n")
    recorded = json.loads((named / "spec.json").read_text())
    columns = {"messages": "dialog", "system_prompt": "Answer in one word."}
    recorded["spec"]["data_columns"] = {str(tmp_path / "dialog.jsonl"): json.dumps(columns)}
    (named / "spec.json").write_text(json.dumps(recorded))

    scores = [
        CliRunner().invoke(main, ["eval", str(named), "--data", str(tmp_path / name)])
        for name in ("dialog.jsonl", "messages.jsonl")
    ]
    assert [got.exit_code for got in scores] == [0, 0], scores[0].output
    assert scores[0].stdout == scores[1].stdout
