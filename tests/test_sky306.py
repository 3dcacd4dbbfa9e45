"""Helper 306: follow-ups of explore63 (a cloud user fine-tuning through SkyPilot), its proposals 6, 8, 9 and 10.

8. W&B's settings set in the launching shell (WANDB_PROJECT, WANDB_ENTITY, WANDB_BASE_URL ...) reached no docker
   container (a container inherits nothing of that shell), as on SkyPilot before ab266c3: a wandb run logged to W&B's
   default project, or failed to reach a self-hosted server, unsaid. Both backends now ask one owner of that list
   (spec.REPORT_SETTINGS, spec.report_settings) and pass them by name (docker's ``-e NAME``).
6. A SkyPilot-style ``secrets: {HF_TOKEN: null}`` in a run file was refused, "expects a list": its names are taken; one
   given a value is refused without repeating it.
9. ``S3://b/run`` and ``s3://b//run`` named another run directory and SkyPilot cluster than ``s3://b/run`` (a relaunch
   spelt so went to a fresh cluster): spec.store_uri is the output's one spelling. A gs:// task's header gave s3's AWS
   keys as its example of a store credential.
10. An unknown job id of SkyPilot's form (managed/12, CLUSTER/3) got Slurm's `squeue -j ID` as where to look.

The docker part runs the rendered ``docker run`` through the stand-in docker (tests/fake_docker.py), which gives its
container only what docker would: its image's environment and each ``-e``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftctl.backend import prepare, run_dir_for
from ftctl.sky.backend import SkyBackend, job_secrets
from ftctl.sky.inputs import cluster_name
from ftctl.spec import build, resume_problem
from tests.render_fixtures import make_spec, prepared

REPO = Path(__file__).resolve().parents[1]
FTCTL = str(Path(sys.executable).parent / "ftctl")
MODEL = "lmsys/vicuna-7b-v1.5"


@pytest.fixture
def wandb_shell(monkeypatch):
    """The launching shell with W&B's settings exported (and a path of this machine's, WANDB_DIR, not to pass)."""
    for var in [v for v in os.environ if v.startswith(("AWS_", "WANDB_", "GOOGLE_"))]:
        monkeypatch.delenv(var)
    said = {"WANDB_PROJECT": "proj-306", "WANDB_BASE_URL": "https://wandb.example.test", "WANDB_ENTITY": "shell-team"}
    for k, v in {**said, "WANDB_DIR": "/home/me/wandb"}.items():
        monkeypatch.setenv(k, v)
    return said


def test_docker_passes_wandbs_settings_set_where_it_launches_by_name(wandb_shell, tmp_path):
    """explore63 proposal 8: `export WANDB_PROJECT=x` reached no docker container. Now each W&B setting set here goes
    by name (``-e NAME``: docker reads the value from the launching environment), never its value in the rendered
    command; not WANDB_DIR (this machine's path); -o env=WANDB_ENTITY=... is the container's own; nothing of W&B's for
    a run that does not report to it."""
    out = tmp_path / "out"
    r = prepared(["env=WANDB_ENTITY=from-env"], backend="docker", gpus="cpu", output_dir=str(out), report_to="wandb")
    argv = shlex.split(r.text)
    passed = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert "WANDB_PROJECT" in passed and "WANDB_BASE_URL" in passed
    assert "WANDB_ENTITY=from-env" in passed and "WANDB_ENTITY" not in passed  # -o env's, once
    assert not [p for p in passed if p.startswith("WANDB_DIR")]
    for text in (r.text, *r.files.values()):
        assert "proj-306" not in text and "wandb.example.test" not in text and "shell-team" not in text
    plain = prepared(backend="docker", gpus="cpu", output_dir=str(out))
    assert "WANDB_PROJECT" not in plain.text

    # the container's environment, as the stand-in docker builds it (-e NAME: this environment's value)
    run_dir = r.paths.root
    run_dir.mkdir(parents=True)
    image_at = argv.index("-w") + 2  # -w RUN_DIR IMAGE, then the trainer's command: this one instead
    shown = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('WANDB_')}))"
    fake = [sys.executable, str(REPO / "tests" / "fake_docker.py")]
    env = {**os.environ, "FAKE_DOCKER_STATE": str(tmp_path / "state"), "FAKE_LOG": str(tmp_path / "docker.log")}
    subprocess.run([*fake, *argv[1 : image_at + 1], sys.executable, "-c", shown], env=env, check=True, timeout=30)
    name = argv[argv.index("--name") + 1]
    deadline = time.time() + 20
    while not (tmp_path / "state" / name / "rc").exists() and time.time() < deadline:
        time.sleep(0.1)
    log = subprocess.run([*fake, "logs", name], env=env, capture_output=True, text=True, timeout=30).stdout
    got = json.loads(log.strip().splitlines()[-1])
    assert got == {
        "WANDB_PROJECT": "proj-306",
        "WANDB_BASE_URL": "https://wandb.example.test",
        "WANDB_ENTITY": "from-env",
    }
    assert "proj-306" not in Path(env["FAKE_LOG"]).read_text()  # docker's command line: names only


def test_sky_and_docker_ask_one_list_of_wandbs_settings(wandb_shell, monkeypatch):
    """The list is spec's (REPORT_SETTINGS), beside W&B's key (REPORT_SECRETS): a setting added there reaches both."""
    from ftctl import spec

    monkeypatch.setitem(spec.REPORT_SETTINGS, "wandb", ("WANDB_PROJECT", "WANDB_X306"))
    monkeypatch.setenv("WANDB_X306", "1")
    docker = prepared(backend="docker", gpus="cpu", output_dir="/tmp/ftctl-306-d", report_to="wandb")
    assert "-e WANDB_X306 " in docker.text and "-e WANDB_BASE_URL " not in docker.text
    sky = prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, output_dir="s3://b/o", report_to="wandb")
    assert job_secrets(sky.spec) == ["HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_X306"]


def test_a_skypilot_style_secrets_mapping_in_a_run_file(tmp_path, monkeypatch):
    """explore63 proposal 6: SkyPilot's task files write secrets as a mapping, ``{HF_TOKEN: null}`` (the value from
    the launching shell): refused as "expects a list". Its names are taken now; a name given a value is refused, the
    value never repeated, with the fix (export it, name it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.yaml").write_text(f"model_name_or_path: {MODEL}\nsecrets:\n  HF_TOKEN: null\n  MY_KEY:\n")
    assert build(str(tmp_path / "ok.yaml")).secrets == ["HF_TOKEN", "MY_KEY"]
    task = prepare(make_spec(config=str(tmp_path / "ok.yaml"), backend="sky", gpus="1xL4", output_dir="s3://b/o"))
    assert yaml.safe_load(task.text)["secrets"] == {"HF_TOKEN": None, "MY_KEY": None}
    value = "hf_" + "Q" * 34
    (tmp_path / "bad.yaml").write_text(f"model_name_or_path: {MODEL}\nsecrets:\n  HF_TOKEN: {value}\n  OTHER: null\n")
    proc = subprocess.run(
        [FTCTL, "render", "-c", "bad.yaml", "--backend", "sky", "--gpus", "1xL4", "--output", "s3://b/o"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert value not in proc.stderr + proc.stdout and "QQQQ" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: secrets (run file): names only, HF_TOKEN is given a value here (not repeated): export it where you "
        "launch and name it, secrets: [HF_TOKEN] (or SkyPilot's {HF_TOKEN: null}); secrets pass by name only."
    )


def test_other_spellings_of_an_output_get_its_cluster(tmp_path, monkeypatch):
    """explore63 proposal 9: `S3://b/run` and `s3://b//run` gave another run directory, and so another SkyPilot
    cluster, than `s3://b/run`: a relaunch spelt so started a fresh cluster. The output has one spelling now
    (spec.store_uri), which names both; its own checkpoint spelt so is still its own to resume."""
    monkeypatch.chdir(tmp_path)

    def spec(output):
        return build(None, {"model_name_or_path": MODEL, "output_dir": output, "backend": "sky", "gpus": "1xL4"})

    first = spec("s3://b/run")
    for other in ("S3://b/run", "s3://b//run", "s3://b/run//", "S3://b//run/"):
        assert spec(other).output == "s3://b/run"
        assert cluster_name(spec(other)) == cluster_name(first) and run_dir_for(spec(other)) == run_dir_for(first)
    assert cluster_name(spec("s3://b/other")) != cluster_name(first)
    assert resume_problem("S3://b//run/checkpoint-5/", here=False, output="s3://b/run") is None
    assert resume_problem("s3://b/other/checkpoint-5", here=False, output="s3://b/run")  # another run's


def test_a_gs_tasks_header_names_a_gcs_credential(monkeypatch):
    """explore63 proposal 9: the header of a gs:// run's task gave s3's AWS_ACCESS_KEY_ID as its example."""
    gs = prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, output_dir="gs://b/o").text
    assert "each object-store credential set there (gs's GOOGLE_CLOUD_PROJECT ...)" in gs and "AWS_" not in gs
    s3 = prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, output_dir="s3://b/o").text
    assert "(s3's AWS_ACCESS_KEY_ID ...)" in s3  # as before (the golden tasks)


