"""Leftovers of sessions 44-45 still real (helper 178): sbatch's SBATCH_* variables of the launching shell (a site
profile's, or ~/.bashrc's SBATCH_ACCOUNT as some clusters' docs advise) took precedence over the script's #SBATCH
lines, unsaid: SBATCH_TIMELIMIT over --time, SBATCH_GRES=nvme:1 over the GPUs, SBATCH_NO_REQUEUE over --requeue,
SBATCH_ACCOUNT over --account; SBATCH_PARTITION sent the job to a partition the plan and checks had not seen.

Fake Slurm commands (sinfo, sbatch), no cluster."""

from __future__ import annotations

import os
import re

import pytest

from ftctl.backend import launch
from ftctl.errors import FtctlError
from ftctl.slurm import render as slurm_render
from tests.render_fixtures import fake_partition, make_spec, prepared

SINFO = "gpu*|g1|idle|32|64000|1-00:00:00|up|gpu:a100:2(S:0)|g1\ncpu|c1|idle|8|16000|2-00:00:00|up|(null)|c1\n"
FLAGS = dict(backend="slurm", method="lora", gpus="2xA100", model_name_or_path="org/m", model_params="1b")
SHELL = {
    "SBATCH_ACCOUNT": "def-prof",
    "SBATCH_PARTITION": "gpu",
    "SBATCH_TIMELIMIT": "3:00:00",
    "SBATCH_NO_REQUEUE": "1",
    "SBATCH_GRES": "nvme:1",
    "SBATCH_MEM_PER_CPU": "2G",
    "SBATCH_ERROR": "err.txt",
    "SBATCH_SIGNAL": "TERM@60",
    "SBATCH_EXCLUSIVE": "user",  # none of the script's: left to sbatch
}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    where = fake_partition(tmp_path, monkeypatch, SINFO)
    (where / "bin" / "sbatch").write_text(f"#!/bin/sh\nenv | grep ^SBATCH_ > {where / 'sbatch.env'}\necho 4242\n")
    for name in [n for n in os.environ if n.startswith("SBATCH_")]:
        monkeypatch.delenv(name)
    return where


def test_the_shells_sbatch_variables_do_not_override_the_script(cluster, monkeypatch, capsys):
    for name, value in SHELL.items():
        monkeypatch.setenv(name, value)
    data = cluster / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 8)
    spec = make_spec(**FLAGS, account="rrg-prof", output_dir=str(cluster / "run"), data_path=str(data))
    launch(spec)
    sent = dict(line.split("=", 1) for line in (cluster / "sbatch.env").read_text().splitlines())
    assert sent == {"SBATCH_EXCLUSIVE": "user"}
    script = (cluster / "run" / "job.sbatch").read_text()
    for line in ("--account=rrg-prof", "--partition=gpu", "--time=3:00:00", "--gres=gpu:a100:2", "--requeue"):
        assert f"#SBATCH {line}\n" in script
    err = capsys.readouterr().err
    assert (
        "note: SBATCH_ACCOUNT=def-prof (this shell) is not passed to sbatch, which would take it over the script's "
        "#SBATCH --account=rrg-prof: that line holds; use --account." in err
    )
    assert "note: SBATCH_GRES=nvme:1 (this shell) is not passed to sbatch" in err
    assert "--sbatch-arg=--mem-per-cpu=2G asks for it" in err
    assert "SBATCH_ERROR=err.txt (this shell) is not passed to sbatch: every attempt appends" in err
    assert "SBATCH_NO_REQUEUE=1 (this shell) is not passed to sbatch" in err
    assert "SBATCH_SIGNAL=TERM@60 (this shell) is not passed to sbatch" in err
    assert "note: --partition gpu: from SBATCH_PARTITION in this shell" in err  # the same as sent: no override said
    assert "SBATCH_PARTITION=gpu (this shell)" not in err and "SBATCH_TIMELIMIT=3:00:00 (this shell)" not in err


