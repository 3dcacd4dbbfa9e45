"""A Slurm user's first day (helper 154): --mem asks what a node has to the MiB (a 6.2 GiB node was asked 5G), and a
real launch says what its plan chose (GPUs, strategy, what it asks sbatch for, checkpoints, predicted time, notes)
once sbatch took the job, as its dry run does (a refusal stays one line).

Fake Slurm commands (sinfo, sbatch), no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftctl.backend import get, launch
from ftctl.slurm import render as slurm_render
from tests.render_fixtures import fake_partition, make_spec, prepared

# sinfo --Node --format '%P|%N|%t|%c|%m|%l|%a|%G|%n': the test cluster's nodes, RealMemory 6400 MiB (6.25 GiB)
SINFO = "gpu*|g1|idle|32|6400|1-00:00:00|up|gpu:a100:2(S:0)|g1\n"
FLAGS = dict(backend="slurm", method="qlora", gpus="2xA100", model_name_or_path="org/m", model_params="1b")


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    return fake_partition(tmp_path, monkeypatch, SINFO)


def test_mem_asks_all_of_a_node_to_the_mib(cluster):
    """sinfo's 6400 MiB node was planned for 6 GB (rounded down), then asked floor(6 GB in GiB) = --mem=5G, while
    doctor and the plan's note said 6.2 GiB: 1.25 GiB of the node unasked. Now all of it, 6400M (7G is more than it
    has: sbatch refuses it), and the same words in the comment and the note."""
    rendered = prepared(**FLAGS, output_dir="/o")
    assert "#SBATCH --mem=6400M\n" in rendered.text
    (said,) = [line for line in rendered.text.splitlines() if line.startswith("# --mem=")]
    assert said.startswith("# --mem=6400M a node: ") and "the nodes' 6.2 GiB" in said
    assert any(n.startswith("--mem=6400M a node: ") for n in rendered.plan.notes)
    get("slurm").check(rendered)  # within the node: no "more than partition 'gpu' has"


def test_mem_is_said_in_g_where_it_is_whole_gib_and_in_m_where_not():
    assert slurm_render.mem_size(327 * 1024) == "327G" and slurm_render.mem_size(6400) == "6400M"
    assert slurm_render.node_mib(6400 * 2**20 / 1e9) == 6400  # sinfo's MiB through GB and back: not 6399
    assert slurm_render.node_mib(5) == 4768  # -o host_memory_gb=5: 4768 MiB (was 4G)
    spec = make_spec(["host_memory_gb=5"], **FLAGS, output_dir="/o")
    assert "#SBATCH --mem=4768M\n" in prepared(["host_memory_gb=5"], **FLAGS, output_dir="/o").text
    assert spec.host_memory_gb == 5


def test_a_real_launch_says_its_plan_once_sbatch_took_it(cluster, capsys):
    """The real launch said only the job's id: the GPUs, strategy, --mem, time and checkpoint cadence the plan chose
    were in job.sbatch alone (and --mem's reason nowhere). Now on stderr, as sent; stdout's first line is the id."""
    spec = make_spec(
        ["max_steps=400"], **FLAGS, time="2:00:00", output_dir=str(cluster / "run"), data_path=_data(cluster)
    )
    launch(spec)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "submitted Slurm job 4242"
    lines = err.splitlines()
    plan = next(line for line in lines if line.startswith("plan: "))
    assert "qlora of org/m on 2xA100 (2 processes): " in plan and " sequences a step" in plan
    sbatch = next(line for line in lines if line.startswith("sbatch: "))
    for asked in ("--nodes=1", "--gres=gpu:a100:2", "--mem=6400M", "--time=2:00:00", "--cpus-per-task="):
        assert asked in sbatch
    assert "--output=" not in sbatch and "--signal=" not in sbatch  # ftctl's own workings: not the plan's
    assert next(line for line in lines if line.startswith("saving: ")).startswith("saving:      every ")
    assert any(line.startswith("time: ") and "est. for max_steps=400" in line for line in lines)
    assert any(line.startswith("note: --mem=6400M a node: ") for line in lines)


def _data(where: Path) -> str:
    path = where / "data.jsonl"
    row = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    path.write_text(row * 8)
    return str(path)


def test_torchrun_starts_two_processes_a_node_without_its_omp_banner(tmp_path):
    """torchrun printed its OMP_NUM_THREADS banner (asterisks, 4 `W...` lines a node) in every Slurm job of 2+
    processes a node, where the local run said nothing: it sets OMP_NUM_THREADS=1 for the workers where none is set,
    which the trainer replaces with its share of the cores (FTCTL_CPU_THREADS=auto). Now the script sets that 1
    itself (torch.distributed.run warns only where OMP_NUM_THREADS is unset); the run's own value is left alone."""
    from tests.render_fixtures import fake_bin, read_log, run_bash

    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node1"}
    flags = dict(backend="slurm", gpus="2xA100", model_name_or_path="org/m", model_params="1b", output_dir="/f/o")
    for more, threads in (([], "1"), (["env=OMP_NUM_THREADS=4"], "4")):
        text = prepared(more, **flags).text
        assert ('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"' in text) == (not more)
        log = tmp_path / f"{threads}.jsonl"
        run_bash(text, cwd=tmp_path, fakes=fakes, log=log, env=env)
        (torchrun,) = [c for c in read_log(log) if c["prog"] == "torchrun"]
        assert torchrun["env"]["OMP_NUM_THREADS"] == threads
        assert torchrun["env"].get("FTCTL_CPU_THREADS") == ("auto" if not more else None)
    one = prepared(**{**flags, "gpus": "1xA100"}).text  # one process a node: torchrun sets nothing, nor does this
    assert "OMP_NUM_THREADS" not in one


def test_a_setup_lines_failure_is_said_within_its_attempt(tmp_path):
    """The job's setup lines ran before the attempt's first line (`ftctl: job N attempt A on NODES`): a job whose
    setup failed had a log that began with bash's error, no job or attempt named, and an attempt after a requeue
    had its setup error among the previous attempt's lines. The attempt's line now comes first."""
    from ftctl import failures
    from tests.render_fixtures import fake_bin, run_bash

    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node1"}
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path="org/m", model_params="1b", output_dir="/f/o")
    r = run_bash(prepared(["setup=false"], **flags).text, cwd=tmp_path, fakes=fakes, log=tmp_path / "f.jsonl", env=env)
    assert r.returncode == 1 and r.stdout.startswith("ftctl: job 77 attempt 0 on node1 (head node1)\n"), r.stdout
    attempt, lines = failures.last_attempt(r.stdout)
    assert attempt == 0 and any(line.startswith("error: a setup line failed: false") for line in lines)


