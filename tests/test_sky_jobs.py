"""What `ftctl status / logs / cancel` say of a SkyPilot job, with SkyPilot's SDK a stand-in (the outermost boundary:
tests/test_sky_launch.py runs the real one on the test Slurm cluster, ~2 minutes a launch). The stand-in answers as
SkyPilot 0.14 did there (explore14): a cluster's records carry a cluster_hash made anew at each launch of a cluster,
job ids count from 1 on each, sky.cancel kills the job (no checkpoint of the trainer's own), a managed job's cancel
is done by its controller later, and a log line is "(setup pid=N) ..." in colour."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import threading
import time
import types

import pytest

from ftctl import backend, storage
from ftctl.backend import JobRef, JobState, record_job
from ftctl.errors import FtctlError
from ftctl.runpaths import STOP_REQUEST
from ftctl.sky import backend as sky_backend
from ftctl.sky.backend import SkyBackend

SETUP_LOG = (
    "\x1b[2m└── \x1b[0mJob started. Streaming logs...\n"
    "\x1b[36m(setup pid=20263)\x1b[0m bash: nosuchtool: command not found\n"
    "\x1b[36m(setup pid=20263)\x1b[0m error: a setup line failed: nosuchtool --init (exit 127): not training; fix -o "
    "setup=...\n"
    "srun: error: node1: task 0: Exited with exit code 127\n"
    "ERROR: \x1b[31mJob 1's setup failed with return code 143 (pid=20219).\x1b[0m\n"
)


class FakeSky:
    """sky's SDK as ftctl.sky.sdk calls it: one cluster ``c`` (hash ``now``) with jobs {id: state}; managed jobs."""

    def __init__(self, now="hash-2", jobs=None, managed=None, log=""):
        self.now, self.jobs, self.managed, self.log, self.cancelled = (
            now,
            dict(jobs or {}),
            dict(managed or {}),
            log,
            [],
        )
        self.mod = types.ModuleType("sky")
        self.mod.__spec__ = importlib.machinery.ModuleSpec("sky", None)  # bridge.here(): SkyPilot imports here
        self.mod.get = lambda x: x
        self.mod.status = lambda names: [{"cluster_hash": self.now, "status": "UP"}] if self.now else []
        self.mod.job_status = lambda cluster, ids: {i: self._next(self.jobs, i) for i in ids}
        self.mod.cancel = lambda cluster, job_ids: self._cancel(job_ids, self.jobs)
        self.mod.tail_logs = lambda cluster, job_id, follow, tail=0, output_stream=None: output_stream.write(self.log)
        self.mod.exceptions = types.SimpleNamespace(ClusterNotUpError=type("ClusterNotUpError", (Exception,), {}))
        self.mod.jobs = types.SimpleNamespace(
            queue_v2=lambda **kw: ([{"job_id": i, "status": self._next(self.managed, i)} for i in kw["job_ids"]],),
            cancel=lambda job_ids: self._cancel(job_ids, self.managed, later=2),
            tail_logs=lambda job_id, follow, tail=0, output_stream=None: output_stream.write(self.log),
        )

    def _cancel(self, ids, states, later=0):
        self.cancelled += ids
        for i in ids:
            # a managed job is stopped by its controller: still RUNNING for the next `later` questions
            states[i] = ["RUNNING"] * later + ["CANCELLED"] if later else "CANCELLED"

    def install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "sky", self.mod)
        return self

    @staticmethod
    def _next(states, i):
        """A job's state; where it is a list, one each time asked (the last one stays)."""
        s = states.get(i)
        if isinstance(s, list):
            return s.pop(0) if len(s) > 1 else s[0]
        return s


def cluster_job(job_id=2, cluster_hash="hash-1", output="s3://b/run", run_dir="/nonexistent/run") -> JobRef:
    extra = {"cluster": "c", "sky_job_id": job_id, "managed": False, "cluster_hash": cluster_hash}
    return JobRef("sky", f"c/{job_id}", run_dir, "run", output, extra)


