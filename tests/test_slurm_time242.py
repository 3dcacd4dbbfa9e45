"""A job's time limit against the run's length, said at launch (helper 242, explore48): a job without --time gets
the partition's DefaultTime (sinfo's %L, often an hour), which nothing said; a run longer than its attempts (1 +
max_requeues) x --time stopped unfinished after the last requeue. Fake sinfo, no cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from ftctl.backend import get
from ftctl.slurm import doctor
from tests.render_fixtures import prepared

VENV_BIN = Path(sys.executable).parent
# sinfo --Node --format '%P|%N|%t|%c|%m|%l|%a|%G|%n|%L': MaxTime, then DefaultTime last ('n/a' where unset)
SINFO = """\
gpu*|g1|idle|64|1024000|2-00:00:00|up|gpu:a100:8(S:0-1)|g1|1:00:00
gpu*|g2|idle|64|1024000|2-00:00:00|up|gpu:a100:8(S:0-1)|g2|1:00:00
long|l1|idle|64|1024000|infinite|up|gpu:a100:8|l1|n/a
capped|c1|idle|64|1024000|4:00:00|up|gpu:a100:8|c1|n/a
"""
REPORT = doctor.DoctorReport(sbatch="sbatch", reachable=True, partitions=doctor._parse_sinfo(SINFO))
H = 3600


def _doubt(partition=None, time=None, train_s=None, requeues=5):
    return doctor.time_doubt(REPORT, partition, time, train_s, requeues)


def test_a_job_without_time_is_told_the_partitions_default_and_what_it_does_to_a_longer_run():
    assert _doubt(train_s=15.1 * H) == (
        True,
        "no --time: the job gets partition gpu's default time limit, 1:00:00 (sinfo), and the run trains for ~15.1 h "
        "est.: each attempt is cut there and requeued, back in the queue; after 6 attempts of 1:00:00 (-o "
        "max_requeues=5) it stops unfinished, resumed only by launching it again; pass --time (partition gpu allows "
        "up to 2-00:00:00)",
    )
    assert _doubt(train_s=3 * H)[1].endswith(
        "requeued, back in the queue; pass --time (partition gpu allows up to 2-00:00:00)"
    )
    # a short run, or one of no estimate, is told the limit all the same, as a note
    note = (False, "no --time: the job gets partition gpu's default time limit, 1:00:00 (sinfo); --time asks for "
            "another (partition gpu allows up to 2-00:00:00)")  # fmt: skip
    assert _doubt(train_s=600) == note and _doubt() == note
    # no DefaultTime: MaxTime is the job's (slurm.conf); an infinite one is no limit, and nothing is said
    assert "default time limit, 4:00:00 (sinfo), and the run trains for ~15.1 h" in _doubt("capped", None, 15.1 * H)[1]
    assert _doubt("long", None, 15.1 * H) is None
    assert _doubt("gpu,long", None, 15.1 * H) is None  # whichever starts it: its limit is not known here


def test_a_run_longer_than_its_attempts_of_time_is_warned_before_the_queue_wait():
    assert _doubt(time="02:00:00", train_s=15.1 * H) == (
        True,
        "the run trains for ~15.1 h est., longer than 6 x --time 02:00:00: each attempt is cut at its time limit and "
        "requeued, and after 6 attempts of 02:00:00 (-o max_requeues=5) it stops unfinished, resumed only by launching "
        "it again; raise --time (partition gpu allows up to 2-00:00:00) or -o max_requeues",
    )
    assert _doubt(time="04:00:00", train_s=15.1 * H) is None  # 6 x 4 h: it finishes
    assert _doubt(time="02:00:00", train_s=15.1 * H, requeues=10) is None  # 11 attempts
    said = _doubt("long", "04:00:00", 15.1 * H, requeues=0)[1]
    assert "longer than 1 x --time 04:00:00" in said and "raise --time (partition long has no time limit)" in said
    assert _doubt(time="02:00:00") is None and _doubt(time="UNLIMITED", train_s=99 * H) is None


def test_an_older_sinfos_answer_without_default_time_says_nothing():
    parts = doctor._parse_sinfo("gpu*|g1|idle|64|1024000|1:00:00|up|gpu:8|g1\n")
    assert parts[0].default_time == "" and parts[0].job_time_limit is None
    assert doctor.DoctorReport("sbatch", True, partitions=parts) and _doubt("nosuch", None, 99 * H) is None
    parts = doctor._parse_sinfo("gpu*|g1|idle|64|1024000|1:00:00|up|gpu:8|g1|n/a\n")
    assert parts[0].job_time_limit == "1:00:00"  # MaxTime, where DefaultTime is unset


def test_launch_says_it_before_sbatch(tmp_path, monkeypatch, capsys):
    (tmp_path / "sinfo").write_text(f"#!/bin/sh\ncat <<'X'\n{SINFO}X\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{VENV_BIN}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.delenv("SBATCH_TIMELIMIT", raising=False)
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    rendered = prepared(["max_steps=30000", "setup=true"], backend="slurm", method="fft", gpus="2x8xA100",
                        model_name_or_path="meta-llama/Llama-3.1-8B", output_dir="/fixed/out")  # fmt: skip
    capsys.readouterr()
    get("slurm").check(rendered)
    err = capsys.readouterr().err
    assert "warning: no --time: the job gets partition gpu's default time limit, 1:00:00 (sinfo), and the run " in err
    assert "it stops unfinished" in err