def test_a_failed_setup_line_says_its_last_output_and_the_fix(tmp_path):
    """A failed `module load` said only "a setup line failed: module load cuda (exit 127)" in `ftctl status`; bash's
    "module: command not found" was above it in the log, past what status shows. Now the error's indented lines
    (status shows them with it) say what exit 127 means in a batch job and the line's own last output lines, from
    the job's log as Slurm writes it (--output, both streams); an earlier line's output is not the failed line's."""
    from ftctl import failures
    from tests.render_fixtures import fake_bin, run_bash

    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node1"}
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path="org/m", model_params="1b", output_dir="/f/o")
    lines = ["setup=echo earlier line", "setup=module load cuda/12.1", "setup=echo never"]
    (tmp_path / "job.sbatch").write_text(prepared(lines, **flags).text)
    log = tmp_path / "slurm-77.out"
    log.write_text("an earlier attempt's line\n")  # --open-mode=append: the log goes on
    r = run_bash("bash job.sbatch >> slurm-77.out 2>&1", cwd=tmp_path, fakes=fakes, log=tmp_path / "f.jsonl", env=env)
    said = failures.error_line(log.read_text())  # what `ftctl status` says of the failed job
    assert r.returncode == 127 and "never" not in log.read_text(), log.read_text()
    first, hint, head, out = said.splitlines()
    assert first == "a setup line failed: module load cuda/12.1 (exit 127): not training; fix -o setup=..."
    assert hint.startswith("  exit 127: a command of it is not found in the batch shell, which reads no ~/.bashrc")
    assert "module: /etc/profile.d/lmod.sh" in hint
    assert head == "  its last output:" and out.startswith("  | ") and out.endswith("module: command not found")
    ok = prepared(["setup=false"], **flags)  # no output of its own: no "its last output" line
    (tmp_path / "job.sbatch").write_text(ok.text)
    run_bash("bash job.sbatch >> slurm-77.out 2>&1", cwd=tmp_path, fakes=fakes, log=tmp_path / "f.jsonl", env=env)
    assert failures.error_line(log.read_text()) == "a setup line failed: false (exit 1): not training; fix -o setup=..."