def test_a_job_of_a_cluster_torn_down_since_is_not_taken_for_the_new_clusters_job_of_its_id(monkeypatch):
    """After `ftctl down` and a launch of a cluster of the same name, its job ids count from 1 again: job c/2 of the
    first cluster read the state of the new cluster's job 2 (RUNNING), and `ftctl cancel c/2` cancelled that one."""
    sky = FakeSky(now="hash-2", jobs={2: "RUNNING"}).install(monkeypatch)
    old = cluster_job(2, cluster_hash="hash-1")
    st = SkyBackend().status(old)
    assert st.state is JobState.UNKNOWN
    assert "cluster c was torn down after this job ran" in st.text, st.text
    assert SkyBackend().cancel(old).startswith("job c/2 cannot be cancelled: c/2 UNKNOWN: cluster c was torn down")
    assert sky.cancelled == []  # the new cluster's job 2 runs on
    assert SkyBackend().log_tail(old) == ""
    # the job of the cluster it ran on: its own state
    assert SkyBackend().status(cluster_job(2, cluster_hash="hash-2")).text == "c/2 RUNNING (on cluster c)"


def test_a_new_job_that_would_repeat_an_earlier_jobs_id_is_told_apart(monkeypatch, tmp_path):
    """The earlier job c/1 (its cluster torn down) stays listed and reachable: the new one is c/1@HASH."""
    record_job(cluster_job(1, cluster_hash="hash-1aaaaaaaa"))
    assert sky_backend.job_id_for("c", 1, "hash-2bbbbbbbb") == "c/1@hash-2bb"
    assert sky_backend.job_id_for("c", 2, "hash-2bbbbbbbb") == "c/2"
    assert sky_backend.job_id_for("other", 1, "hash-2bbbbbbbb") == "other/1"


def test_a_failed_setup_is_said_in_its_own_error_line(monkeypatch, tmp_path):
    """`ftctl status` of a FAILED_SETUP job said 'FAILED_SETUP (on cluster c): on cluster c' and nothing of which line
    failed; its log said it, after SkyPilot's "(setup pid=N)" in colour."""
    FakeSky(now="hash-1", jobs={1: "FAILED_SETUP"}, log=SETUP_LOG).install(monkeypatch)
    record_job(cluster_job(1))
    assert backend.status_lines("c/1") == [
        "c/1 FAILED_SETUP (on cluster c)",
        "error: a setup line failed: nosuchtool --init (exit 127): not training; fix -o setup=...",
    ]


@pytest.fixture
def committed(s3_bucket, tmp_path):
    """s3://.../run holding a committed checkpoint-40 (and a checkpoint-45 cut short)."""
    from ftctl.checkpoints import push, write_manifest

    stage = tmp_path / "stage"
    for step in (40, 45):
        ckpt = stage / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))
    write_manifest(str(stage / "checkpoint-40"), 40, 1, "digest")
    push(str(stage), f"{s3_bucket}/run", echo=lambda *_: None)
    return f"{s3_bucket}/run"


def test_cancel_says_no_checkpoint_was_saved_and_where_the_same_launch_goes_on(monkeypatch, committed):
    """SkyPilot's cancel kills the job (its trainer saved nothing as it stopped; explore14: stopped at step 514, the
    relaunch resumed checkpoint-500); `cancel` said only 'cancelled c/2', and `status` 'CANCELLED (on cluster c)'."""
    # no trainer hears its stop request, and its log says it does not train: not waited for (15 s of the suite's)
    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    monkeypatch.setattr(sky_backend, "HEARD_WAIT_S", 0.1)
    sky = FakeSky(now="hash-1", jobs={2: "RUNNING"}).install(monkeypatch)
    ref = cluster_job(2, output=committed)
    record_job(ref)
    said = SkyBackend().cancel(ref).splitlines()
    assert sky.cancelled == [2]
    note = (
        "SkyPilot's cancel kills the job without waiting for its trainer to save a checkpoint; "
        f"the same `ftctl launch` resumes it from checkpoint-40 in {committed}; onto cluster c while it is up, from a "
        "newer one its nodes kept, where they did"
    )
    assert said == ["cancelled c/2", note]
    assert backend.status_lines("c/2") == ["c/2 CANCELLED (on cluster c)", note]


