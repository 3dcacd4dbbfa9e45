"""What a first-time user hits on the trainer's side: a held-out split that holds nothing, a file of rows whose
fields no format knows, a lora_target_modules typo. Each is one line saying the fix, before training."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.trainer_fixtures import make_run


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ------------------------------------------------------------------------------------------ eval_split


def test_an_eval_split_that_holds_out_no_row_is_refused_with_the_split_that_would(tmp_path, tiny_tokenizer):
    """16 rows, each twice: eval_split=0.05 holds out 1 row, but a row goes with its copy, so none was held out
    and the first evaluation crashed on a missing eval_loss. Now: one line with the eval_split that holds a pair
    out, and that split works."""
    from ftctl.trainer.data import build_datasets

    data = write_jsonl(tmp_path / "pairs.jsonl", [chat(i % 8) for i in range(16)])
    spec = build({"data_path": data, "eval_split": 0.05, "model_max_length": 64, "seed": 3})
    said = []
    with pytest.raises(FtctlError) as e:
        build_datasets(spec, tiny_tokenizer, said.append)
    message = str(e.value)
    assert "\n" not in message and not said  # one line, and no "the 0 held out are none of ..."
    assert message.startswith("eval_split=0.05 holds out 1 of the 16 rows of ")
    assert "none is held out to evaluate on" in message
    assert "-o eval_split=0.13" in message and "--eval-data FILE" in message and "-o eval_split=0." in message

    train, held = build_datasets(replace(spec, eval_split=0.13), tiny_tokenizer)
    assert (len(train), len(held)) == (14, 2)


def test_an_eval_split_of_rows_all_alike_names_only_the_fixes_that_work(tmp_path, tiny_tokenizer):
    from ftctl.trainer.data import build_datasets

    data = write_jsonl(tmp_path / "same.jsonl", [chat(0)] * 10)
    spec = build({"data_path": data, "eval_split": 0.2, "model_max_length": 64})
    with pytest.raises(FtctlError, match="none is held out") as e:
        build_datasets(spec, tiny_tokenizer)
    assert "Raise it" not in str(e.value)
    assert str(e.value).endswith(
        "Give held-out data with --eval-data FILE, or train without evaluation: -o eval_split=0."
    )


def test_an_eval_split_that_leaves_no_training_row_says_every_fix(tmp_path, tiny_tokenizer):
    from ftctl.trainer.data import build_datasets

    data = write_jsonl(tmp_path / "one.jsonl", [chat(0)])
    with pytest.raises(FtctlError, match="leaves none to train on") as e:
        build_datasets(build({"data_path": data, "eval_split": 0.05, "model_max_length": 64}), tiny_tokenizer)
    assert "--eval-data FILE" in str(e.value) and "-o eval_split=0" in str(e.value)


def test_a_run_whose_split_holds_nothing_out_stops_before_its_first_step(tiny_model_dir, tmp_path, one_thread):
    from ftctl.trainer.run import train

    data = write_jsonl(tmp_path / "pairs.jsonl", [chat(i % 8) for i in range(16)])
    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, data, out, eval_split=0.05, eval_steps=1, max_steps=2)
    with pytest.raises(FtctlError, match="none is held out to evaluate on"):
        train(spec, plan, echo=lambda _: None)
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------ one problem, many rows


def test_rows_whose_fields_no_format_knows_are_one_line(tmp_path, tiny_tokenizer):
    from ftctl.trainer.data import build_dataset, check_data

    data = write_jsonl(tmp_path / "qa.jsonl", [{"alpha": f"q{i}", "beta": f"a{i}"} for i in range(1000)])
    report = check_data(data, tiny_tokenizer, 64)
    assert report.errors == [
        "qa.jsonl lines 1-1000 (all 1,000 rows): not a conversation: keys 'alpha', 'beta'; expected "
        "'conversations' (ShareGPT: from/value turns), 'messages' (OpenAI: role/content turns), 'instruction' + "
        "'output' (Alpaca), 'prompt' + 'completion' (TRL's prompt-completion) or 'text' (plain text)"
    ]
    rendered = report.render()
    assert "Errors (1):" in rendered and "more" not in rendered and rendered.count("expected 'conversations'") == 1
    with pytest.raises(FtctlError) as e:
        build_dataset(data, tiny_tokenizer, 64)
    assert str(e.value).splitlines() == [
        # no row is free of errors: no --write-valid hint (it would write nothing)
        f"1,000 of 1,000 rows with errors (1 listed) in the data {data}; fix or remove these rows:",
        f"  {report.errors[0]}",
    ]


def test_a_problem_shared_by_rows_names_them_and_one_of_one_row_stays_its_own(tmp_path, tiny_tokenizer):
    """Rows 2, 4, ..., 14 are empty text (the same problem: one line, its first runs of rows and how many more);
    two unknown roles differ (a line each, where they are); one good row apart from them."""
    rows: list[dict] = []
    for i in range(1, 17):
        if i % 2 == 0 and i <= 14:
            rows.append({"text": ""})
        elif i == 3:
            rows.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "gtp", "value": "x"}]})
        elif i == 5:
            rows.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]})
        else:
            rows.append(chat(i))
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    from ftctl.trainer.data import check_data

    report = check_data(data, tiny_tokenizer, 64)
    assert len(report.errors) == 3, report.render()
    assert report.errors[0] == "mixed.jsonl lines 2, 4, 6, 8, 10 and 2 more (7 rows): empty turn: 'text' is empty"
    assert report.errors[1].startswith("mixed.jsonl line 3: unknown role 'gtp' in turn 2")
    assert report.errors[2].startswith("mixed.jsonl line 5: unknown role 'bot' in turn 2")
    assert report.stats.rows == 7


def test_a_problem_of_rows_of_several_files_names_each_file(tmp_path, tiny_tokenizer):
    from ftctl.trainer.data import check_data

    a = write_jsonl(tmp_path / "a.jsonl", [{"q": 1}] * 3)
    (tmp_path / "b.json").write_text(json.dumps([{"q": 2}, {"q": 3}]))
    report = check_data(f"{a},{tmp_path / 'b.json'}", tiny_tokenizer, 64)
    assert len(report.errors) == 1
    assert report.errors[0].startswith("a.jsonl lines 1-3, b.json rows 1-2 (all 5 rows): not a conversation: keys 'q'")


def test_data_check_says_a_format_problem_once(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from ftctl.cli import main

    data = write_jsonl(tmp_path / "qa.jsonl", [{"alpha": "q", "beta": "a"}] * 60 + [chat(1)])
    got = CliRunner().invoke(main, ["data", "check", data, "--model", str(tiny_model_dir)])
    assert got.exit_code == 1
    assert "Errors (1):\n  qa.jsonl lines 1-60 (60 rows): not a conversation: keys 'alpha', 'beta'" in got.stdout
    assert got.stdout.count("expected 'conversations'") == 1 and "more" not in got.stdout
    assert "FAILED: 60 of 61 rows with errors (1 listed)" in got.stdout  # rows, not error lines


# ------------------------------------------------------------------------------------------ lora_target_modules

LINEAR = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize(
    ("targets", "named", "hint"),
    [
        ("q_prj,v_proj", "'q_prj'", " Did you mean 'q_proj'?"),  # a typo beside a good name: PEFT kept v_proj only
        ("5", "'5'", ""),  # `lora_target_modules: 5`: PEFT's ValueError dumped every module
        ("q_prj, up_prj", "'q_prj' or 'up_prj'", " Did you mean 'q_proj'? Did you mean 'up_proj'?"),
    ],
)
def test_a_lora_target_that_names_no_module_is_one_line_with_the_models_layers(tiny_model, targets, named, hint):
    from ftctl.trainer.methods import lora_targets

    spec = build({"method": "lora", "model_name_or_path": "tiny", "lora_target_modules": targets})
    with pytest.raises(FtctlError) as e:
        lora_targets(spec, tiny_model)
    assert str(e.value) == (
        f"lora_target_modules: no module of tiny is named {named}.{hint} Its linear layers: {LINEAR}; name some of "
        "them, comma-separated (-o lora_target_modules=q_proj,v_proj), or give all-linear for every one but the "
        "output head."
    )


def test_lora_targets_match_as_peft_matches(tiny_model):
    from peft import get_peft_model

    from ftctl.trainer.methods import lora_config, lora_targets

    def spec(targets):
        return build({"method": "lora", "lora_target_modules": targets})

    assert lora_targets(spec("all-linear"), tiny_model) == "all-linear"
    assert lora_targets(spec("self_attn.q_proj, v_proj,v_proj"), tiny_model) == ["self_attn.q_proj", "v_proj"]
    assert lora_targets(spec("q_prj"), None) == ["q_prj"]  # without a model: as given (the plan's estimate)
    for bad in (",", "all-linear,q_proj"):
        with pytest.raises(FtctlError, match="give all-linear \\(alone"):
            lora_targets(spec(bad))
    import copy

    peft_model = get_peft_model(copy.deepcopy(tiny_model), lora_config(spec("self_attn.q_proj,v_proj"), tiny_model))
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_a_lora_run_with_a_target_typo_stops_before_training(tiny_model_dir, tiny_data, tmp_path, one_thread):
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, method="lora", lora_target_modules="q_prj,v_proj")
    with pytest.raises(FtctlError, match="no module of .* is named 'q_prj'. Did you mean 'q_proj'?"):
        train(spec, plan, echo=lambda _: None)
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoint-*"))


def test_eval_split_of_one_or_more_is_a_count_of_rows(tmp_path, tiny_tokenizer):
    """axolotl's val_set_size: 2 (a whole number: that many rows, as datasets' test_size) was refused naming
    eval_split; a share stays a share."""
    from ftctl.trainer.data import build_datasets, eval_split_leaves_none

    data = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(10)])
    train, held = build_datasets(build({"data_path": data, "val_set_size": 2, "model_max_length": 64}), tiny_tokenizer)
    assert (len(train), len(held)) == (8, 2)
    train, held = build_datasets(build({"data_path": data, "eval_split": 0.25, "model_max_length": 64}), tiny_tokenizer)
    assert (len(train), len(held)) == (7, 3)  # rounded up, as datasets' test_size
    for bad in (1.5, -0.1):
        with pytest.raises(FtctlError, match=r"or their number \(a whole number, e.g. 100\)"):
            build({"data_path": data, "eval_split": bad})
    assert "lower it below 10 rows" in eval_split_leaves_none(10, 10, data)
