"""Helpers for the rendering tests: build a spec and prepare it in-process, fake scheduler/launcher
programs that record their argv, hostile values, the SkyPilot validator subprocess.

The fakes stand in only for what cannot run here (srun, apptainer, docker, a GPU torchrun, also as ``python3 -m
ftctl.trainer.torchrun``): each is a
small Python script that appends ``{"prog", "argv", "cwd", "env"}`` as one JSON line to
``$FAKE_LOG`` and then does the least its real namesake would do for the script to go on (srun and
apptainer run the command they wrap, scontrol prints host names, torchrun writes ``complete`` to the
trainer's status file).
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl import spec as spec_mod
from ftctl.backend import Rendered, prepare

REPO = Path(__file__).resolve().parents[1]

# Values that break naive quoting (submitit's and torchx's fixtures, plus command substitution).
HOSTILE = [
    "a 0",
    'a"=0"',
    "a'; echo foo",
    "a\n0",
    "$(touch PWNED)",
    "`touch PWNED`",
    "x;touch PWNED;y",
    'it\'s "both" \\ $HOME * ~ & | > <',
]


def make_spec(overrides=(), config=None, **flags) -> spec_mod.RunSpec:
    """A RunSpec as the CLI builds it: flags by their RunSpec names, -o overrides."""
    return spec_mod.build(config, flags, list(overrides))


def prepared(overrides=(), **flags) -> Rendered:
    return prepare(make_spec(overrides, **flags))


def sky_python() -> str:
    """The interpreter of the SkyPilot venv (SkyPilot cannot share the trainer's environment)."""
    py = os.environ.get("FTCTL_SKY_PYTHON") or str(REPO / ".venv-sky" / "bin" / "python")
    if not Path(py).exists():
        raise RuntimeError(
            f"SkyPilot's python {py} does not exist: run scripts/setup.sh (it creates .venv-sky) "
            f"or point FTCTL_SKY_PYTHON at a python with skypilot and ftctl installed."
        )
    return py


def sky_reads(script: str, cases: dict, home: Path, cwd: Path, **more_env: str) -> dict:
    """``script`` run by SkyPilot's python (sky_python) with ``cases`` as JSON on stdin, offline: HOME ``home`` (its
    catalog), GCP the only cloud, no usage reports, the test stand-ins of tests/sky/site on the path, no SKYPILOT_ or
    FTCTL_ variable of this process; ``more_env`` added. The JSON of its last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "FTCTL_"))}
    env.update(
        HOME=str(home),
        SKYPILOT_DISABLE_USAGE_COLLECTION="1",
        FTCTL_TEST_SKY_CLOUDS="gcp",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "sky" / "site")]),
        FTCTL_SKY_ISOLATE_HOME="0",
        **more_env,
    )
    proc = subprocess.run(
        [sky_python(), "-c", script], input=json.dumps(cases), capture_output=True, text=True, cwd=cwd, env=env,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def sky_validate(files) -> dict[str, dict]:
    """Validate task YAML files in one subprocess of SkyPilot's venv; {file: {ok, error, summary}}."""
    proc = subprocess.run(
        [sky_python(), "-m", "tests.sky_validate", "--json", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    out = {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        out[rec["file"]] = rec
    assert len(out) == len(files), f"validator answered for {len(out)} of {len(files)} files:\n{proc.stderr}"
    assert proc.returncode == (0 if all(r["ok"] for r in out.values()) else 1), proc.stderr
    return out


_FAKE = """\
#!{python} -S
import json, os, sys
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if prog == "python3" and args == ["-m", "ftctl.sky.node_stack", "--print-python"]:
    print(sys.argv[0])  # a SkyPilot node's run python: this fake's python3, as where the torchrun's python is python3
    sys.exit(0)
if prog == "python3":  # ftctl's quiet torchrun (launch.torchrun_argv, quiet) is torchrun; any other python3 is python
    if args[:2] != ["-m", "ftctl.trainer.torchrun"]:
        os.execv(sys.executable, [sys.executable, *args])
    prog, args = "torchrun", args[2:]
env = {{k: v for k, v in os.environ.items() if k.startswith(("FTCTL_", "HOSTILE", "SLURM_", "SKYPILOT_"))
       or k in ("HEAD_ADDR", "OMP_NUM_THREADS")}}
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(json.dumps({{"prog": prog, "argv": args, "cwd": os.getcwd(), "env": env}}) + "\\n")
if prog in os.environ.get("FAKE_FAIL", "").split(","):  # a program that fails (a container that cannot start)
    print(prog + ": failed", file=sys.stderr)
    sys.exit(3)
if prog == "scontrol":
    if args[:2] == ["show", "hostnames"]:
        print("node1\\nnode2")
elif prog == "srun":  # ftctl writes srun's own options as --key=value: the command is the first other word
    cmd = args[next(i for i, a in enumerate(args) if not a.startswith("-")):]
    os.execvp(cmd[0], cmd)
elif prog == "apptainer":  # exec [options] IMAGE bash -c ...
    os.execvp("bash", args[args.index("bash"):])
elif prog == "torchrun":
    import time
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))  # training
    status = os.environ.get("FTCTL_STATUS_FILE")
    stopped = os.path.exists(os.environ.get("FTCTL_STOP_FILE", "/no/such/file"))
    if status:
        with open(status, "w") as fh:  # the trainer's word: preempted to requeue
            fh.write(os.environ.get("FAKE_STATUS") or ("preempted" if stopped else "complete"))
"""


def fake_bin(directory: Path, names=("srun", "scontrol", "apptainer", "torchrun", "python3", "docker")) -> Path:
    """A directory of recording fakes; put it first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        p = directory / name
        p.write_text(_FAKE.format(python=sys.executable))
        p.chmod(0o755)
    return directory


def fake_slurm(bin_dir: Path, monkeypatch, scripts: dict[str, str], home: Path) -> Path:
    """Shell scripts in the place of Slurm's commands (name -> body), first on PATH; no cluster's SLURM_CONF, the
    answers ftctl.slurm.scheduler keeps forgotten, the jobs recorded in FTCTL_HOME ``home``."""
    from ftctl.slurm import scheduler

    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("FTCTL_HOME", str(home))
    scheduler._ANSWERS.clear()
    return bin_dir


def fake_partition(tmp_path: Path, monkeypatch, sinfo: str) -> Path:
    """A Slurm login node whose sinfo answers ``sinfo`` (read from tmp_path/sinfo.out: a test may rewrite it), whose
    controller answers, whose queue is empty and whose sbatch submits job 4242; this venv's bin on PATH after them."""
    (tmp_path / "sinfo.out").write_text(sinfo)
    scripts = {
        "sinfo": f"cat {tmp_path / 'sinfo.out'}",
        "scontrol": 'case "$1" in ping) echo "Slurmctld(primary) at ctl is UP";; esac',
        "squeue": "true",
        "sbatch": "echo 4242",
    }
    bin_dir = fake_slurm(tmp_path / "bin", monkeypatch, scripts, tmp_path / "home")
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return tmp_path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_bash(
    script: str | None, *, file: Path | None = None, cwd: Path, fakes: Path, log: Path, env: dict, shell: str = "bash"
) -> subprocess.CompletedProcess:
    """Run script text (bash -c) or a file with the fakes first on PATH and a clean environment."""
    full = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(log), "HOME": str(cwd), "LANG": "C.UTF-8", **env}
    argv = [shell, str(file)] if file else [shell, "-c", script]
    return subprocess.run(argv, cwd=cwd, env=full, capture_output=True, text=True, timeout=60)


def write_model_config(directory: Path, **over) -> Path:
    """A Llama-3.2-1B-shaped config.json (1.24B parameters) in directory."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "intermediate_size": 8192,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        **over,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str, directory: Path = GOLDEN) -> None:
    """Compare text with DIRECTORY/NAME (tests/golden by default); UPDATE_GOLDEN=1 rewrites the file instead."""
    path = directory / name
    label = path.relative_to(REPO)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{label} does not exist: run the test with UPDATE_GOLDEN=1 to write it.", pytrace=False)
    want = path.read_text()
    if want != text:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(label), "rendered now"))
        pytest.fail(
            f"{name} differs from its golden file; if the change is intended, review the diff and "
            f"rewrite it with UPDATE_GOLDEN=1\n{diff}",
            pytrace=False,
        )
