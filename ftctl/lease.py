"""The lease on an object-store output: which trainer writes into it now.

A run directory on a disk has its trainer's flock (runpaths.RunPaths.train_lock). An object store has no lock, and
two jobs launched into one output without knowing of each other (from two laptops, two SkyPilot clusters) would both
write its checkpoints. So rank 0 of a trainer into an object-store output keeps a small object there
(runpaths.TRAIN_LEASE), renewed every RENEW_S by a thread of its own and removed as it ends; one not renewed for
STALE_S is a trainer that was killed (or whose store went silent), and holds nothing.

    launch    refuses an output whose lease is live (``refusal``), whoever launched its job
    trainer   ``Holder``: waits for a lease that is not its own job's to be let go or go stale, refuses one that is
              renewed meanwhile, then holds it (a requeued or recovered attempt of the same job takes its own over)
    cancel    ``release`` once the job it names was cancelled: a killed trainer could not remove it

The trainer writes its lease only where it is still as read (storage.put_if): none there (If-None-Match *), or the
stale or own lease read (If-Match its ETag: S3, Azure; GCS: ifGenerationMatch its generation). Of two trainers that read it in the same instant one write
holds, and the other reads the lease again: the winner's, live. A store that refuses the condition, or ignores it (a
second create-only write of the lease just written is taken), gets a plain write as before, said once (race_open):
there two trainers starting into one output within the same second can both take it.

Each renewal too replaces only the holder's own last write (If-Match the ETag the store gave it). A trainer whose
renewals did not reach the store for STALE_S may have been taken over by another job meanwhile: its next renewal
then fails (412), it writes nothing more into the lease, and ``lost`` is set; the training loop stops there without
saving a checkpoint over that job's (trainer.callbacks.LeaseKept). As it ends it deletes the lease only where that is
still its own write (If-Match on DELETE), so the new holder's is left. Where the store gives no ETag or refuses the
condition, renewals are plain writes and the release compares the holder it reads, as before (said once, race_open).
The other nodes of a run hold none: their uploaders follow rank 0's record (``follow``), asking the store's lease
before each share of a checkpoint they write, and write nothing into an output whose lease is another job's.

A renewal the store does not take (503 SlowDown, a 500, no answer in time, after storage's retries) is said and tried
again at the next turn: training goes on. Renewals failing for so long that the lease would go stale before the next
one (STALE_S after the last that reached the store) set ``lost`` too: another job may take the output over from then
on, so the trainer stops as above, saving nothing into the output. A renewal that the store took after the trainer gave
up waiting for its answer (a slow store) is recognised as the holder's own at the next renewal, not as another job's.

How long ago a lease was renewed is judged by the store's own clock on S3, GCS and Azure: the answer's Date less the
lease's LastModified (GCS: its object's ``updated``), both the store's (a reader whose clock is minutes off, a node
with NTP off, neither takes a live lease nor waits on a dead one for its clock's error). Where the store gives no such
times, the lease's own renewed_unix (the writer's clock) against the reader's clock.

A trainer that cannot read the lease as it starts (the store not answering, after storage's retries) does not train:
it could not see whether another job trains into the output (``take`` raises FtctlError naming the store's error). An
attempt that resumes the run (a Slurm requeue, a run directory holding a checkpoint: ``resuming``) whose store is
down (storage.store_down) waits up to START_WAIT_S for it, then ends as preempted (exit UNREACHED_EXIT), as below: a
requeue or a recovery during an outage ended the run for good; a first attempt, or a store refusing the settings,
fails at once. A SkyPilot managed job (``managed_job``) waits as well on every attempt (its recovery onto a fresh node
cannot be told from its first), then fails with exit 2, which SkyPilot counts against max_restarts_on_errors: it
recovers exit UNREACHED_EXIT without limit, and a store down for hours would cost a new cluster every START_WAIT_S. A
trainer stopped because its renewals did not reach the store is stopped as a preemption is (:class:`LeaseLost`
``requeue``): nobody else writes the output, and a requeued or recovered attempt resumes; one whose lease another
job took over is a failure (the output is that job's now).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from datetime import datetime
from email.utils import parsedate_to_datetime

from ftctl import storage
from ftctl.envvars import ATTEMPT_ENV, SKY_TASK_ENV
from ftctl.errors import FtctlError
from ftctl.runpaths import TRAIN_LEASE, user_name

log = logging.getLogger("ftctl")

RENEW_S = 30.0  # how often the holder writes it (one small PUT)
STALE_S = 150.0  # not renewed for this long: its trainer is gone
STORE_AGE = "_age_by_store_s"  # a lease read from S3 or GCS: its age by the store's clock (never written back)
CLAIM_TRIES = 5  # writes of the lease that another trainer's write beat, in a row, before a trainer stops
UNREACHED_EXIT = 75  # a trainer stopped because its renewals did not reach the store: EX_TEMPFAIL, try again later
START_WAIT_S = 300.0  # what an attempt that resumes a run waits for a store that is down as it starts, then exit 75
#: set by SkyPilot's jobs controller in each task of a managed job (`--managed`, `--spot`), kept by its recoveries
SKY_MANAGED_JOB_ENV = "SKYPILOT_MANAGED_JOB_ID"
START_PAUSE_S = 15.0  # between its asks meanwhile
_RACE_SAID: set[str] = set()  # the stores race_open has spoken of (once each)
_HELD: dict[str, Holder | Follower] = {}  # the leases this process holds (or follows), by output: the uploader asks


class LeaseLost(FtctlError):
    """The trainer stopped for its lease (Holder.lost). ``requeue``: its renewals did not reach the store, and nobody
    else holds the output: the run ends as a preempted one (``status`` "preempted": Slurm's script requeues it; exit
    UNREACHED_EXIT, which a SkyPilot managed job recovers on), and the next attempt resumes from the newest complete
    checkpoint. Else another job took the output over, or a SkyPilot managed job's attempt found the store down for
    START_WAIT_S as it started: a failure (status "failed", exit 2), which SkyPilot restarts only up to -o
    max_requeues times."""

    def __init__(self, message: str, requeue: bool):
        super().__init__(message)
        self.requeue = requeue
        self.status = "preempted" if requeue else "failed"
        if requeue:
            self.exit_code = UNREACHED_EXIT


def resuming(holds_checkpoint=None, environ=None) -> str | None:
    """Why this attempt resumes a run, for a start that finds the store down (Holder.take); None: a first attempt. A
    requeued Slurm job (ftctl's script passes SLURM_RESTART_COUNT as ATTEMPT_ENV), or ``holds_checkpoint()`` (the
    run's directory on this node holds a complete checkpoint: a relaunch, a recovery onto the same disk). A SkyPilot
    recovery onto a fresh node cannot be told from a first attempt here: SkyPilot gives its task no recovery count."""
    env = os.environ if environ is None else environ
    attempt = int(env.get(ATTEMPT_ENV) or 0)
    if attempt > 0:
        return f"attempt {attempt} of Slurm job {env.get('SLURM_JOB_ID', '?')}, requeued"
    if holds_checkpoint is not None and holds_checkpoint():
        return "its run directory on this node holds a checkpoint of it"
    return None


def managed_job(environ=None) -> str | None:
    """The SkyPilot managed job this process is an attempt of (its id), None outside one. SkyPilot recovers such a job
    on an exit code in recover_on_exit_codes (UNREACHED_EXIT) without counting it against max_restarts_on_errors:
    without limit. Its recovery onto a fresh node cannot be told from its first attempt (no recovery count reaches the
    task), so every attempt that finds the store down as it starts waits for it (Holder._store_down) and then fails as
    a counted error, never with UNREACHED_EXIT."""
    env = os.environ if environ is None else environ
    return env.get(SKY_MANAGED_JOB_ENV) or None


def uri_of(output: str) -> str:
    return storage.join(output, TRAIN_LEASE)


def holder_id(environ=None) -> str:
    """Who holds it, the same for every attempt of one job: SkyPilot's task id (kept by a managed job's recoveries;
    it ends in _CLUSTER_JOBID), else the Slurm job (kept by its requeues), else this host and process."""
    env = os.environ if environ is None else environ
    if env.get(SKY_TASK_ENV):
        return f"SkyPilot task {env[SKY_TASK_ENV]}"
    if env.get("SLURM_JOB_ID"):
        return f"Slurm job {env['SLURM_JOB_ID']}"
    return f"process {os.getpid()} on {socket.gethostname()}"


def read(output: str, endpoint_url: str | None = None) -> dict | None:
    """The lease in ``output`` (an object-store URI), None where there is none; raises where the store does not
    answer (storage's "ask" limits). A lease that is not ftctl's JSON is taken as just renewed."""
    try:
        text = storage.read_whole(uri_of(output), endpoint_url).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    try:
        lease = json.loads(text)
    except ValueError:
        lease = None
    return lease if isinstance(lease, dict) else {"holder": "unknown (not ftctl's lease)", "renewed_unix": time.time()}


def read_tagged(output: str, endpoint_url: str | None = None) -> tuple[dict | None, str | None]:
    """The lease in ``output`` (as :func:`read`) and which version of it that was: its ETag (S3, Azure), for a write
    that replaces only that version (storage.put_if); None where there is none, or the store has no ETag for it. The
    ETag is asked first: a lease renewed between the two asks is newer than its ETag, and a write on that ETag fails.
    The lease also carries its age by the store's clock where the store tells it (STORE_AGE, read by :func:`age_s`)."""
    fs, path = storage.filesystem(uri_of(output), endpoint_url, quick=True)
    try:
        etag, store_age = _version(fs, path)
    except FileNotFoundError:
        return None, None
    lease = read(output, endpoint_url)
    if lease is not None and store_age is not None:
        lease[STORE_AGE] = store_age
    return lease, etag


def _version(fs, path: str) -> tuple[str | None, float | None]:
    """The lease's ETag and seconds since the store took its last write by the store's own clock (S3: the HEAD
    answer's Date less the object's LastModified, less a second: both are whole seconds, and a live lease must never
    read as older than it is; None where either is missing). FileNotFoundError where none."""
    if "gcs" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return _gcs_version(fs, path)
    if storage.is_azure(fs):
        return _azure_version(fs, path)
    if not hasattr(fs, "call_s3"):
        return fs.info(path).get("ETag"), None
    bucket, _, key = path.partition("/")
    head = fs.call_s3("head_object", Bucket=bucket, Key=key)
    try:
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = max(0.0, (now - head["LastModified"]).total_seconds() - 1.0)
    except (KeyError, TypeError, ValueError):
        age = None
    return head.get("ETag"), age


def _azure_version(fs, path: str) -> tuple[str | None, float | None]:
    """The lease's ETag on Azure and seconds since Azure took its last write, by Azure's own clock: the properties
    answer's Date less the blob's Last-Modified, less a second (both whole seconds); None where either is missing.
    FileNotFoundError where there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    answer = {}

    def headers(response) -> None:
        answer.update(response.http_response.headers)

    try:
        props = storage.azure_blob(fs, path, lambda blob: blob.get_blob_properties(raw_response_hook=headers))
    except ResourceNotFoundError as exc:
        if storage.store_error(exc, fs.protocol[0] + "://" + path) is not None:  # no container: the store's error
            raise
        raise FileNotFoundError(path) from exc
    try:
        age = max(0.0, (parsedate_to_datetime(answer["Date"]) - props.last_modified).total_seconds() - 1.0)
    except (KeyError, TypeError, ValueError):
        age = None
    return props.etag, age


def _gcs_version(fs, path: str) -> tuple[str | None, float | None]:
    """The lease's generation on GCS (its version, as storage.put_if and delete_if name it: ifGenerationMatch) and
    seconds since GCS took its last write, by GCS's own clock: the object metadata answer's Date less the object's
    ``updated`` (less a second: Date is whole seconds); None where either is missing. FileNotFoundError where there is
    none."""
    bucket, _, key = path.partition("/")
    headers, body = fs.call("GET", "b/{}/o/{}", bucket, key)
    try:
        meta = json.loads(body)
    except ValueError:
        return None, None
    generation = str(meta["generation"]) if isinstance(meta, dict) and meta.get("generation") else None
    try:
        now = parsedate_to_datetime(headers["Date"])
        updated = datetime.fromisoformat(str(meta["updated"]).replace("Z", "+00:00"))
        return generation, max(0.0, (now - updated).total_seconds() - 1.0)
    except (KeyError, TypeError, ValueError):
        return generation, None


def check(uri: str, ask: bool = False) -> None:
    """Before the uploader writes ``uri`` (a checkpoint, the final model): raises where this process holds the lease
    on the output that holds it and has lost it (LeaseLost), and with ``ask`` (before a checkpoint's manifest, a final
    model: what commits it) where the lease in the store is not this holder's now (LeaseLost, or OSError where the
    store cannot say: the uploader tries again). An upload in flight as the lease was lost commits nothing into an
    output another job took over. Nothing where this process holds no lease (a disk output, another node)."""
    for output, holder in list(_HELD.items()):
        if uri == output or uri.startswith(output + "/"):
            holder.check(ask)


def record_of(output: str | None) -> dict | None:
    """The record (holder, host, user, run, started_unix) of the lease this process holds on ``output``; None where it holds
    none: what rank 0 hands the other nodes' uploaders (:func:`follow`)."""
    holder = _HELD.get(output.rstrip("/")) if output else None
    return dict(holder.record) if isinstance(holder, Holder) else None


