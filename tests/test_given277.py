"""Task 277: messages about a run key name it as the user gave it (a run file's `container:` is no --container they
typed; -o container=...), in the fault and in its fix; and `ftctl eval` names held-out rows the run trained on by
their content, not only by the file's name (a copy of the training file under another name, some of its rows)."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from click.testing import CliRunner

from ftctl.cli import main

RUN = "method: lora\nmodel: meta-llama/Llama-3.1-8B\ngpus: 8xA100\noutput: s3://bucket/out\n"


def _render(tmp_path, file_keys: str, *args: str) -> str:
    """`ftctl render FILE ARGS` refused: its error line."""
    path = tmp_path / "gist.yaml"
    path.write_text(RUN + file_keys)
    got = CliRunner().invoke(main, ["render", str(path), *args])
    assert got.exit_code == 2 and "Traceback" not in got.output, got.output
    return got.stderr.strip()


@pytest.mark.parametrize(
    "backend, container, said, values",
    [
        (
            "slurm",
            "docker:ubuntu:22.04",
            "{}: on Slurm say how to run it: {} (apptainer exec) or {} (srun --container-image).",
            ["docker:ubuntu:22.04", "apptainer:ubuntu:22.04", "pyxis:ubuntu:22.04"],
        ),
        (
            "sky",
            "apptainer:/shared/x.sif",
            "{}: SkyPilot runs docker images (image_id: docker:REF), and /shared/x.sif is a file a cloud node cannot "
            "run: push an image to a registry (ftctl build --push) and give {}, or {} to install the trainer's stack "
            "on the node.",
            ["apptainer:/shared/x.sif", "docker:REF", "none"],
        ),
        (
            "sky",
            "pyxis:ghcr.io#org/img:1",
            "{}: SkyPilot runs docker images: give {}.",
            ["pyxis:ghcr.io#org/img:1", "docker:ghcr.io/org/img:1"],
        ),
        (
            "docker",
            "apptainer:/x.sif",
            "{}: the docker backend runs docker images: give {}.",
            ["apptainer:/x.sif", "docker:IMAGE"],
        ),
    ],
)
def test_a_container_refused_is_named_as_given_with_its_fix_in_the_same_place(
    tmp_path, backend, container, said, values
):
    """A run file's `container:` was refused as "--container '...'" with "pass --container ..." for the fix: a flag
    the user never typed. Each of the three ways names itself, fault and fix."""
    ways = {
        "run file": (f"container: {container}\n", [], lambda v: f"container: {v} in {tmp_path / 'gist.yaml'}"),
        "-o": ("", ["-o", f"container={container}"], lambda v: f"-o {shlex.quote(f'container={v}')}"),
        "flag": ("", ["--container", container], lambda v: f"--container {shlex.quote(v)}"),
    }
    for keys, args, way in ways.values():
        error = _render(tmp_path, keys, "--backend", backend, *args)
        assert error == "error: " + said.format(*map(way, values))


def test_sky_keys_of_a_run_file_are_named_as_its_keys_fault_and_fix(tmp_path):
    gist = tmp_path / "gist.yaml"
    assert _render(tmp_path, "infra: aws\ncloud: gcp\n", "--backend", "sky") == (
        f"error: infra: aws in {gist} and cloud: gcp in {gist} name two clouds: drop the run file's cloud, or give "
        f"infra: gcp in {gist} instead."
    )
    assert _render(tmp_path, "cloud: gcp\n", "--backend", "sky", "--infra", "aws") == (
        f"error: --infra aws and cloud: gcp in {gist} name two clouds: drop the run file's cloud, or give --infra "
        "gcp instead."
    )
    error = _render(tmp_path, "cluster: c1\nspot: true\n", "--backend", "sky")
    assert error.startswith(f"error: cluster: c1 in {gist}: --spot runs a managed job on clusters ")
    assert error.endswith(
        "drop the run file's cluster (-o run_name=NAME names the job), or drop the run file's spot to run on that "
        "cluster."
    )
    error = _render(tmp_path, "spot: true\n", "--backend", "sky", "-o", "cluster=c2", "-o", "idle_minutes=5")
    assert "\n  - -o cluster=c2: --spot runs" in error and "drop -o cluster (-o run_name" in error
    assert "\n  - -o idle_minutes=5: --spot runs a managed job" in error


def test_a_run_files_cpu_nodes_without_a_backend_name_its_gpus_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FTCTL_BACKEND", raising=False)
    monkeypatch.setenv("FTCTL_SKY_PYTHON", str(tmp_path / "no-sky"))  # no SkyPilot: not asked for its clouds (~8 s)
    path = tmp_path / "cpu.yaml"
    path.write_text("method: lora\nmodel: meta-llama/Llama-3.1-8B\ngpus: 2xcpu\n")
    got = CliRunner().invoke(main, ["render", str(path)])
    assert got.stderr.startswith(f"error: gpus: 2xcpu in {path} asks for 2 nodes of one CPU process each"), got.output
    got = CliRunner().invoke(main, ["render", str(path), "--gpus", "cpu", "--nodes", "3"])
    assert got.stderr.startswith("error: --gpus cpu --nodes 3 asks for 3 nodes of one CPU process each"), got.output


def test_a_run_files_apptainer_image_not_here_is_named_as_its_key(tmp_path):
    """The slurm check before sbatch (the real prepare of a run file, then the backend's check)."""
    from ftctl.backend import get, prepare
    from ftctl.spec import build

    missing = tmp_path / "imgs" / "ftctl.sif"
    path = tmp_path / "gist.yaml"
    path.write_text(f"method: lora\nmodel: meta-llama/Llama-3.1-8B\ngpus: 8xA100\ncontainer: apptainer:{missing}\n")
    with pytest.raises(Exception, match=f"^container: apptainer:{missing} in {path}: no such file here; the "):
        get("slurm").check(prepare(build(str(path), {"backend": "slurm", "output_dir": str(tmp_path / "out")})))


@pytest.fixture
def full_run(tiny_model_dir, tiny_data, tmp_path):
    """A full-model run's output directory (the tiny model's weights and tokenizer) whose spec.json names the data
    it trained on."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    (run / "spec.json").write_text(json.dumps({"spec": {"data_path": str(tiny_data), "model_max_length": 256}}))
    return run


def test_eval_says_rows_the_run_trained_on_under_another_name(full_run, tiny_data, tmp_path, one_thread):
    rows = json.loads(tiny_data.read_text())
    copy = tmp_path / "held" / "renamed.json"  # the training file, copied and renamed
    copy.parent.mkdir()
    shutil.copy(tiny_data, copy)
    new = [{"conversations": [{"from": "human", "value": "Name a river."}, {"from": "gpt", "value": "The Danube."}]}]
    some = tmp_path / "some.json"  # two training rows among a new one
    some.write_text(json.dumps(rows[:2] + new))
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps(new))

    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(copy), "--data", str(some)])
    assert got.exit_code == 0, got.output
    assert (
        f"note: {copy}: all {len(rows)} of its rows are rows the run trained on ({tiny_data}), token for token; "
        f"{some}: 2 of 3 of its rows are rows the run trained on ({tiny_data}), token for token, so this loss is "
        "lower than on rows it never saw; score held-out rows (a file it did not train on) to compare runs."
    ) in got.stderr
    assert got.stdout.startswith(f"{copy}:\n")  # the scores still follow

    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(fresh)])
    assert got.exit_code == 0 and "note:" not in got.stderr, got.output
    # the training file under its own name is said as before, without tokenizing the training rows again
    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(tiny_data)])
    assert f"note: {tiny_data}: the run trained on its rows, so this loss is lower" in got.stderr, got.output
