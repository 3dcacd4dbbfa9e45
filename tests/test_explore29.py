"""First contact as a FastChat, TRL or PEFT/bitsandbytes notebook user (helper 130, explore29): the dtype keys
notebooks write, near-miss file names, YAML typos, and a GGUF file given as the model."""

from __future__ import annotations

import pytest

from ftctl.errors import FtctlError
from ftctl.plan import make_plan
from ftctl.preflight import check_model
from ftctl.spec import build, load_yaml
from ftctl.trainer.formats import resolve_files
from tests.render_fixtures import write_model_config


def test_notebook_dtypes_ask_for_that_precision_and_the_plan_says_where_it_cannot():
    """`bnb_4bit_compute_dtype=torch.bfloat16` (every QLoRA notebook) was refused; `float16` too, on the T4 of those
    notebooks, where fp16 is what ftctl trains in; `bfloat16` was taken on a T4 or a CPU as "what ftctl does" while
    the plan ran fp16 or fp32 and said nothing. A 16-bit dtype now asks for that precision (bf16=true / fp16=true),
    which the plan takes where the GPUs have it and says where not."""
    notes: list[str] = []
    spec = build(None, {"method": "qlora"}, ["bnb_4bit_compute_dtype=torch.float16"], notes=notes)
    assert (spec.fp16, spec.bf16) == (True, None)
    assert any(n.startswith("bnb_4bit_compute_dtype=torch.float16 (-o): fp16=true here") for n in notes), notes
    t4 = make_plan(build(None, {"method": "qlora", "gpus": "1xT4"}, ["bnb_4bit_compute_dtype=float16"]))
    assert t4.precision == "fp16"
    bf16_on_t4 = make_plan(build({"torch_dtype": "bfloat16"}, {"gpus": "1xT4"}))
    assert bf16_on_t4.precision == "fp16" and "T4 has no bf16: using fp16" in bf16_on_t4.notes
    on_cpu = make_plan(build({"model_init_kwargs": {"torch_dtype": "torch.bfloat16"}}, {"gpus": "cpu"}))
    assert on_cpu.precision == "fp32" and any("CPU trains in fp32" in n for n in on_cpu.notes)
    assert make_plan(build({"dtype": "bf16"}, {"gpus": "1xA100"})).precision == "bf16"
    assert build({"torch_dtype": "bfloat16", "bf16": True}).bf16 is True  # a TRL recipe's pair: one ask
    assert build({"torch_dtype": "auto"}).bf16 is None  # the planner's choice, as before
    with pytest.raises(FtctlError, match=r"torch_dtype=float16 \(-o\) asks for fp16, and bf16=true \(-o\) for bf16"):
        build(None, None, ["torch_dtype=float16", "bf16=true"])
    with pytest.raises(FtctlError, match="ask for other precisions: keep one"):
        build(None, {"method": "qlora"}, ["torch_dtype=float16", "bnb_4bit_compute_dtype=bfloat16"])
    with pytest.raises(FtctlError, match="asks for --method qlora, not lora"):
        build(None, {"method": "lora"}, ["bnb_4bit_compute_dtype=bfloat16"])
    with pytest.raises(FtctlError, match="another value: drop the key"):
        build(None, {"method": "qlora"}, ["bnb_4bit_compute_dtype=float32"])


