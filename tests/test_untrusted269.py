"""What others wrote, read safely (explore59's open items: /work/notes/explore59-untrusted.md): YAML text inside
another tool's config or a dataset card is read as a run file is (aliases counted before they are expanded), pickled
weights torch refuses are one error line, and `ftctl render` says where a run file's container came from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_untrusted268 import laughs

# each of these ran past a minute on the old code (9**9 values out of ~450 bytes): a subprocess, killed at this
BOUND_S = 30


def flow(levels: int, last: str = "") -> str:
    """laughs' aliases as one YAML flow mapping (a string value's text), ``last`` the key given the biggest alias."""
    name = "abcdefghij"[levels - 1]
    body = laughs(levels).replace(f"\nmethod: lora\nmodel: *{name}\n", f"\n{last}: *{name}\n" if last else "\n")
    return "{" + body.strip().replace("\n", ", ") + "}"


def ftctl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ftctl", *args], capture_output=True, text=True, timeout=BOUND_S, cwd=cwd
    )


def test_another_tools_mapping_written_as_text_with_nested_aliases_is_not_expanded(tmp_path):
    """gradient_checkpointing_kwargs (AGREES: value_agrees) and model_init_kwargs (nested_kwargs_flattened) read
    their '{...}' text with yaml.safe_load: 9**9 values out of a 450-byte run file, then str() of them."""
    for key, last in (("gradient_checkpointing_kwargs", ""), ("model_init_kwargs", "torch_dtype")):
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"method: lora\nmodel: {tmp_path}/model\ngpus: cpu\n{key}: '{flow(9, last)}'\n")
        done = ftctl("plan", str(path), cwd=tmp_path)  # was: past BOUND_S (TimeoutExpired)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("error:")], done.stderr
        assert f"'{key}' (run file)" in done.stderr


def test_another_tools_mapping_written_as_text_still_reads():
    from ftctl.tool_vocabulary import nested_kwargs_flattened, value_agrees

    assert value_agrees("gradient_checkpointing_kwargs", "{'use_reentrant': false}")
    assert not value_agrees("gradient_checkpointing_kwargs", "{'use_reentrant': true}")
    text = "{common: &c bfloat16, torch_dtype: *c}"  # an alias as people use them: read
    assert list(nested_kwargs_flattened([("model_init_kwargs", text)])) == [
        ("model_init_kwargs.common", "bfloat16"),
        ("model_init_kwargs.torch_dtype", "bfloat16"),
    ]


GOOD_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


def test_a_dataset_cards_nested_aliases_leave_the_files_names_to_decide(tmp_path):
    """A downloaded dataset directory's README.md header was read with yaml.safe_load and given to datasets'
    MetadataConfigs, whose error wrote the 9**9 values out (`ftctl data check DIR` and the trainer's read)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(GOOD_ROW)
    card = laughs(9).replace("\nmethod: lora\nmodel: *i\n", "\nconfigs: {default: *i}\n")  # 'configs' no list
    (data / "README.md").write_text(f"---\n{card}---\n# a card\n")
    code = f"from ftctl.trainer.formats import resolve_files; print(resolve_files({str(data)!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND_S)
    assert done.returncode == 0 and done.stdout.strip() == repr([str(data / "train.jsonl")]), done.stderr
    deep = "configs: " + "[" * 5000 + "]" * 5000  # was a RecursionError traceback out of PyYAML
    (data / "README.md").write_text(f"---\n{deep}\n---\n")
    from ftctl.trainer.formats import resolve_files

    assert resolve_files(str(data)) == [str(data / "train.jsonl")]
    for header in ("[1]", "configs: [1]", "configs: [{config_name: [1], data_files: x.jsonl}]"):  # were tracebacks:
        (data / "README.md").write_text(f"---\n{header}\n---\n")  # AttributeError, TypeError (datasets' reading)
        assert resolve_files(str(data)) == [str(data / "train.jsonl")]


def test_a_dataset_cards_configs_still_name_the_split(tmp_path):
    from ftctl.trainer.formats import resolve_files

    (tmp_path / "a.jsonl").write_text(GOOD_ROW)
    (tmp_path / "b.jsonl").write_text(GOOD_ROW)
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: a.jsonl\n"
        "  - split: test\n    path: b.jsonl\n---\n"
    )
    assert resolve_files(str(tmp_path)) == [str(tmp_path / "a.jsonl")]