def test_a_managed_jobs_cancel_waits_for_its_controller_to_stop_it(monkeypatch, committed):
    """sky.jobs.cancel returns before the controller stops the job (RUNNING, then CANCELLING for ~45 s): `cancel` said
    'cancelled managed/1' while it still ran."""
    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0)
    monkeypatch.setattr(sky_backend, "HEARD_WAIT_S", 0.1)  # no trainer hears the stop request (15 s each, spinning)
    sky = FakeSky(managed={1: "RUNNING"}).install(monkeypatch)
    ref = JobRef("sky", "managed/1", "/nonexistent/run", "run", committed, {"sky_job_id": 1, "managed": True})
    said = SkyBackend().cancel(ref).splitlines()
    assert sky.cancelled == [1] and sky.managed[1] == ["CANCELLED"]
    assert said[0] == "cancelled managed/1" and "resumes it from checkpoint-40" in said[1]
    monkeypatch.setattr(sky_backend, "CANCEL_WAIT_S", 0)  # a controller that does not stop it: said, not claimed
    forget_ended()
    sky.managed[1] = "RUNNING"
    sky.mod.jobs.cancel = lambda job_ids: None
    assert SkyBackend().cancel(ref).startswith("cancelling managed/1: SkyPilot had not stopped it after 0 s")


@pytest.mark.parametrize("answer", ["checkpoint-40", "checkpoint-45"])
def test_a_managed_jobs_cancel_returns_once_its_trainer_committed_its_stop_checkpoint(monkeypatch, committed, answer):
    """The cancel went on waiting for the jobs controller after the trainer had committed its stop's checkpoint and
    stopped: the controller's poll for cancels (15 s), its log download and the cluster's teardown come before
    CANCELLED, ~60 s of the ~222 s a cancel took on the test's Slurm infra. Now it sends SkyPilot's cancel and
    returns, saying the rest goes on. A checkpoint named but not committed (checkpoint-45, cut short) is not said
    saved: that cancel waits for the controller to stop the job, as before."""
    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    log = "ftctl: node 0 of 1\nattention: sdpa; Liger kernels: off\nstep 3/100  loss 2.1  ETA 0:01:00\n"
    sky = FakeSky(managed={1: "RUNNING"}, log=log).install(monkeypatch)
    ref = JobRef("sky", "managed/1", "/nonexistent/run", "run", committed, {"sky_job_id": 1, "managed": True})
    fs, path = storage.filesystem(storage.join(committed, STOP_REQUEST))

    def trainer():  # its rank 0 as trainer.callbacks.StopRequest answers: the request, with the checkpoint it saved
        for _ in range(200):
            if fs.exists(path):
                return fs.pipe_file(path, json.dumps({**json.loads(fs.cat_file(path)), "checkpoint": answer}).encode())
            time.sleep(0.05)

    stand_in = threading.Thread(target=trainer)
    stand_in.start()
    try:
        said = SkyBackend().cancel(ref, wait_s=2 if answer == "checkpoint-40" else 1).splitlines()
    finally:
        stand_in.join()
    assert sky.cancelled == [1]
    if answer == "checkpoint-45":
        assert sky.managed[1] == ["CANCELLED"] and said[0] == "cancelled managed/1"
        assert said[1].startswith("SkyPilot's cancel kills the job without waiting for its trainer to save"), said
        return
    assert sky.managed[1] == ["RUNNING", "RUNNING", "CANCELLED"]  # not asked again once the cancel was sent
    assert said == [
        "stopping managed/1: SkyPilot's jobs controller ends it and tears its cluster down in the background (about a "
        "minute; `ftctl status managed/1` says when it has)",
        f"its trainer saved checkpoint-40 as it stopped; the same `ftctl launch` resumes it from checkpoint-40 in "
        f"{committed}",
    ]
    record_job(ref)
    sky.managed[1] = "CANCELLED"  # the controller, later: `ftctl status` says it ended, and the same checkpoint
    assert backend.status_lines("managed/1") == ["managed/1 CANCELLED (managed job)", said[1]]


def test_a_launch_into_the_output_of_a_managed_job_that_is_recovering_is_refused(monkeypatch):
    """RECOVERING (its node lost, SkyPilot relaunching it) was PREEMPTED, which the second-job check lets through (a
    job that ended): a relaunch then trained beside the recovered job into the same checkpoints."""
    from tests.render_fixtures import prepared

    FakeSky(managed={1: "RECOVERING"}).install(monkeypatch)
    r = prepared([], backend="sky", gpus="1xL4", output_dir="s3://b/run", spot=True)
    record_job(JobRef("sky", "managed/1", "/elsewhere/run", "run", "s3://b/run", {"sky_job_id": 1, "managed": True}))
    with pytest.raises(FtctlError, match=r"job managed/1 \(sky: RECOVERING \(managed job\)\) is queued to train"):
        backend.refuse_a_second_job(r)