def follow(output: str, endpoint_url: str | None, record: dict) -> Follower:
    """On another node of a run whose rank 0 holds the lease ``record`` on ``output``: its uploader asks the store's
    lease before each checkpoint share it writes (:func:`check`), as rank 0's does, and writes nothing into an output
    whose lease is not that record's (another job took it over, or a later attempt of this one). Without it, a node
    whose upload was in flight as the lease was lost wrote its shard files over the other job's checkpoint of that
    step. ``close`` it at the run's end."""
    follower = Follower(output, endpoint_url, record)
    _HELD[output.rstrip("/")] = follower
    return follower


def race_open(output: str, why: str) -> None:
    """Say once per store that its lease is written unconditionally there (``why``)."""
    store = f"{storage.scheme(output)}://{output.split('://', 1)[-1].split('/', 1)[0]}"
    if store in _RACE_SAID:
        return
    _RACE_SAID.add(store)
    log.warning(
        "%s: the trainer's lease on %s is written without a condition (%s), after it was read: two trainers starting "
        "into one output within the same second could both take it, and a trainer whose renewals did not reach the "
        "store for %.0f s would renew over the lease of a job that took the output over",
        store,
        output,
        storage.redact(why),
        STALE_S,
    )


def age_s(lease: dict, now: float | None = None) -> float:
    """Seconds since it was last renewed: by the store's clock where it was read with one (STORE_AGE: S3, GCS, Azure),
    else by this machine's clock against the writer's (0 for one from a clock ahead of this one's)."""
    if now is None and lease.get(STORE_AGE) is not None:
        return float(lease[STORE_AGE])
    try:
        renewed = float(lease.get("renewed_unix"))
    except (TypeError, ValueError):
        return float("inf")
    return max(0.0, (time.time() if now is None else now) - renewed)


