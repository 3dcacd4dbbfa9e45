"""ftctl used by several people who share things (explore54, task-256): a lab's group directory on one disk (setgid,
umask 002), one bucket, a home that is not writable. Checked with modes and messages, without a second Unix user
(as run under root, the tests cannot be refused a write: a path under a regular file stands for one).

The tests marked PATCHED check the changes in /work/notes/task-256-extra.patch (ftctl/trainer/data.py,
trainer/merge.py, trainer/run.py, trainer/valid_rows.py, local/backend.py): they fail until it is applied."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path

import pytest

from ftctl import lease
from ftctl.backend import JobRef, find_job, record_job, recorded_jobs
from ftctl.errors import FtctlError
from ftctl.runpaths import RunPaths, as_mkdir_made, user_name


@pytest.fixture
def group_umask():
    """umask 002, as a lab sharing a directory sets it; the test's own restored after."""
    before = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(before)


def _group_dir(tmp_path: Path) -> Path:
    """A group's shared directory: setgid and group-writable (chmod 2775 /scratch/lab)."""
    shared = tmp_path / "lab"
    shared.mkdir()
    shared.chmod(0o2775)
    return shared


def test_a_temporary_directory_renamed_into_a_group_directory_keeps_the_groups_setgid(tmp_path, group_umask):
    """mkdtemp's directory, chmod'ed to the umask's mode, lost the setgid bit mkdir gives it in a setgid directory: the
    files written in it then had their writer's own group (a colleague could not remove a tokenized-data cache left
    0755, nor read a merged model under umask 007)."""
    made = Path(tempfile.mkdtemp(dir=_group_dir(tmp_path)))
    as_mkdir_made(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o2775
    plain = Path(tempfile.mkdtemp(dir=tmp_path))  # a directory of one's own: no setgid
    as_mkdir_made(plain)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o775


def test_the_tokenized_rows_kept_for_a_resume_are_writable_by_the_group_that_shares_the_run(tmp_path, group_umask):
    """PATCHED (trainer/data.py). The data cache's entry was chmod 0755 whatever the umask, its setgid cleared: in a
    lab's run directory, a colleague whose resume ended the run could not remove it (rmtree ignoring errors: left on
    the disk, ~9 bytes a token)."""
    import datasets

    from ftctl.trainer.data import DataStats, _write_cached

    entry = _group_dir(tmp_path) / "run" / ".ftctl" / "data-cache" / "key"
    entry.parent.mkdir(parents=True)
    _, kept = _write_cached(entry, datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]]}), DataStats(rows=1))
    assert kept is True
    assert stat.S_IMODE(entry.stat().st_mode) == 0o2775


def test_rows_written_by_data_valid_rows_are_as_readable_as_the_umask_lets_them(tmp_path, group_umask):
    """PATCHED (trainer/valid_rows.py). The kept rows were written through mkstemp, 0600: a colleague of the group
    could not read the data file they were cleaned for."""
    from ftctl.trainer.valid_rows import _write_new

    out = tmp_path / "clean.jsonl"
    _write_new(out, b'{"text": "a"}\n')
    assert stat.S_IMODE(out.stat().st_mode) == 0o664


def test_a_run_directory_lock_names_the_user_training_into_it(tmp_path):
    """PATCHED (trainer/run.py). `ftctl status` of a colleague's run in a shared directory said "training (pid N on
    HOST since ...)": which of the lab's five trains it was not said (the launch lock said it)."""
    from ftctl.trainer.run import only_trainer

    with only_trainer(str(tmp_path)):
        line = RunPaths(tmp_path).train_lock.read_text()
    assert f" by {user_name()} since " in line, line