def test_skypilots_job_ids_say_skypilots_queues():
    """explore63 proposal 10: where a job of SkyPilot's form is looked up (its own queues), not Slurm's squeue."""
    sky = SkyBackend()
    assert sky.where_to_look("managed/12") == "SkyPilot's managed jobs: `sky jobs queue`"
    said = "a SkyPilot cluster's jobs: `sky queue dev` (managed jobs: `sky jobs queue`)"
    assert sky.where_to_look("dev/3") == said and sky.where_to_look("dev/3@0a1b2c3d") == said
    for other in ("12345", "runs/x", "managed/x", "-x/3"):
        assert sky.where_to_look(other) is None


def test_an_unknown_skypilot_job_id_says_where_to_look(tmp_path):
    """`ftctl status managed/12` of a job not launched from here: SkyPilot's queue, not Slurm's `squeue -j ID`."""
    env = {**os.environ, "FTCTL_HOME": str(tmp_path / "home")}
    for job, where in (
        ("managed/12", "(SkyPilot's managed jobs: `sky jobs queue`)."),
        ("dev/3", "(a SkyPilot cluster's jobs: `sky queue dev` (managed jobs: `sky jobs queue`))."),
        ("4242", "(on Slurm: `squeue -j ID`)."),
    ):
        proc = subprocess.run([FTCTL, "status", job], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode != 0 and proc.stderr.strip().endswith(where), proc.stderr
