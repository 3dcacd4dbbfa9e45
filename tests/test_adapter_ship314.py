"""lora_model_dir on the backends whose jobs do not see this machine's files: SkyPilot ships the adapter's files as
file_mounts and its nodes' spec.json names them where they land; docker mounts them read-only at their own paths, or,
on an engine on another machine, copies them into the container. Only what the job reads of the adapter travels (its
adapter_config.json, weights and its run's spec.json), not the rest of that run's output (checkpoints, optimizer
states). A run that names no --backend and lands on SkyPilot (FTCTL_BACKEND, the config's backend:) ships it the same:
its job read the path of this machine ('no such directory' on the node)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ftctl.backend import prepare
from ftctl.cli import main
from tests.render_fixtures import make_spec, prepared, sky_python
from tests.s3_fixtures import moto_s3  # noqa: F401 (the fixture)
from tests.test_docker_remote172 import host  # noqa: F401 (the fixture: the fake docker first on PATH)
from tests.test_sky_yaml import _SKY_SHIPS

REPO = Path(__file__).resolve().parents[1]
KEPT = ("adapter_config.json", "adapter_model.safetensors")


def _earlier_run(root: Path, base: Path) -> Path:
    """An earlier lora run's output under a name with a space and quotes: its spec.json, a final adapter and a
    checkpoint-2 (adapter, optimizer state)."""
    run = root / "my 'first' run"
    config = {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": 4, "lora_alpha": 8}
    config["target_modules"] = ["q_proj", "v_proj"]
    for d in (run, run / "checkpoint-2"):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text(json.dumps(config))
        (d / "adapter_model.safetensors").write_bytes(b"weights of " + d.name.encode())
    (run / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer")
    (run / "spec.json").write_text(json.dumps({"spec": {"data_path": "/data/first.jsonl"}}))
    return run


def _node_spec(text: str) -> dict:
    run = yaml.safe_load(text)["run"]
    start = run.index("<<'") + 3
    word = run[start : run.index("'", start)]
    return json.loads(run.split(f"<<'{word}'\n", 1)[1].split(f"\n{word}\n", 1)[0])["spec"]


def _adapter_mounts(task: dict, node_adapter: str, node_dir: str) -> dict[str, str]:
    """{file_mounts destination: source} of what lands under the adapter's directory of the nodes' spec.json."""
    top = f"{node_dir}/{node_adapter.removeprefix('./').split('/')[0]}/{node_adapter.removeprefix('./').split('/')[1]}"
    return {dst: src for dst, src in task["file_mounts"].items() if dst.startswith(top + "/")}


@pytest.mark.parametrize("checkpoint", [True, False])
def test_sky_ships_the_adapters_files_where_the_nodes_spec_names_them(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch, checkpoint
):
    """The adapter's config and weights and its run's spec.json are file_mounts of their own (not the optimizer
    state, nor the other checkpoints); the nodes' spec.json names the adapter where they land, laid out as in its run
    (RUN/checkpoint-N: the model card names it so, and reads the run's spec.json above it); the preflight's spec keeps
    the path here. SkyPilot reads the task offline and its own rsync copies each file intact."""
    monkeypatch.chdir(tmp_path)
    run = _earlier_run(tmp_path / "in", tiny_model_dir)
    adapter = run / "checkpoint-2" if checkpoint else run
    prep = prepared(
        [f"lora_model_dir={adapter}"],
        backend="sky",
        gpus="1xL4",
        method="lora",
        model_name_or_path=str(tiny_model_dir),
        data_path=str(tiny_data),
        output_dir="s3://b/runs/second",
    )
    assert prep.spec.lora_model_dir == str(adapter.resolve())
    node = _node_spec(prep.text)
    assert node["lora_model_dir"].startswith("./inputs/") and "-adapter/" in node["lora_model_dir"], node
    assert node["lora_model_dir"].endswith("/checkpoint-2" if checkpoint else "/my_first_run"), node
    task = yaml.safe_load(prep.text)
    node_dir = next(dst for dst in task["file_mounts"]).split("/inputs/")[0]
    mounts = _adapter_mounts(task, node["lora_model_dir"], node_dir)
    on_node = f"{node_dir}/{node['lora_model_dir'].removeprefix('./')}"
    top = on_node.rsplit("/", 1)[0] if checkpoint else on_node
    assert mounts == {
        **{f"{on_node}/{name}": str((adapter / name).resolve()) for name in KEPT},
        f"{top}/spec.json": str((run / "spec.json").resolve()),
    }
    assert "optimizer.pt" not in prep.text

    assert shutil.which("rsync"), "SkyPilot copies file_mounts with rsync: apt-get install rsync"
    f = tmp_path / "task.yaml"
    f.write_text(prep.text)
    out = subprocess.run(  # tests/sky_validate.py's checks of the task, then SkyPilot's rsync of its file_mounts
        [sky_python(), "-c", _SKY_SHIPS, str(f), str(tmp_path / "copied")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    copied = json.loads(out.stdout.splitlines()[-1])["copied"]
    for dst, src in mounts.items():
        assert Path(copied[dst]).read_bytes() == Path(src).read_bytes(), dst


def test_a_run_without_backend_that_lands_on_sky_ships_the_adapter(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """No --backend: spec.build settles lora_model_dir before the backend is chosen (here FTCTL_BACKEND=sky, as the
    config's backend: or a cloud picked for GPUs this machine lacks); the task ships it all the same, so the job does
    not read a path of this machine."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_BACKEND", "sky")
    adapter = _earlier_run(tmp_path / "in", tiny_model_dir)
    spec = make_spec(
        [f"lora_model_dir={adapter}"],
        gpus="1xL4",
        method="lora",
        model_name_or_path=str(tiny_model_dir),
        data_path=str(tiny_data),
        output_dir="s3://b/runs/second",
    )
    assert spec.backend is None
    prep = prepare(spec)
    assert prep.spec.backend == "sky"
    node = _node_spec(prep.text)["lora_model_dir"]
    assert node.startswith("./inputs/") and node.endswith("/my_first_run"), node
    assert str(adapter.resolve() / "adapter_model.safetensors") in yaml.safe_load(prep.text)["file_mounts"].values()


def test_docker_mounts_the_adapters_files_read_only(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """On this host's engine the adapter's files are mounted read-only at their own paths (the spec.json the
    container reads names them there); not the checkpoint's optimizer state; every path one shell word."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = _earlier_run(tmp_path / "in", tiny_model_dir)
    adapter = run / "checkpoint-2"
    prep = prepared(
        [f"lora_model_dir={adapter}"],
        backend="docker",
        gpus="cpu",
        method="lora",
        container="docker:ghcr.io/x/img:1",
        model_name_or_path=str(tiny_model_dir),
        data_path=str(tiny_data),
        output_dir=str(tmp_path / "second"),
    )
    words = shlex.split(prep.text)
    mounts = [words[i + 1] for i, w in enumerate(words) if w == "-v"]
    for f in [adapter / name for name in KEPT] + [run / "spec.json"]:
        assert f"{f.resolve()}:{f.resolve()}:ro" in mounts, mounts
    assert "optimizer.pt" not in prep.text
    assert json.loads(prep.files["spec.json"])["spec"]["lora_model_dir"] == str(adapter.resolve())


def test_docker_on_another_machine_copies_the_adapters_files_in(
    request, tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """An engine on another machine (DOCKER_HOST=ssh://gpu, the fake docker): the tar `docker cp` reads holds the
    adapter's files at their own paths (where the container's spec.json names them), not its optimizer state."""
    bins, s3 = request.getfixturevalue("host"), request.getfixturevalue("moto_s3")
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.chdir(tmp_path)
    stub = bins / "python3"
    stub.write_text("#!/bin/sh\nexit 0\n")  # the container's trainer: done at once
    stub.chmod(0o755)
    run = _earlier_run(tmp_path / "in", tiny_model_dir)
    adapter = run / "checkpoint-2"
    flags = ["--backend", "docker", "--gpus", "cpu", "--method", "lora", "--model", str(tiny_model_dir)]
    flags += ["--data", str(tiny_data), "--output", f"s3://{s3.make_bucket()}/runs/b"]
    flags += ["--container", "docker:ghcr.io/x/img:1", "-o", f"s3_endpoint_url={s3.endpoint}"]
    flags += ["-o", "max_steps=2", "-o", "run_name=far", "-o", f"lora_model_dir={adapter}"]
    said = CliRunner().invoke(main, ["launch", *flags])
    assert said.exit_code == 0, said.output
    copied = json.loads((Path(os.environ["FAKE_DOCKER_STATE"]) / "far" / "copied.json").read_text())
    files = {m["name"] for m in copied if m["type"] == "0"}
    for f in [adapter / name for name in KEPT] + [run / "spec.json"]:
        assert str(f.resolve())[1:] in files, files
    assert not [f for f in files if f.endswith("optimizer.pt")], files