def test_a_partition_of_the_shells_is_the_one_checked(cluster, monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "cpu")
    rendered = prepared(**FLAGS, output_dir="/o")
    assert rendered.spec.partition == "cpu" and "#SBATCH --partition=cpu\n" in rendered.text
    from ftctl.backend import get

    with pytest.raises(FtctlError, match=r"\(--partition cpu is SBATCH_PARTITION's in this shell\)$"):
        get("slurm").check(rendered)  # no GPUs there: was planned for gpu* and sent to cpu


@pytest.mark.parametrize(
    ("value", "said"), [("2h", "SBATCH_TIMELIMIT=2h (this shell): Slurm reads"), ("1", "is not longer than")]
)
def test_a_time_limit_of_the_shells_slurm_cannot_use_is_refused(value, said):
    with pytest.raises(FtctlError, match=re.escape(said)):
        slurm_render.env_defaults(make_spec(**FLAGS, output_dir="/o"), {"SBATCH_TIMELIMIT": value})


def test_what_the_script_does_not_ask_stays_sbatchs():
    cpu = "#SBATCH --nodes=1\n#SBATCH --cpus-per-task=2\n#SBATCH --mem-per-gpu=8G\n"
    environ = {"SBATCH_GPUS": "1", "SBATCH_MEM_PER_NODE": "4G", "SBATCH_ARRAY_INX": "0-3", "SBATCH_QOS": "low"}
    assert slurm_render.env_overrides(cpu, environ) == {"SBATCH_MEM_PER_NODE": "mem", "SBATCH_ARRAY_INX": "array"}
    spec, notes = slurm_render.env_defaults(make_spec(**FLAGS, qos="high", output_dir="/o"), environ)
    assert spec.qos == "high" and notes == []  # the run's own


# sinfo: 8 A100s and 48 CPUs a node (8 a GPU would be 64)
WIDE = "gpu*|g1|idle|48|512000|1-00:00:00|up|gpu:a100:8(S:0-1)|g1\n"


@pytest.mark.parametrize(("gpus", "cpus"), [("8xA100", 48), ("2xA100", 12), ("1xA100", 6)])
def test_cpus_a_task_are_the_gpus_share_of_a_nodes_where_8_a_gpu_is_more(tmp_path, monkeypatch, gpus, cpus):
    """8 GPUs on 48-CPU nodes asked --cpus-per-task=64 (8 a GPU) and launch refused it: 'use -o cpus_per_task=48'.
    Now the GPUs' share of a node's CPUs, said in a note; a run's own -o cpus_per_task is checked as before."""
    from ftctl.backend import get

    fake_partition(tmp_path, monkeypatch, WIDE)
    rendered = prepared(**{**FLAGS, "gpus": gpus}, output_dir="/o")
    assert f"#SBATCH --cpus-per-task={cpus}\n" in rendered.text
    assert any(
        n.startswith(f"--cpus-per-task={cpus}: {gpus}'s share of the CPUs of partition gpu's")
        for n in rendered.plan.notes
    )
    get("slurm").check(rendered)
    with pytest.raises(FtctlError, match="use -o cpus_per_task=48"):
        get("slurm").check(prepared(["cpus_per_task=64"], **{**FLAGS, "gpus": gpus}, output_dir="/o"))
    assert get("slurm").doctor(gpus, "gpu")  # doctor --gpus: no problem launch does not have


def test_doctor_checks_the_partition_of_the_shells_sbatch_partition(cluster, monkeypatch, capsys):
    """`ftctl doctor --backend slurm --gpus 2xA100` checked the default partition where a launch, now as sbatch,
    takes SBATCH_PARTITION's."""
    from ftctl.backend import get

    monkeypatch.setenv("SBATCH_PARTITION", "cpu")
    assert not get("slurm").doctor("2xA100", None)
    out = capsys.readouterr().out
    assert "problem: partition 'cpu' has no GPUs" in out
    assert out.endswith("note: partition cpu checked: SBATCH_PARTITION=cpu in this shell, as a launch takes it\n")
    assert get("slurm").doctor("2xA100", "gpu")  # --partition: its own