def live(lease: dict | None, now: float | None = None) -> bool:
    return lease is not None and age_s(lease, now) < STALE_S


def describe(lease: dict, now: float | None = None) -> str:
    """'SkyPilot task ... on host h by alice (run r, renewed 12 s ago)'; a lease of an ftctl before 2026-12-07 names
    no user."""
    holder = str(lease.get("holder"))
    where = f" on {lease['host']}" if lease.get("host") and not holder.startswith("process ") else ""
    by = f" by {lease['user']}" if lease.get("user") else ""
    run = f"run {lease['run']}, " if lease.get("run") else ""
    return f"{holder}{where}{by} ({run}renewed {age_s(lease, now):.0f} s ago)"


def gone_here(lease: dict) -> bool:
    """The holder is a process on this machine's host name that runs here no more (a trainer killed: OOM, kill -9):
    its lease lapses STALE_S after its last renewal. Said, never taken over earlier: a container on the host's network
    has its host name and its own pids."""
    match = re.fullmatch(r"process (\d+) on (.+)", str(lease.get("holder")))
    if not match or match[2] != socket.gethostname():
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it runs
        return False
    return False


def refusal(output: str, endpoint_url: str | None = None, another: str = "another --output") -> str | None:
    """Why a launch into ``output`` is refused where a trainer holds its lease now; None where none does (no lease,
    a stale one, a local output, or a store that does not answer now: the launch's own checks say that).
    ``another``: the launch's way to another output (spec.RunSpec.another_output)."""
    if not storage.is_remote(output):
        return None
    try:
        lease, _ = read_tagged(output, endpoint_url)  # its age by the store's clock: a laptop's may be off
    except Exception:  # noqa: BLE001 - the store not answering now is said by the output checks, not here
        return None
    if not live(lease):
        return None
    if gone_here(lease):
        return (
            f"{output} was trained into by {describe(lease)}, which runs on this machine no more (killed, or it runs "
            f"in a container on this host's network, which renews it while it trains): its lease ({TRAIN_LEASE}), "
            f"if not renewed, lapses {max(0.0, STALE_S - age_s(lease)):.0f} s from now, {STALE_S:.0f} s after its "
            f"last renewal, and the same launch goes ahead then (resuming its newest checkpoint in the store). Or "
            f"give this run {another}."
        )
    return (
        f"{output} is being trained into by {describe(lease)}, a job launched elsewhere (another machine or "
        f"FTCTL_HOME) or from here: a second job would write the same checkpoints. Wait for it to end, stop it "
        f"(`ftctl cancel JOB` where it was launched), or give this run {another}. "
        f"A trainer renews its lease ({TRAIN_LEASE}) every {RENEW_S:.0f} s; one killed without ending lets go "
        f"{STALE_S:.0f} s after its last renewal, and a launch then goes ahead."
    )