def pickled_model(tiny: Path, where: Path, extra) -> Path:
    """The tiny model with its weights as a pytorch_model.bin (no safetensors) that also holds ``extra``."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny, where, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save({**load_file(tiny / "model.safetensors"), "extra": extra}, where / "pytorch_model.bin")
    return where


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_torch_refuses_are_one_error_line_whose_conversion_loads(tmp_path, tiny_model_dir):
    """transformers' torch.load(weights_only=True) refused them with torch's text of several lines advising
    weights_only=False (ftctl offers no way to ask for it): now one line, saying what it is and how to convert."""
    import argparse
    import os
    import shlex

    import pytest

    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.model import load_model

    marker = tmp_path / "ran"
    evil = pickled_model(tiny_model_dir, tmp_path / "evil", RunsCode(marker))
    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": str(evil)})
    with pytest.raises(FtctlError) as e:
        load_model(spec, make_plan(spec), on_cpu=True)
    said = str(e.value)
    assert "\n" not in said and not marker.exists()
    assert said.startswith(f"Cannot load model {str(evil)!r}: its weights (pytorch_model.bin) are a pickle that")
    assert "(it asks for posix.system)" in said and "weights_only=False" in said  # in the conversion's line
    # an old checkpoint that pickled its arguments beside the weights: converted from a trusted copy as said, it loads
    old = pickled_model(tiny_model_dir, tmp_path / "old", argparse.Namespace(lr=1e-4))
    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": str(old)})
    with pytest.raises(FtctlError, match=r"it asks for argparse.Namespace") as e:
        load_model(spec, make_plan(spec), on_cpu=True)
    command = shlex.split(str(e.value).split("pickle's code): ", 1)[1].split(", then --model ")[0])
    assert command[:2] == ["python", "-c"] and command[3:] == [str(old), f"{old}-safetensors"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *command[1:]], check=True, capture_output=True, timeout=BOUND_S, env=env)
    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": f"{old}-safetensors"})
    assert load_model(spec, make_plan(spec), on_cpu=True).config.model_type == "llama"


def test_render_says_a_run_files_container_came_from_the_run_file(tmp_path):
    """`ftctl render` labelled the image a run file chose '(--container)', as if typed here (explore59 12)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    path = tmp_path / "gist.yaml"
    path.write_text(
        "method: lora\nmodel: meta-llama/Llama-3.1-8B\ngpus: 8xA100\noutput: /fixed/out\ncontainer: docker:someone/img:1\n"
    )
    said = {}
    for how, more in (("file", []), ("-o", ["-o", "container=docker:other/img:2"]), ("flag", ["--container", "x:3"])):
        done = CliRunner().invoke(main, ["render", str(path), "--backend", "docker", *more])
        assert done.exit_code == 0, done.output
        said[how] = next(line for line in done.output.splitlines() if line.startswith("image: "))
    assert said == {
        "file": "image: someone/img:1 (the run file's container)",
        "-o": "image: other/img:2 (-o container)",
        "flag": "image: x:3 (--container)",
    }


def test_the_docs_say_a_run_file_is_code_and_a_zero_checkpoint_a_pickle():
    """docs/configuration.md said nowhere that a run file runs things (explore59 12) nor that DeepSpeed's checkpoints
    are pickles a resume loads (7); the image line it quotes is the one render prints (test above)."""
    text = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    section = " ".join(text.split("## Run files, models and checkpoints from others\n", 1)[1].split("\n## ")[0].split())
    for said in ("`setup:`", "`LD_PRELOAD`", "`BASH_ENV`", "`container:`", "`output:`", "`ftctl render FILE`"):
        assert said in section
    for said in (
        "`ftctl launch --dry-run FILE`",
        '"the run file\'s container"',
        "No file turns `trust_remote_code` on",
    ):
        assert said in section
    assert "`zero2` and `zero3`" in section and "`weights_only=False`" in section and "only you or your team" in section
