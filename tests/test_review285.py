"""Review 59's findings 4, 5 and 8 (helper 285).

4. slurmstepd's oom-kill line of a job's step replaced any error in `ftctl status`: a rank's "Cannot load the
   tokenizer" vanished behind "step 12.batch ran out of host memory" (a setup line's kill, perhaps retried). Now it
   replaces only a line that is the kill's effect (a rank killed, a peer lost, a setup line's exit 137); another error
   is kept, the kill said after it.
5. A rank's SIGKILL was blamed on memory wherever its cgroup had ever counted an out-of-memory kill: a long-lived pod's
   count, or (cgroup v2) a sibling container's that the pod's memory.events counts too. Now only a kill counted since
   the launcher started (killed_line's kills_before, read by the quiet torchrun: task-285-extra.patch), and on v2 the
   nearest memory cgroup's memory.events.local (its own processes' kills) where it has one.
8. A jobs.jsonl that is not UTF-8 made a bare `ftctl status` / `ftctl logs` (and `ftctl jobs`) a UnicodeDecodeError
   traceback: the record is read as bytes, a damaged line passed over as a line cut short is.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ftctl import failures
from ftctl.backend import JobRef, record_job, recorded_jobs
from ftctl.cli import main

GiB = 2**30
OOM = "slurmstepd-node1: error: Detected 1 oom-kill event(s) in StepId=12.batch. Some of your processes may have been"
OOM += " killed by the cgroup out-of-memory handler."
ATTEMPT = failures.ATTEMPT_LINE.format(job=12, attempt=1)


def test_a_batch_steps_oom_kill_is_said_after_a_real_error_not_in_its_place():
    tokenizer = "error: Cannot load the tokenizer of 'org/name': not found"
    said = failures.error_line(f"{ATTEMPT}\n{tokenizer}\n  a detail line\n{OOM}\n")
    lines = said.splitlines()
    assert lines[:2] == ["Cannot load the tokenizer of 'org/name': not found", "  a detail line"], said
    assert lines[2].startswith("  and slurmstepd logged: step 12.batch ran out of host memory"), said
    assert len(lines) == 3
    # the kill's effects are still replaced: a rank killed without a word, a lost peer, a setup line killed (137)
    for effect in (
        "error: rank 0 on node1 was killed by SIGKILL (often the node's out-of-memory killer); a relaunch resumes",
        "error: RuntimeError: [gloo] Read error: Connection reset by peer",
        "error: a setup line failed: python3 hog.py (exit 137): not training; fix -o setup=...",
    ):
        assert failures.error_line(f"{ATTEMPT}\n{effect}\n{OOM}\n").startswith("step 12.batch ran out of host memory")
    # a setup line that failed on its own (exit 1) is its own error
    own = failures.error_line(f"{ATTEMPT}\nerror: a setup line failed: false (exit 1): not training\n{OOM}\n")
    assert own.startswith("a setup line failed: false (exit 1)") and "ran out of host memory" in own


def _cgroup(d: Path, limit: str, kills: int, local: int | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(f"{limit}\n")
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 5\noom {kills}\noom_kill {kills}\n")
    if local is not None:
        (d / "memory.events.local").write_text(f"low 0\nhigh 0\nmax 0\noom {local}\noom_kill {local}\n")


def _pod(tmp_path: Path, local: int | None) -> tuple[str, str]:
    """A v2 pod with an 8 GiB limit whose memory.events counts a sibling container's kill; ours has no limit of its
    own (and, on Linux 5.2+, a memory.events.local). (proc_cgroup, root)."""
    root = tmp_path / "sys"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    _cgroup(root / "kubepods" / "pod1", str(8 * GiB), kills=1 + (local or 0))
    _cgroup(root / "kubepods" / "pod1" / "ctr-jupyter", "max", kills=1, local=None if local is None else 1)
    _cgroup(root / "kubepods" / "pod1" / "ctr-ftctl", "max", kills=local or 0, local=local)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr-ftctl\n")
    return str(proc), str(root)


def test_a_sigkill_is_blamed_on_memory_only_for_a_kill_of_our_own_since_the_launcher_started(tmp_path):
    blamed = "killed by SIGKILL: out of host memory, over its limit of 8 GiB"
    # v2 with memory.events.local: the sibling's kill is not ours; our own is
    proc, root = _pod(tmp_path / "local0", local=0)
    assert failures.memory_cgroup(proc, root) == (0, 8 * GiB)
    assert "a relaunch resumes from the last checkpoint" in failures.killed_line("rank 0 on h", "SIGKILL", proc, root)
    proc, root = _pod(tmp_path / "local1", local=1)
    assert failures.memory_cgroup(proc, root) == (1, 8 * GiB)
    assert blamed in failures.killed_line("rank 0 on h", "SIGKILL", proc, root)
    # no memory.events.local (an older kernel): the pod's count, read as torchrun started, has not risen
    proc, root = _pod(tmp_path / "old", local=None)
    at_start = failures.oom_kills(proc, root)
    assert at_start == 1
    line = failures.killed_line("rank 0 on h", "SIGKILL", proc, root, kills_before=at_start)
    assert line.endswith("(often the node's out-of-memory killer); a relaunch resumes from the last checkpoint"), line
    pod = Path(root) / "kubepods" / "pod1"
    (pod / "memory.events").write_text("oom 2\noom_kill 2\n")  # a kill since: ours (or the pod's, as it is told)
    assert blamed in failures.killed_line("rank 0 on h", "SIGKILL", proc, root, kills_before=at_start)
    assert failures.oom_kills(str(tmp_path / "no-such"), root) is None


def test_a_jobs_record_that_is_not_utf8_is_no_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"\xff\xfe garbage\n")
    for command in ("status", "logs"):
        result = CliRunner().invoke(main, [command])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "Missing argument 'JOB'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert result.stdout.startswith(f"No job record readable in {jobs}: 1 damaged line"), result.stdout
    assert "`ftctl jobs --prune` drops them." in result.stdout
    # a record after the damaged line is read, and is the newest a bare `ftctl logs` names
    (tmp_path / "run").mkdir()
    record_job(JobRef("local", str(tmp_path / "run"), str(tmp_path / "run"), "run", str(tmp_path / "run")))
    jobs.write_bytes(jobs.read_bytes() + b'{"job_id": "\xe9t\xe9"}\n')  # a cut, non-UTF-8 line after it
    assert [ref.job_id for ref, _ in recorded_jobs()] == [str(tmp_path / "run")]
    result = CliRunner().invoke(main, ["logs"])
    assert result.exit_code == 2 and f"The newest: `ftctl logs {tmp_path / 'run'}`." in result.output, result.output
    pruned = CliRunner().invoke(main, ["jobs", "--prune"])
    assert pruned.exit_code == 0 and "2 cut short" in pruned.stdout and "Kept 1 jobs" in pruned.stdout, pruned.output
