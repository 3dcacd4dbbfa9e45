"""Users arriving from other tools (helper 140, explore32): reasoning fields and rendered-text rows that trained other
tokens than their tool would, rows whose fields are named otherwise, a dataset's weight written after its path,
data_weights read as shares of the mix, and FastChat's full fine-tuning line taken as LoRA."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from ftctl.errors import FtctlError
from ftctl.trainer.data import mix, prepare_data, weights_as_shares
from ftctl.trainer.formats import resolve_files, to_row
from tests.test_data import EOT, trained_spans, write_jsonl

REASONING = "Six times seven is forty-two."
ROW = {
    "messages": [
        {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": "42", "reasoning_content": REASONING},
    ]
}


def test_reasoning_trains_with_the_answer_where_the_template_writes_it_and_is_refused_where_not(
    tmp_path, tiny_tokenizer, monkeypatch
):
    """A TRL/Unsloth reasoning row (an assistant turn's reasoning_content, as Qwen3's template and TRL read it) trained
    the answer alone: the field was dropped before the template saw it, silently. It is given to the template: Qwen3's
    writes it (<think> block), trained with the answer; a template that writes none of it (ChatML's) refuses the rows,
    naming the three ways on."""
    data = write_jsonl(tmp_path / "r.jsonl", [ROW, {**ROW, "id": 2}])
    report, _ = prepare_data(data, tiny_tokenizer, 256)
    assert len(report.errors) == 1 and report.bad_rows == 2, report.errors
    assert "the chat template does not write the assistant turns' 'reasoning_content'" in report.errors[0]
    assert "<think>...</think>" in report.errors[0] and "drop 'reasoning_content'" in report.errors[0]
    qwen3 = (files("trl") / "chat_templates" / "qwen3.jinja").read_text()
    monkeypatch.setattr(tiny_tokenizer, "chat_template", qwen3)  # the fixture is shared
    report, dataset = prepare_data(data, tiny_tokenizer, 256)
    assert report.ok, report.errors
    spans = trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"])
    assert spans == [f"<think>\n{REASONING}\n</think>\n\n42{EOT}"], spans
    empty = {"messages": [ROW["messages"][0], {**ROW["messages"][1], "reasoning_content": None}]}  # arrow's null
    assert "reasoning_content" not in to_row("a", empty).messages[1]


def test_rows_rendered_by_a_chat_template_already_name_the_rows_to_give(tmp_path, tiny_tokenizer):
    """Unsloth's and TRL's formatting_prompts_func ({"text": apply_chat_template(messages)}) trained every token,
    the prompts' too, with a warning that said only to remove the special tokens from the text."""
    text = tiny_tokenizer.apply_chat_template(
        ROW["messages"][:1] + [{"role": "assistant", "content": "42"}], tokenize=False
    )
    report, _ = prepare_data(write_jsonl(tmp_path / "t.jsonl", [{"text": text}]), tiny_tokenizer, 256)
    (warning,) = report.warnings
    assert warning.startswith("1 plain-text row(s) hold conversations a chat template rendered already")
    assert "'<|im_start|>user' in t.jsonl line 1" in warning and "'messages'" in warning, warning
    assert "train_on_responses_only" in warning


@pytest.mark.parametrize(
    "record, said",
    [
        ({"instruction": "Q", "context": "C", "response": "A"}, "rename 'context' -> 'input', 'response' -> 'output'"),
        ({"question": "Q", "answer": "A"}, "rename 'question' -> 'instruction', 'answer' -> 'output'"),
        ({"prompt": "Q", "response": "A"}, "rename 'prompt' -> 'instruction', 'response' -> 'output'"),
        ({"chat": [{"role": "user", "content": "Q"}]}, "'chat' holds role/content turns: rename it 'messages'"),
    ],
)
def test_a_question_and_answer_named_otherwise_say_the_renames(record, said):
    """Dolly's instruction/context/response, GSM8K's question/answer, axolotl's field_messages column were "not a
    conversation" with the list of formats; prompt + response was called RL data with nothing to train on."""
    (problem,) = to_row("a.jsonl line 1", record).problems
    assert said in problem and "RL data" not in problem, problem


def test_sharegpt_turns_in_messages_and_gemmas_model_role_are_read():
    """{"messages": [{"from": "human", "value": ...}]} (a ShareGPT file converted halfway) was "turn 1 must be an
    object with 'role' and 'content'"; turns stored as JSON text "'messages' is a string"; Gemma's and Gemini's role
    "model" was an unknown role."""
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    assert [m["role"] for m in to_row("a", {"messages": turns}).messages] == ["user", "assistant"]
    as_text = to_row(
        "a", {"messages": json.dumps([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}])}
    )
    assert not as_text.problems and len(as_text.messages) == 2, as_text.problems  # a Parquet column of json.dumps
    gemma = [{"role": "user", "content": "Q"}, {"role": "model", "content": "A"}]
    for key in ("messages", "conversations"):
        row = to_row("a", {key: gemma})
        assert not row.problems and row.messages[1] == {"role": "assistant", "content": "A"}, row.problems