def test_a_near_miss_file_name_is_named(tmp_path, monkeypatch):
    """`--data trl.json` beside trl.jsonl, `-c run.yml` beside run.yaml, `--data data/train.jsonl` with train.jsonl
    here, `--model ./my-modle`: each said only that nothing was there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trl.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "plain.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "run.yaml").write_text("method: lora\n")
    write_model_config(tmp_path / "my-model")
    (tmp_path / "my-model" / "tokenizer.json").write_text("{}")
    for given, meant in [("trl.json", "trl.jsonl"), ("./trl.jsonl.gz", "./trl.jsonl"), ("data/trl.jsonl", "trl.jsonl")]:
        with pytest.raises(FtctlError, match=f"No data at {given}. Did you mean '{meant}'"):
            resolve_files(given)
    with pytest.raises(FtctlError) as e:
        resolve_files("nothing.jsonl")  # every .jsonl is alike in its suffix: no guess
    assert "Did you mean" not in str(e.value)
    with pytest.raises(FtctlError, match=r"Run file 'run.yml' does not exist. Did you mean 'run.yaml'\?"):
        load_yaml("run.yml")
    (finding,) = check_model("./my-modle")
    assert finding.fix == "did you mean --model ./my-model?"


@pytest.mark.parametrize(
    "text, said",
    [
        ("method: lora\nlearning_rate 2e-5\nmax_steps: 3\n", "line 2, 'learning_rate 2e-5': no ':' after the key"),
        ("method: lora\nmax_steps:3\n", "line 2, 'max_steps:3': no space after its ':'"),
        ("method:lora\n", "'method:lora' is one string to YAML: write a space after the ':'"),
        ('method: "lora\nmax_steps: 3\n', "line 1, column 9: a quote opened here is never closed"),
        ("method: lora\n\tmax_steps: 3\n", r"line 2 reads '\\tmax_steps: 3'"),
    ],
)
def test_a_yaml_typo_is_said_on_its_own_line(tmp_path, text, said):
    """A key without its colon was said on the line after it ("line 9, column 1: could not find expected ':'")."""
    run = tmp_path / "run.yaml"
    run.write_text(text)
    with pytest.raises(FtctlError, match=said):
        load_yaml(str(run))


def test_a_gguf_file_as_the_model_says_the_two_ways_on(tmp_path):
    """`--model SmolLM2-135M-Instruct.Q4_1.gguf` (what llama.cpp and Ollama users have) was "a file, not a model
    directory"; a model directory's own file (model.safetensors) got no word of its directory either."""
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    (finding,) = check_model(str(gguf))
    assert "a GGUF file (llama.cpp's format, quantized for inference)" in finding.what
    assert "--model ORG/NAME" in finding.fix and "dequantize=True" in finding.fix
    assert finding.fix.endswith("then --model SmolLM2-135M-Instruct.Q4_1-hf.")
    write_model_config(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    (finding,) = check_model(str(tmp_path / "m" / "model.safetensors"))
    assert finding.fix == f"pass its directory: --model {tmp_path / 'm'}"


def test_trls_dataset_text_field_reads_plain_text_from_its_field(tmp_path, tiny_tokenizer):
    """TRL's `dataset_text_field: content` was refused ("not set by hand here: a row's format is read from its
    fields"), and the rows then said only "not a conversation: keys 'content'": plain text in a field of another name
    could not train without rewriting the file. It is a key: the trainer, the launch's checks, `data check` (-c or
    --text-field) and `eval` read that field as a row's text."""
    from ftctl import preflight
    from ftctl.trainer.data import build_datasets, cache_key, check_data
    from ftctl.trainer.formats import load_rows, to_row

    (problem,) = to_row("a.jsonl line 1", {"id": 1, "content": "Onhava is the capital."}).problems
    assert problem.endswith("plain text in 'content': -o dataset_text_field=content (TRL's key) reads it")
    assert "dataset_text_field" not in to_row("a.jsonl line 1", {"a": "x", "b": "y"}).problems[0]  # not guessed
    data = tmp_path / "plain.jsonl"
    data.write_text('{"content": "Zembla lies north."}\n{"content": "Onhava is its capital.", "id": 2}\n')
    spec = build({"dataset_text_field": "content", "data_path": str(data), "model_max_length": 64})
    assert [r.text for r in load_rows(str(data), text_field="content")[1]] == [
        "Zembla lies north.",
        "Onhava is its capital.",
    ]
    train, held_out = build_datasets(spec, tiny_tokenizer)  # what the trainer trains on (run.setup)
    assert len(train) == 2 and held_out is None
    assert check_data(str(data), tiny_tokenizer, 64, text_field="content").stats.formats == {"text": 2}
    assert cache_key(str(data), tiny_tokenizer, 64, text_field="content") != cache_key(str(data), tiny_tokenizer, 64)
    assert preflight.check_data(str(data), text_field="content") == []  # the launch's read of the rows
    (refused,) = preflight.check_data(str(data))  # without it: the rows' problem, and the key that reads them
    assert refused.what.endswith("plain text in 'content': -o dataset_text_field=content (TRL's key) reads it")
    assert preflight.data_check_args(spec)[-2:] == ["--text-field", "content"]
    with pytest.raises(FtctlError, match="dataset_text_field='messages': give the field that holds"):
        build({"dataset_text_field": "messages"})


def test_the_data_check_line_names_the_model_the_rows_were_read_with(tmp_path):
    """`ftctl data check trl.jsonl --model MODEL --write-valid OUT`, pasted as printed, failed on `--model MODEL`;
    the model whose tokenizer read the rows is known (the demo's directory here: its hub id)."""
    from types import SimpleNamespace

    from ftctl.trainer.data import DataReport, _model_of

    demo = tmp_path / "HuggingFaceTB--SmolLM2-135M-Instruct"
    demo.mkdir()
    (demo / "ftctl-source.json").write_text('{"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "from": "x"}')
    assert _model_of(SimpleNamespace(name_or_path=str(demo))) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _model_of(SimpleNamespace(name_or_path="org/name")) == "org/name"
    report = DataReport(path="trl.jsonl", max_length=2048, files=1, model="my model", bad_rows=1)
    report.bad_at.add(("trl.jsonl", "line", 3))
    report.errors.append("trl.jsonl line 3: bad")
    report.stats.rows = 4
    assert "`ftctl data check trl.jsonl --model 'my model' --write-valid OUT`" in report.error_message()


def test_a_notebooks_peft_and_trainer_keys_say_what_ftctl_does():
    """PEFT's modules_to_save, transformers' torch_compile and auto_find_batch_size were "Unknown key ... `ftctl keys`
    lists them" (or a wrong guess: "Did you mean 'global_batch_size'?"), saying nothing of what ftctl does instead."""
    for given, said in [
        ("modules_to_save=lm_head,embed_tokens", "lora and qlora train only the adapters (no modules_to_save)"),
        ("torch_compile=true", "Not offered: the trainer runs PyTorch eagerly"),
        ("auto_find_batch_size=true", "The plan chooses the micro-batch that fits"),
    ]:
        with pytest.raises(FtctlError, match=said.replace("(", r"\(").replace(")", r"\)")):
            build(None, {"method": "qlora"}, [given])