def test_status_of_a_job_whose_cluster_was_torn_down_says_where_the_same_launch_goes_on(monkeypatch, committed):
    """After `ftctl down`, status said only 'UNKNOWN: cluster c is gone (torn down)': how the run ended went with the
    cluster, but its output still says where it goes on."""
    FakeSky(now=None).install(monkeypatch)
    record_job(cluster_job(2, output=committed))
    assert backend.status_lines("c/2") == [
        "c/2 UNKNOWN: cluster c is gone (torn down)",
        f"the same `ftctl launch` resumes it from checkpoint-40 in {committed}",
    ]


def test_jobs_asks_skypilot_once_for_all_its_jobs(monkeypatch, tmp_path):
    """`ftctl jobs` asked each SkyPilot job in a python of its own (2-4 s to import SkyPilot each, on 2 cores at once)
    and each managed job in a jobs-queue request of its own (~5 s each on the test infra): 3 jobs took 12.9 s, now
    8.7 s (explore15). One bridge call; one queue request for the managed jobs, one job_status per cluster."""
    from ftctl.sky import bridge

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    sky = FakeSky(now="hash-1", jobs={1: "SUCCEEDED", 2: "RUNNING"}, managed={1: "CANCELLED", 2: "RECOVERING"})
    sky.install(monkeypatch)
    asked = []
    for name in ("job_status", "status"):
        monkeypatch.setattr(
            sky.mod, name, (lambda f, n: lambda *a, **k: asked.append(n) or f(*a, **k))(getattr(sky.mod, name), name)
        )
    queue = sky.mod.jobs.queue_v2
    sky.mod.jobs.queue_v2 = lambda **kw: asked.append(("queue", tuple(kw["job_ids"]))) or queue(**kw)
    calls = []
    call = bridge.call
    monkeypatch.setattr(bridge, "call", lambda op, **kw: calls.append(op) or call(op, **kw))
    for i in (1, 2):
        record_job(cluster_job(i))
        record_job(
            JobRef("sky", f"managed/{i}", "/nonexistent/run", "run", "s3://b/m", {"sky_job_id": i, "managed": True})
        )
    table = backend.jobs_table(20).splitlines()
    assert calls == ["statuses"]
    assert sorted(map(str, asked)) == sorted(["('queue', (2, 1))", "status", "job_status"])
    states = {line.split()[0]: line.split("  ")[-1].strip() for line in table[1:]}
    assert states == {
        "managed/2": "RECOVERING (managed job)",
        "c/2": "RUNNING (on cluster c)",
        "managed/1": "CANCELLED (managed job)",
        "c/1": "SUCCEEDED (on cluster c)",
    }
    # a job that ended is not asked again (its end cannot change): only c/2 and managed/2 are, in one call
    sky.mod.job_status = lambda cluster, ids: (_ for _ in ()).throw(RuntimeError("cluster c does not answer"))
    calls.clear()
    asked.clear()
    table = backend.jobs_table(20)
    assert calls == ["statuses"] and "('queue', (2,))" in map(str, asked)
    states = {line.split()[0]: line.split("  ")[-1].strip() for line in table.splitlines()[1:]}
    assert states["c/2"] == "unknown: SkyPilot: cluster c does not answer"
    assert states["c/1"] == "SUCCEEDED (on cluster c)" and states["managed/1"] == "CANCELLED (managed job)"
    assert states["managed/2"] == "RECOVERING (managed job)"  # the managed jobs are still told
    sky.jobs[2] = sky.managed[2] = "SUCCEEDED"
    sky.mod.job_status = lambda cluster, ids: {i: sky._next(sky.jobs, i) for i in ids}
    backend.jobs_table(20)
    calls.clear()
    assert "SUCCEEDED (on cluster c)" in backend.status_lines("c/2")[0] and calls == []


def forget_ended() -> None:
    """SkyPilot's answers for jobs that ended, kept in ftctl's home: a test that sets a job's state anew drops them."""
    backend.home_file(sky_backend.ENDED_FILE).unlink(missing_ok=True)