def test_a_weight_written_after_the_path_names_data_weights(tmp_path, monkeypatch):
    """`--data chats.jsonl:0.7` (a weight as other tools spell it) was "No data at chats.jsonl:0.7. Did you mean
    'chats.jsonl'?", which drops the weight."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(FtctlError, match=r"data_weights, .*--data chats.jsonl \.\.\. -o data_weights=0.7,"):
        resolve_files("chats.jsonl:0.7")
    with pytest.raises(FtctlError, match="Did you mean 'chats.jsonl'"):
        resolve_files("chats.json")  # no weight: as before


def test_data_weights_that_read_as_shares_say_the_mix_they_make():
    """data_weights=0.7,0.3 (interleave_datasets' probabilities, LLaMA-Factory's interleave_probs) over 20 and 400
    rows mixed 14 and 120 rows, 10% and 90%, said nowhere; now the line says it and the weights for 70/30."""
    said = weights_as_shares([("a.jsonl", 20), ("b.jsonl", 400)], [("a.jsonl", 0.7), ("b.jsonl", 0.3)])
    assert "a.jsonl 14 rows (10%), b.jsonl 120 rows (90%)" in said and "-o data_weights=1,0.0214" in said, said
    assert weights_as_shares([("a", 100), ("b", 100)], [("a", 0.5), ("b", 0.5)]) is None  # alike in size
    assert weights_as_shares([("a", 20), ("b", 400)], [("a", 1), ("b", 0.5)]) is None  # multipliers, as meant
    import datasets

    rows = datasets.Dataset.from_dict({"input_ids": [[1]] * 420, "source": [0] * 20 + [1] * 400})
    _, line = mix(rows, [("a.jsonl", 0.7), ("b.jsonl", 0.3)], seed=1)
    assert "\nwarning: data_weights 0.7,0.3 sum to 1, but they are no shares of the mix" in line


def test_fastchats_full_fine_tuning_line_asks_for_method_fft():
    """FastChat's train.py line (learning_rate 2e-5, no LoRA flag) became a line that trains LoRA, the default, at
    2e-5, where adapters barely move; a run file with that rate asks for --method, a pasted line did not."""
    from click.testing import CliRunner

    from ftctl.cli import main

    line = ["launch", "--model_name_or_path", "m", "--data_path", "d.json", "--learning_rate", "2e-5", "--bf16", "True"]
    said = CliRunner().invoke(main, line).output
    assert "ftctl launch --model m --data d.json -o learning_rate=2e-5 -o bf16=True --method fft" in said, said
    assert "(--method fft: learning_rate 2e-05 with no LoRA flag is FastChat's train.py" in said
    for lora in (["--lora_r", "8"], ["--q_lora", "True"], ["--method", "lora"]):
        assert "--method fft" not in CliRunner().invoke(main, line + lora).output
    assert "--method fft" not in CliRunner().invoke(main, line[:5] + ["--learning_rate", "2e-4"]).output


def test_axolotls_template_free_segments_train_their_labelled_text_as_written(tmp_path, tiny_tokenizer):
    """axolotl's input_output rows ({"segments": [{"label", "text"}]}, its template-free format) were "not a
    conversation": now their text trains as written, the loss on the segments labelled true, no bos or eos added (the
    text writes its own), no warning for the special tokens it writes on purpose."""
    prompt = "<|im_start|>user\nWhat is 6*7?<|im_end|>\n<|im_start|>assistant\n"
    rows = [
        {
            "segments": [
                {"label": False, "text": prompt},
                {"label": True, "text": f"42{EOT}"},
                {"label": False, "text": "\n"},
            ]
        },
        {"segments": [{"label": False, "text": "Q: hi\nA:"}, {"label": True, "text": " hello"}]},
        {"segments": [{"text": "x"}]},
    ]
    report, dataset = prepare_data(write_jsonl(tmp_path / "s.jsonl", rows), tiny_tokenizer, 256)
    assert report.errors == ["s.jsonl line 3: segment 1 has no 'label' true or false: say whether its text is trained"]
    assert not report.warnings and report.stats.formats == {"segments": 2}, report.warnings
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [[f"42{EOT}"], [" hello"]]
    assert tiny_tokenizer.decode(dataset[1]["input_ids"]) == "Q: hi\nA: hello"  # no eos added
    _, every = prepare_data(write_jsonl(tmp_path / "e.jsonl", rows[1:2]), tiny_tokenizer, 256, every_token=True)
    assert trained_spans(tiny_tokenizer, every[0]["input_ids"], every[0]["labels"]) == ["Q: hi\nA: hello"]


# --- needs /work/notes/task-140-extra.patch (ftctl/spec.py's ALIASES and MEANT, ftctl/preflight.py) ---
@pytest.mark.parametrize(
    "given, key, value",
    [
        ("test_size=0.05", "eval_split", 0.05),
        ("validation_file=held.jsonl", "eval_data_path", "held.jsonl"),
        ("model_name=org/m", "model_name_or_path", "org/m"),
        ("random_state=3407", "seed", 3407),
    ],
)
def test_other_tools_names_for_a_key_are_that_key(given, key, value):
    """datasets' test_size was "Did you mean 'disk_size'?", Unsloth's model_name "Did you mean 'model_params'?",
    run_clm's validation_file and Unsloth's random_state "Unknown key"."""
    from ftctl.spec import build

    assert getattr(build(None, None, [given]), key) == value


@pytest.mark.parametrize(
    "given, said",
    [
        ("interleave_probs=0.7,0.3", "a dataset's weight is how many times its rows train an epoch: data_weights"),
        ("mix_strategy=concat", "Datasets are mixed by data_weights"),
        ("eval_ratio=0.05", "The held-out share is eval_split"),
        ("validation_split_percentage=5", "eval_split: 0.05 for 5"),
        ("train_on_responses_only=true", "what ftctl does by default (assistant_only_loss: true)"),
        ("use_gradient_checkpointing=unsloth", "is gradient_checkpointing here"),
        ("unfrozen_parameters=^lm_head", "--method sft trains the top trainable_layers blocks"),
        ("rl=dpo", "axolotl's rl (DPO, KTO"),
    ],
)
def test_other_tools_keys_say_what_ftctl_does(given, said):
    """mix_strategy was "Did you mean 'strategy'?", eval_ratio "Did you mean 'warmup_ratio'?", the others "Unknown
    key ... `ftctl keys` lists them"."""
    from ftctl.spec import build

    with pytest.raises(FtctlError, match=said.replace("(", r"\(").replace(")", r"\)")):
        build(None, None, [given])


def test_the_launch_says_data_weights_that_read_as_shares(tmp_path):
    """The preflight counts the rows of small local data: data_weights=0.7,0.3 over 20 and 400 rows is said before the
    job (a warning: the mix may be meant), not only in the trainer's log."""
    from ftctl.preflight import WARNING, check_row_counts
    from ftctl.spec import build

    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    a, b = write_jsonl(tmp_path / "a.jsonl", [row] * 20), write_jsonl(tmp_path / "b.jsonl", [row] * 400)
    (said,) = check_row_counts(build({"data_path": {a: 0.7, b: 0.3}}))
    assert said.level == WARNING and "20 rows x" not in said.what and "(10%)" in said.what, said.what
