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

The times in the lease are the writer's clock; the reader compares them with its own (clocks of machines that train
are set by NTP; STALE_S is many renewals long).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.runpaths import TRAIN_LEASE

log = logging.getLogger("ftctl")

RENEW_S = 30.0  # how often the holder writes it (one small PUT)
STALE_S = 150.0  # not renewed for this long: its trainer is gone


def uri_of(output: str) -> str:
    return storage.join(output, TRAIN_LEASE)


def holder_id(environ=None) -> str:
    """Who holds it, the same for every attempt of one job: SkyPilot's task id (kept by a managed job's recoveries;
    it ends in _CLUSTER_JOBID), else the Slurm job (kept by its requeues), else this host and process."""
    env = os.environ if environ is None else environ
    if env.get("SKYPILOT_TASK_ID"):
        return f"SkyPilot task {env['SKYPILOT_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"Slurm job {env['SLURM_JOB_ID']}"
    return f"process {os.getpid()} on {socket.gethostname()}"


def read(output: str, endpoint_url: str | None = None) -> dict | None:
    """The lease in ``output`` (an object-store URI), None where there is none; raises where the store does not
    answer (storage's "ask" limits). A lease that is not ftctl's JSON is taken as just renewed."""
    fs, path = storage.filesystem(uri_of(output), endpoint_url, quick=True)
    try:
        text = fs.cat_file(path).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    try:
        lease = json.loads(text)
    except ValueError:
        lease = None
    return lease if isinstance(lease, dict) else {"holder": "unknown (not ftctl's lease)", "renewed_unix": time.time()}


def age_s(lease: dict, now: float | None = None) -> float:
    """Seconds since it was last renewed (0 for one from a clock ahead of this one's)."""
    try:
        renewed = float(lease.get("renewed_unix"))
    except (TypeError, ValueError):
        return float("inf")
    return max(0.0, (time.time() if now is None else now) - renewed)


def live(lease: dict | None, now: float | None = None) -> bool:
    return lease is not None and age_s(lease, now) < STALE_S


def describe(lease: dict, now: float | None = None) -> str:
    """'SkyPilot task ... on host h (run r, renewed 12 s ago)'."""
    holder = str(lease.get("holder"))
    where = f" on {lease['host']}" if lease.get("host") and not holder.startswith("process ") else ""
    run = f"run {lease['run']}, " if lease.get("run") else ""
    return f"{holder}{where} ({run}renewed {age_s(lease, now):.0f} s ago)"


def refusal(output: str, endpoint_url: str | None = None) -> str | None:
    """Why a launch into ``output`` is refused where a trainer holds its lease now; None where none does (no lease,
    a stale one, a local output, or a store that does not answer now: the launch's own checks say that)."""
    if not storage.is_remote(output):
        return None
    try:
        lease = read(output, endpoint_url)
    except Exception:  # noqa: BLE001 - the store not answering now is said by the output checks, not here
        return None
    if not live(lease):
        return None
    return (
        f"{output} is being trained into by {describe(lease)}, a job launched elsewhere (another machine or "
        f"FTCTL_HOME) or from here: a second job would write the same checkpoints. Wait for it to end, stop it "
        f"(`ftctl cancel JOB` where it was launched), or give this run another --output (or -o run_name=...). "
        f"A trainer renews its lease ({TRAIN_LEASE}) every {RENEW_S:.0f} s; one killed without ending lets go "
        f"{STALE_S:.0f} s after its last renewal, and a launch then goes ahead."
    )


def release(output: str, endpoint_url: str | None, holder_suffix: str) -> bool:
    """Remove the lease where its holder ends with ``holder_suffix`` (the cancelled job's: a killed trainer could
    not); True where it did. Another job's lease is left."""
    try:
        lease = read(output, endpoint_url)
        if lease is None or not str(lease.get("holder", "")).endswith(holder_suffix):
            return False
        fs, path = storage.filesystem(uri_of(output), endpoint_url, quick=True)
        fs.rm_file(path)
        return True
    except Exception:  # noqa: BLE001 - it goes stale by itself
        return False


class Holder:
    """Rank 0's hold of the lease on its object-store output, for the run: :meth:`take` before the model loads (it
    waits for another job's lease to be let go or go stale, and raises FtctlError where that lease is renewed in the
    meantime: that trainer lives), then a thread renews it every ``renew_s`` until :meth:`close`, which removes it."""

    def __init__(self, output: str, endpoint_url: str | None, run: str, renew_s: float | None = None):
        self.output, self.endpoint_url = output, endpoint_url
        self.renew_s = RENEW_S if renew_s is None else renew_s
        self.id = holder_id()
        started = round(time.time(), 3)
        self.record = {"holder": self.id, "host": socket.gethostname(), "run": run, "started_unix": started}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="ftctl-lease", daemon=True)

    def take(self, stale_s: float | None = None) -> None:
        stale_s = STALE_S if stale_s is None else stale_s
        first = lease = self._other()
        if lease is not None and age_s(lease) < stale_s:
            log.warning(
                "%s holds the lease on %s: waiting for it to end or go stale (%.0f s after its last renewal)",
                describe(lease),
                self.output,
                stale_s,
            )
        while lease is not None and age_s(lease) < stale_s:
            if (lease.get("holder"), lease.get("renewed_unix")) != (first.get("holder"), first.get("renewed_unix")):
                raise FtctlError(
                    f"{self.output} is being trained into by {describe(lease)}: not training (two trainers would "
                    "write the same checkpoints). Stop that job, or give this run another --output."
                )
            time.sleep(min(self.renew_s, max(1.0, stale_s - age_s(lease))))
            lease = self._other()
        self._write()
        self._thread.start()

    def _other(self) -> dict | None:
        """The lease there now where another job holds it; None where none does, or it is this job's own (an
        earlier attempt's: a requeue, a managed job's recovery) or the store does not answer (training goes on)."""
        try:
            lease = read(self.output, self.endpoint_url)
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read %s: %s", uri_of(self.output), storage.redact(str(exc)) or type(exc).__name__)
            return None
        return None if lease is None or lease.get("holder") == self.id else lease

    def _write(self) -> None:
        text = json.dumps({**self.record, "renewed_unix": round(time.time(), 3)})
        try:
            fs, path = storage.filesystem(uri_of(self.output), self.endpoint_url, quick=True)
            fs.pipe_file(path, text.encode())
        except Exception as exc:  # noqa: BLE001 - written again at the next renewal
            log.warning("cannot write %s: %s", uri_of(self.output), storage.redact(str(exc)) or type(exc).__name__)

    def _renew(self) -> None:
        while not self._closed.wait(self.renew_s):
            self._write()

    def close(self) -> None:
        """Stop renewing and remove the lease (where it is still this job's)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        release(self.output, self.endpoint_url, self.id)