def test_cancel_of_a_run_whose_directory_this_user_cannot_write_is_one_line(tmp_path, monkeypatch):
    """PATCHED (local/backend.py). Bob's `ftctl cancel /scratch/lab/alices-run` (her umask 022: not his to write) was
    a PermissionError traceback. A stop file that cannot be written stands here for it (root writes anywhere)."""
    from ftctl.local.backend import LocalBackend

    paths = RunPaths(tmp_path)
    paths.train_lock.parent.mkdir(parents=True)
    paths.stop_file.symlink_to(tmp_path / "gone" / "stop")  # into no directory: the write is refused
    with open(paths.train_lock, "w") as held:
        held.write("pid 1 on another-host by alice since 2026-12-07 02:00:00 +0000\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(FtctlError) as refused:
            LocalBackend().cancel(JobRef("local", str(tmp_path), str(tmp_path), "r", str(tmp_path)))
    said = str(refused.value)
    assert said.startswith(f"cannot ask {tmp_path} (pid 1 on another-host by alice since "), said
    assert "`kill -TERM` its pid" in said and "umask 002" in said, said


def test_a_launch_whose_jobs_record_cannot_be_written_goes_on_and_says_so(tmp_path, monkeypatch, capsys):
    """A home that is not writable (a cluster's service account, a container's user; a FTCTL_HOME a lab shares, made
    by a colleague under umask 022): the launch ended in a traceback after sbatch had queued its job, which was then
    recorded nowhere. One warning now, naming FTCTL_HOME; the launch goes on."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FTCTL_HOME", str(blocker / "ftctl"))  # under a regular file: no directory can be made
    record_job(JobRef("slurm", "4242", str(tmp_path / "run"), "r", str(tmp_path / "run")))
    err = capsys.readouterr().err
    assert err.startswith(f"warning: job 4242 is not recorded in {blocker / 'ftctl' / 'jobs.jsonl'} ("), err
    assert "Set FTCTL_HOME to a directory you can write." in err and "run directory" not in err
    record_job(JobRef("local", str(tmp_path / "run"), str(tmp_path / "run"), "r", str(tmp_path / "run")))
    assert "(a local run is found by its run directory still)" in capsys.readouterr().err
    assert recorded_jobs() == []


def test_a_job_id_of_another_users_job_says_where_its_record_is(tmp_path, monkeypatch):
    """Bob's `ftctl status 81234` of Alice's Slurm job: "No job ... was launched from here" and nothing on why; each
    user's jobs are in their own record."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FtctlError) as refused:
        find_job("81234")
    said = str(refused.value)
    assert said.startswith("No job '81234' was launched from here"), said
    assert "A job another user (or another FTCTL_HOME) launched is in that record, not this one" in said, said


def test_a_lease_in_a_shared_bucket_names_the_user_whose_trainer_holds_it(monkeypatch):
    """Bob's launch into s3://lab/shared-run while Alice's run trains there: "being trained into by process 22952 on
    vm (run ftctl-lora-model, ...)": whose process, in a bucket five people share, was not said."""
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = lease.Holder("s3://lab/shared-run", None, "ftctl-lora-model")
    assert holder.record["user"] == "alice"
    said = lease.describe({**holder.record, "renewed_unix": 0}, now=12)
    assert said.startswith("process ") and said.endswith(" by alice (run ftctl-lora-model, renewed 12 s ago)"), said
    slurm = {"holder": "Slurm job 7", "host": "node3", "user": "alice", "renewed_unix": 0}
    assert lease.describe(slurm, now=1) == "Slurm job 7 on node3 by alice (renewed 1 s ago)"
    older = {"holder": "Slurm job 7", "host": "node3", "renewed_unix": 0}  # an older ftctl's lease: no user
    assert lease.describe(older, now=1) == "Slurm job 7 on node3 (renewed 1 s ago)"


def test_a_directory_of_another_user_is_named_with_its_owner_and_mode(tmp_path):
    """Whom to ask in a shared directory (runpaths.owned_by_another): a uid without a name is its number."""
    from ftctl.runpaths import owned_by_another

    assert owned_by_another(tmp_path) is None  # this user's own
    assert owned_by_another(tmp_path / "none") is None
    if os.getuid() != 0:
        pytest.skip("giving a directory to another uid needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 54321, -1)
    assert owned_by_another(theirs) == "uid 54321's, drwxr-xr-x"


def test_an_output_in_a_colleagues_directory_names_them_and_the_groups_way(tmp_path, monkeypatch):
    """PATCHED (preflight.py). Bob's launch into /scratch/lab/runs/x, runs/ made by Alice under umask 022: "cannot
    write in /scratch/lab/runs (Permission denied); choose another --output, or fix the permissions": whose, and
    how a group shares runs, was not said. (Root writes anywhere: the refusal stands in for it.)"""
    import errno

    from ftctl import preflight

    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr("ftctl.runpaths.owned_by_another", lambda path: "alice's, drwxr-sr-x")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "TemporaryFile", refused)
    [finding] = preflight._check_local_output(str(runs / "x"), str(runs / "x"))
    assert finding.what.endswith(f"cannot write in {runs} (Permission denied: alice's, drwxr-sr-x)"), finding
    assert f"chmod g+w {runs}" in finding.fix and "umask 002" in finding.fix, finding


def _colleagues_slurm_run(run: Path) -> Path:
    """A run directory as a colleague's Slurm launch left it on the shared disk: spec.json (backend slurm), the
    sbatch script and its jobs' logs (an earlier job, then a requeued relaunch's)."""
    import json

    run.mkdir(parents=True)
    spec = {"backend": "slurm", "name": "ftctl-lora-m", "output_dir": str(run)}
    (run / "spec.json").write_text(json.dumps({"spec": spec, "plan": {}}))
    (run / "job.sbatch").write_text("#!/bin/bash\n")
    for job in ("9999", "81234"):  # ids grow: 81234 is the newer
        (run / f"slurm-{job}.out").write_text("")
    return run


def test_status_of_a_colleagues_slurm_run_directory_asks_slurm_for_its_newest_job(tmp_path):
    """Bob's `ftctl status /scratch/lab/alice-run` (no record of his names her job): it was taken for a local run
    ("local run, stopped before the end: the same `ftctl launch` starts it again") while her job was queued."""
    run = _colleagues_slurm_run(tmp_path / "alice-run")
    backend, ref = find_job(str(run))
    assert (backend.name, ref.backend, ref.job_id, ref.run_dir) == ("slurm", "slurm", "81234", str(run))
    (run / "spec.json").write_text('{"spec": {"backend": "local"}}')  # a local run's directory: as before
    assert find_job(str(run))[1].backend == "local"


def test_a_launch_into_a_colleagues_run_directory_whose_slurm_job_is_queued_is_refused(tmp_path, monkeypatch):
    """Bob's launch into /scratch/lab/alice-run while her Slurm job waits in the queue: refuse_a_second_job asked only
    the jobs of his own record, and his launch replaced the spec.json her job then trained with."""
    from types import SimpleNamespace

    from ftctl.backend import JobState, JobStatus, refuse_a_second_job
    from ftctl.slurm.backend import SlurmBackend

    run = _colleagues_slurm_run(tmp_path / "alice-run")
    asked = []

    def status(self, ref):
        asked.append(ref.job_id)
        return JobStatus(JobState.PENDING, f"{ref.job_id} PENDING (Priority)")

    monkeypatch.setattr(SlurmBackend, "status", status)
    spec = SimpleNamespace(backend="slurm", output=str(run), s3_endpoint_url=None)
    rendered = SimpleNamespace(run_dir=run, spec=spec, another_output="another --output")
    with pytest.raises(FtctlError) as refused:
        refuse_a_second_job(rendered)
    said = str(refused.value)
    assert asked == ["81234"]
    assert said.startswith(f"job 81234 of {user_name()} (slurm: PENDING (Priority)) is queued to train into "), said
    # not `ftctl cancel 81234`: her job is not in his record (find_job refuses it) and Slurm cancels only hers
    assert f"Wait for it, ask {user_name()} (`ftctl status {run}` shows it), or choose another --output" in said, said
    assert "ftctl cancel" not in said


def test_a_shared_hf_home_a_login_made_private_is_said_as_such(tmp_path, monkeypatch):
    """PATCHED (hub.py, plan.py, preflight.py). One `hf auth login` with the lab's shared HF_HOME makes HF_HOME 0700
    (huggingface_hub's _write_secret keeps the token's directory private): every other student's launch then said
    "Cannot tell the size of model 'org/m': it is not in the Hugging Face cache", of a model that is there. (Root
    reads anything: os.access stands in for the refusal.)"""
    from huggingface_hub import constants

    from ftctl import hub
    from ftctl.plan import make_plan
    from tests.render_fixtures import make_spec

    hf = tmp_path / "hf"
    (hf / "hub").mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf / "hub"))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(hf) and real(p, mode, **kw))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.model_config.cache_clear()
    with pytest.raises(FtctlError) as refused:
        make_plan(make_spec(backend="local", gpus="cpu", model_name_or_path="lab/tiny-model", data_path="d.json"))
    said = str(refused.value)
    assert said.startswith(
        f"Cannot tell the size of model 'lab/tiny-model': the Hugging Face cache {hf} is there but "
    ), said
    assert "`hf auth login` with HF_HOME shared makes it 0700" in said and f"chmod 2775 {hf}" in said, said
    assert "HF_TOKEN_PATH=~/.cache/huggingface/token" in said and "--model-params" not in said, said
    # a private HF_HUB_CACHE of one's own is read whatever HF_HOME is: nothing refused (review-57 R2)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    assert hub.unreadable_cache() is None