def release(output: str, endpoint_url: str | None, holder_suffix: str, etag: str | None = None) -> bool:
    """Remove the lease where its holder ends with ``holder_suffix`` (the cancelled job's: a killed trainer could
    not) and, given ``etag`` (a holder's own last write), where it is still that write; True where it did. Another
    job's lease is left: the delete is made only where the lease is still the version written or read (If-Match on
    DELETE: S3, Azure); a store that refuses the condition gets a plain delete after the holder read was compared."""
    uri = uri_of(output)
    try:
        lease, read_etag = read_tagged(output, endpoint_url)
        if lease is None or not str(lease.get("holder", "")).endswith(holder_suffix):
            return False
        if etag is not None and read_etag is not None and read_etag != etag:
            return False  # not this holder's last write: another attempt of its job took it over
        if (tag := etag or read_etag) is not None:
            try:
                storage.delete_if(uri, tag, endpoint_url)
                return True
            except FileExistsError:  # written (or removed) by another since it was read
                return False
            except storage.NoConditionalWrites:
                pass
        fs, path = storage.filesystem(uri, endpoint_url, quick=True)
        fs.rm_file(path)
        return True
    except Exception:  # noqa: BLE001 - it goes stale by itself
        return False


class Follower:
    """Another node's view of rank 0's lease (:func:`follow`): ``check`` as Holder.check, without renewing it."""

    def __init__(self, output: str, endpoint_url: str | None, record: dict):
        self.output, self.endpoint_url, self.record = output, endpoint_url, dict(record)
        self.lost_why = ""

    def check(self, ask: bool = False) -> None:
        """Raise LeaseLost once the store's lease was found not to be rank 0's record; with ``ask``, read it first
        (OSError where the store cannot say, or holds none: nothing is written, the uploader tries again)."""
        if self.lost_why:
            raise LeaseLost(self.lost_why, requeue=False)
        if not ask:
            return
        if lease := _taken(self.output, self.endpoint_url, self.record, "this run's", "nothing written"):
            self.lost_why = (
                f"{uri_of(self.output)} is held by {describe(lease)} now, not by this run's rank 0 "
                f"({self.record.get('holder')}): another job took {self.output} over; this node writes nothing more "
                "into it"
            )
            log.error("%s", self.lost_why)
            raise LeaseLost(self.lost_why, requeue=False)

    def close(self) -> None:
        if _HELD.get(self.output.rstrip("/")) is self:
            del _HELD[self.output.rstrip("/")]