def test_a_staging_directory_in_a_colleagues_cache_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """PATCHED (preflight.py). Bob's resume of s3://lab/run-K with the lab's FTCTL_CACHE, whose runs/ Alice made under
    umask 022: the trainer stopped after loading the model ("rank 0 on vm: PermissionError: [Errno 13] Permission
    denied: '.../runs/lab-run-K-c31db218-uid1002'"). (Root writes anywhere: os.access stands in for the refusal.)"""
    from ftctl import preflight
    from tests.render_fixtures import make_spec

    runs = tmp_path / "cache" / "runs"
    runs.mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) != str(runs) and real(p, mode, **kw))
    monkeypatch.setattr("ftctl.runpaths.owned_by_another", lambda path: "alice's, drwxr-sr-x")
    spec = make_spec(backend="local", gpus="cpu", model_name_or_path="m", data_path="d.json", output_dir="s3://lab/k")
    [finding] = preflight.check_staging(spec, str(runs / "lab-k-1234abcd-uid1002"))
    assert finding.what.endswith(f"and you cannot write in {runs} (alice's, drwxr-sr-x)"), finding
    assert finding.fix.startswith("set FTCTL_CACHE (or FTCTL_LOCAL_DIR) to a directory of your own"), finding
    assert preflight.check_staging(spec, str(tmp_path / "mine" / "lab-k")) == []  # one's own: nothing said


def test_the_umask_is_read_without_being_set(monkeypatch):
    """review-57 N2: as_mkdir_made/as_umask/valid_rows read the umask with os.umask(0) and put it back, a window in which
    a thread of the trainer creating a file made it 0666/0777. On Linux runpaths.current_umask reads /proc/self/status
    and never sets it."""
    from ftctl import runpaths

    old = os.umask(0o027)
    try:

        def setting(mask):
            raise AssertionError(f"os.umask({mask:o}) called")

        monkeypatch.setattr(os, "umask", setting)
        assert runpaths.current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)