def _taken(output: str, endpoint_url: str | None, record: dict, whose: str, so: str) -> dict | None:
    """The store's lease on ``output`` where it is not ``record`` now (another job's), None while it is (Holder.check,
    Follower.check with ``ask``); OSError where the store cannot say or holds none (``so``: what is not done meanwhile;
    the uploader tries again)."""
    try:
        lease = read(output, endpoint_url)
    except Exception as exc:  # noqa: BLE001 - cannot tell: not done now, tried again
        why = storage.redact(str(exc)) or type(exc).__name__
        raise OSError(f"cannot read {uri_of(output)} to see that it is still {whose}: {why}") from None
    if lease is None:
        raise OSError(f"{uri_of(output)} is not there (not written yet, or removed): {so}")
    return lease if any(lease.get(key) != value for key, value in record.items()) else None


class _Unwritten(Exception):
    """Holder._claim's write of the lease that the store did not take: ``exc``, its error."""

    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.exc = exc


class Holder:
    """Rank 0's hold of the lease on its object-store output, for the run: :meth:`take` before the model loads (it
    waits for another job's lease to be let go or go stale, and raises FtctlError where that lease is renewed in the
    meantime: that trainer lives; its write is made only where the lease is still as read, and one beaten by another
    trainer's reads it again), then a thread renews it every ``renew_s`` until :meth:`close`, which removes it.
    ``lost`` is set where a renewal found the lease replaced by another job's, or where renewals failed until the lease
    would go stale (``lost_why`` says which): the thread writes it no more, and the trainer must stop writing into the
    output."""

    def __init__(
        self,
        output: str,
        endpoint_url: str | None,
        run: str,
        renew_s: float | None = None,
        stale_s: float | None = None,
        holds_checkpoint=None,
    ):
        self.output, self.endpoint_url = output, endpoint_url
        self.holds_checkpoint = holds_checkpoint  # () -> bool: the run's local directory holds a checkpoint (resuming)
        self._down_since: float | None = None  # when this start first found the store down (a resuming attempt waits)
        self.renew_s = RENEW_S if renew_s is None else renew_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self._reached = time.monotonic()  # when the store last took this holder's write (renewals failing: unreached)
        self.id = holder_id()
        started = round(time.time(), 3)
        self.record = {
            "holder": self.id,
            "host": socket.gethostname(),
            "user": user_name(),  # in a bucket a lab shares: the colleague to ask (describe)
            "run": run,
            "started_unix": started,
        }
        self.lost = threading.Event()
        self.lost_why = ""
        self.unreached = False  # lost because renewals did not reach the store (not taken over): a requeue resumes
        self._etag: str | None = None  # the store's ETag of this holder's last write: a renewal replaces only that
        self._plain = False  # the store refused a conditional renewal: renewed unconditionally (said once)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="ftctl-lease", daemon=True)

    def take(self, stale_s: float | None = None) -> None:
        stale_s = self.stale_s if stale_s is None else stale_s
        first, lost = None, 0
        self._reached = time.monotonic()
        while True:
            try:
                lease, etag = read_tagged(self.output, self.endpoint_url)
            except Exception as exc:  # noqa: BLE001 - cannot tell whether another job trains into it: no training
                self._store_down(exc)
                continue
            if lease is not None and lease.get("holder") != self.id and age_s(lease) < stale_s:
                first = self._wait(lease, first, stale_s)
                continue
            try:  # none, a stale one or this job's own, still as read: now this one's
                claimed = self._claim(lease is None, etag)
            except _Unwritten as unwritten:
                self._store_down(unwritten.exc, write=True)
                continue
            if claimed:
                break
            lost += 1  # another trainer wrote (or removed) it between this read and this write: read it again
            if lost >= CLAIM_TRIES:
                raise FtctlError(
                    f"{uri_of(self.output)} changed under each of {lost} writes of this trainer's lease (each made only "
                    "where it was still as read): another job is starting into this output. Not training: stop that "
                    "job, or give this run another --output."
                )
        _HELD[self.output.rstrip("/")] = self
        self._thread.start()

    def _store_down(self, exc: BaseException, write: bool = False) -> None:
        """The lease could not be read (or ``write``: written) as the trainer starts. A first attempt, or a store
        that refuses the launch's settings (credentials, access, bucket, endpoint), does not train: FtctlError, exit
        2. An attempt that resumes the run (:func:`resuming`) finding the store down (storage.store_down: an outage the
        scheduler's next attempt may not meet) waits for it up to START_WAIT_S, asking every START_PAUSE_S, then ends
        as a preempted one (LeaseLost ``requeue``: exit UNREACHED_EXIT, status preempted): a Slurm requeue or a
        SkyPilot recovery met by an outage ended the run for good. Returns to ask again."""
        said = storage.store_down(exc, self.output, self.endpoint_url)
        job = managed_job()
        why = None if said is None else resuming(self.holds_checkpoint)
        if said is not None and why is None and job:
            why = f"SkyPilot managed job {job}, which tells its recoveries from its first attempt to no task"
        if why is None:
            raise FtctlError(self._unread(exc, write)) from None
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "%s: this attempt resumes the run (%s): waiting up to %.0f s for the store to answer, then it %s",
                said.what,
                why,
                START_WAIT_S,
                "fails (exit 2), which SkyPilot restarts up to -o max_requeues times"
                if job
                else f"ends as a preempted one (exit {UNREACHED_EXIT}) for the scheduler to try again",
            )
        waited = now - self._down_since
        if waited + START_PAUSE_S > START_WAIT_S and job:  # exit 75 would be recovered without limit, each time on a
            # new cluster waiting START_WAIT_S: a counted failure instead (max_restarts_on_errors, -o max_requeues)
            raise LeaseLost(
                f"{said.what}, for the {waited:.0f} s this attempt waited as it started ({why}): not training (it "
                f"could not {'write' if write else 'read'} the trainer's lease {uri_of(self.output)}): {said.fix} "
                f"Failed (exit 2) rather than preempted: SkyPilot would recover managed job {job}'s exit 75 without "
                "limit, each time on a new cluster. It restarts the job up to -o max_requeues times (a managed job's "
                "default: none); once the store answers, the same `ftctl launch` resumes from the newest complete "
                "checkpoint.",
                requeue=False,
            ) from None
        if waited + START_PAUSE_S > START_WAIT_S:
            raise LeaseLost(
                f"{said.what}, for the {waited:.0f} s this attempt waited as it started ({why}): not training (it "
                f"could not {'write' if write else 'read'} the trainer's lease {uri_of(self.output)}). Ended as a "
                f"preempted run (exit {UNREACHED_EXIT}): Slurm requeues the job (up to -o max_requeues) and a SkyPilot "
                "managed job recovers it, and the next attempt resumes from the newest complete checkpoint once the "
                "store answers.",
                requeue=True,
            ) from None
        time.sleep(START_PAUSE_S)

    def _unread(self, exc: BaseException, write: bool = False) -> str:
        """Why a trainer whose first read (or ``write``) of the lease failed does not train: writing it plainly (as
        before) skipped the check for another job's live lease whenever the store failed just then, and a trainer
        that trained with its lease unwritten was unseen by a job starting into the output meanwhile."""
        said = storage.store_error(exc, self.output, self.endpoint_url)
        why = f"{said.what}: {said.fix}" if said else storage.redact(str(exc)) or type(exc).__name__
        if write:
            head = f"cannot write the trainer's lease {uri_of(self.output)}, so a job starting into {self.output} "
            head += "would not see this one"
        else:
            head = f"cannot read the trainer's lease {uri_of(self.output)}, so whether another job trains into "
            head += f"{self.output} now is not known"
        return f"{head}: not training ({why}). The same launch trains once the store answers."

    def _wait(self, lease: dict, first: dict | None, stale_s: float) -> dict:
        """Another job's live lease: said at the first sight (``first`` None), refused where it was renewed since
        (that trainer lives), else a pause before it is read again. The lease first seen."""
        if first is None:
            log.warning(
                "%s holds the lease on %s: waiting for it to end or go stale (%.0f s after its last renewal)",
                describe(lease),
                self.output,
                stale_s,
            )
            first = lease
        elif (lease.get("holder"), lease.get("renewed_unix")) != (first.get("holder"), first.get("renewed_unix")):
            raise FtctlError(
                f"{self.output} is being trained into by {describe(lease)}: not training (two trainers would "
                "write the same checkpoints). Stop that job, or give this run another --output."
            )
        time.sleep(min(self.renew_s, max(1.0, stale_s - age_s(lease))))
        return first

    def _claim(self, absent: bool, etag: str | None) -> bool:
        """Write this trainer's lease where the lease is still as read (``absent``, or the version ``etag``): False
        where another trainer wrote or removed it since. A store that cannot make the write conditional gets a plain
        write (said once: the race of two trainers starting at once stays open there)."""
        uri, data = uri_of(self.output), self._text().encode()
        try:
            if not absent and etag is None:
                raise storage.NoConditionalWrites(
                    f"{storage.scheme(uri)}:// gave no ETag to replace only the lease read"
                )
            self._etag = storage.put_if(uri, data, self.endpoint_url, None if absent else etag)
            self._reached = time.monotonic()
        except FileExistsError:
            return False
        except storage.NoConditionalWrites as exc:
            race_open(self.output, str(exc))
            self._write()
            return True
        except Exception as exc:  # noqa: BLE001 - the store not answering now: not training unseen
            raise _Unwritten(exc) from None
        if absent and self._created_again(data):
            race_open(
                self.output, "the store took a create-only write over the lease just written: it ignores If-None-Match"
            )
        return True

    def _created_again(self, data: bytes) -> bool:
        """Whether the store takes a second create-only write of the lease this trainer just created: it (or an
        s3fs/botocore too old to send If-None-Match) ignores the condition, without an error."""
        try:
            etag = storage.put_if(uri_of(self.output), data, self.endpoint_url)
        except Exception:  # noqa: BLE001 - refused (FileExistsError: kept), or cannot tell
            return False
        self._etag = etag  # this write is the holder's last now
        return True

    def _text(self) -> str:
        return json.dumps({**self.record, "renewed_unix": round(time.time(), 3)})

    def _write(self) -> bool:
        """A plain write of the lease (its ETag kept); False where the store did not take it."""
        try:
            fs, path = storage.filesystem(uri_of(self.output), self.endpoint_url, quick=True)
            self._etag = storage.etag_of(fs.pipe_file(path, self._text().encode()))
            self._reached = time.monotonic()
            return True
        except Exception as exc:  # noqa: BLE001 - written again at the next renewal
            self._unreached(exc)
            return False

    def _renew(self) -> None:
        while not self._closed.wait(self.renew_s):
            if not self.renew() or self.lost.is_set():
                return

    def _unreached(self, exc: BaseException) -> None:
        """A write of the lease the store did not take: said, and tried again at the next renewal; where the renewals
        have not reached the store for so long that the next one would come after the lease went stale (another job
        may take the output over from then on), ``lost`` is set: the trainer stops before it writes into the output."""
        uri, why = uri_of(self.output), storage.redact(str(exc)) or type(exc).__name__
        log.warning("cannot write %s: %s", uri, why)
        unreached = time.monotonic() - self._reached
        if self.lost.is_set() or unreached + self.renew_s < self.stale_s:
            return
        said = storage.store_error(exc, self.output, self.endpoint_url)
        self.lost_why = (
            f"the lease {uri} has not been renewed for {unreached:.0f} s ({said.what if said else why}): it goes stale "
            f"{self.stale_s:.0f} s after its last renewal, and another job may take {self.output} over from then on. "
            "Stopped training without saving a checkpoint into it, as a preemption stops: a requeued (Slurm) or "
            "recovered (SkyPilot) attempt, or the same launch again, resumes from its newest complete checkpoint once "
            "the store answers again."
        )
        log.error("%s", self.lost_why)
        self.unreached = True
        self.lost.set()

    def renew(self) -> bool:
        """Write the lease again where it is still this holder's last write (If-Match its ETag); False where another
        job's write replaced it (or it was removed) since: ``lost`` is set, and nothing is written."""
        if self._plain or self._etag is None:  # none known: the last write failed, or the store gives none
            if self._write() and self._etag is None and not self._plain:
                race_open(self.output, "the store gave no ETag for the lease written, to renew only that")
            return True
        uri = uri_of(self.output)
        try:
            self._etag = storage.put_if(uri, self._text().encode(), self.endpoint_url, self._etag)
            self._reached = time.monotonic()
        except FileExistsError:
            if self._landed_late():
                return self.renew()
            self._lose()
            return False
        except storage.NoConditionalWrites as exc:
            self._plain = True
            race_open(self.output, str(exc))
            self._write()
        except Exception as exc:  # noqa: BLE001 - the store not answering now: renewed at the next turn
            self._unreached(exc)
        return True

    def _landed_late(self) -> bool:
        """Whether the lease that failed this holder's condition is this holder's own write, one the store took after
        the renewal had given up waiting for its answer (a slow store): its ETag is then this holder's last write.
        That write otherwise read as another job's, and stopped the run naming this trainer as the job that took it."""
        try:
            lease, etag = read_tagged(self.output, self.endpoint_url)
        except Exception:  # noqa: BLE001 - cannot tell: as another's
            return False
        if lease is None or etag is None or etag == self._etag:
            return False
        if any(lease.get(key) != value for key, value in self.record.items()):
            return False
        log.info(
            "%s: a renewal the store took after its answer was given up is this trainer's own", uri_of(self.output)
        )
        self._etag = etag
        return True

    def _lose(self) -> None:
        try:
            lease = read(self.output, self.endpoint_url)
        except Exception:  # noqa: BLE001 - named as unknown
            lease = None
        who = f"is held by {describe(lease)} now" if lease is not None else "was removed by another job"
        self.lost_why = (
            f"{uri_of(self.output)} {who}, not by this trainer ({self.id}): another job took {self.output} over (a "
            f"lease goes stale once its renewals have not reached the store for {STALE_S:.0f} s) and writes it now. "
            "Stopped training without saving a checkpoint over that job's: let it finish, or train this run into "
            "another --output."
        )
        log.error("%s", self.lost_why)
        self.lost.set()

    def stopped(self) -> LeaseLost | None:
        """What stops the trainer now: None while it holds the lease."""
        return LeaseLost(self.lost_why, self.unreached) if self.lost.is_set() else None

    def check(self, ask: bool = False) -> None:
        """Raise LeaseLost where the lease is lost; with ``ask``, read it first: one that is not this holder's record
        (another job's: found before the next renewal would) is lost now; none there, or a store that does not
        answer, raises OSError (nothing is committed without this trainer's lease in the store)."""
        if (stop := self.stopped()) is not None:
            raise stop
        if not ask:
            return
        if _taken(self.output, self.endpoint_url, self.record, "this trainer's", "nothing committed"):
            self._lose()
            raise self.stopped()

    def close(self) -> None:
        """Stop renewing and remove the lease (where it is still this holder's last write; where the store gives no
        ETag or refuses the condition, where it still names this job). A lease lost to another job is left."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if _HELD.get(self.output.rstrip("/")) is self:
            del _HELD[self.output.rstrip("/")]
        if not self.lost.is_set():
            release(self.output, self.endpoint_url, self.id, None if self._plain else self._etag)
