"""Every file of a run directory, named in one place (as submitit's ``JobPaths``).

The run directory is where ``ftctl launch`` writes what it sends (spec.json, the sbatch script, the
task YAML, the docker script) and where the job leaves its logs, status and stop files. With a local
``--output`` it is the output directory itself, so the trainer's files (metrics.jsonl, checkpoints)
sit beside them; with an object-store output it is under ``runs/`` of the working directory
(backend.run_dir_for: the run's run_name, else its name and a digest of the output).

Nobody else spells these names: backends, the trainer and the tests ask this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SPEC_FILE = "spec.json"  # the run description and its plan (ftctl.plan.dump_run)
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step, written by the trainer's rank 0
# a run's records beside its checkpoints (what a checkpoint or merge loads as the run trained it: trained.Trained; what
# sync sends of a run without a final model), spec.json last: written last, it says the records are whole
RUN_RECORDS = (METRICS_FILE, SPEC_FILE)
# its rows up to a checkpoint's step, saved in the checkpoint gzip-compressed (rows compress ~4x; a gzip member for the
# rows since the previous save: trainer.callbacks.MetricsCopy): a run resumed on another node (a recovered spot VM)
# keeps them
CHECKPOINT_METRICS_GZ = "ftctl-metrics.jsonl.gz"
# ... and as an older ftctl saved them, whole and plain: read still (checkpoints.manifest.metrics_copy)
CHECKPOINT_METRICS = "ftctl-metrics.jsonl"
PLAIN_TEXT = "plain_text"  # metrics.jsonl's "start" record: every training row was plain text (no chat template)
# ... and, for a trainer that runs in a Slurm job, that job's id and its attempt (SLURM_RESTART_COUNT: 0 before a
# requeue): `ftctl status`/`cancel` tell the job's own trainer from another job's into the same run directory
START_SLURM_JOB = "slurm_job_id"
# ... and, for a run that reports to W&B, the W&B run every attempt of the run logs to (trainer.tracking)
START_WANDB_RUN = "wandb_run_id"
# metrics.jsonl's record of where an attempt's metrics go, as W&B and TensorBoard were opened
# (trainer.tracking.record_destinations), and its keys beside START_WANDB_RUN (the run's id): `ftctl status` says them
# (ftctl.progress.tracking_said)
TRACKING_EVENT = "tracking"
WANDB_URL = "wandb_url"  # the W&B run's page (online; null offline)
WANDB_RUN_DIR = "wandb_dir"  # W&B's own directory of this attempt (offline-run-DATE-ID: what `wandb sync` uploads)
TENSORBOARD_LOG_DIR = "tensorboard_dir"  # the event files' directory
# ... and, in a SkyPilot job, its task id (kept by a managed job's recoveries): a recovery of a run this job finished
# ends as complete, where the Slurm script says its attempt (envvars.ATTEMPT_ENV) and SkyPilot does not
START_SKY_TASK = "skypilot_task_id"
TENSORBOARD_DIR = "runs"  # TensorBoard's event files in the output, one curve across a run's attempts
# what watches the run from outside, in its output: TensorBoard's runs/ and W&B's own wandb/ (WANDB_DIR is the output);
# sent to an object store with each checkpoint, every attempt's, also of a node a recovery replaced
TRACKING_DIRS = (TENSORBOARD_DIR, "wandb")
START_SLURM_ATTEMPT = "slurm_restart_count"
# how the trainer's line in the log begins as it writes its start record (trainer.run.record_start): where the start
# record cannot be read here (a Slurm run staged on the nodes' own disks), that line says the trainer started training
START_LINE = "attention: "
PROGRESS_LINE = "step "  # ... and how each of its progress lines begins (trainer.callbacks.MetricsCallback._progress)
# how metrics.jsonl's records are spelled (trainer.callbacks.MetricsCallback: json.dumps of a dict, its step first): what
# the quick scanners of a million rows read of a line without parsing it (callbacks._step_of, progress.summary_of_lines)
ROW_START = '{"step": '  # every record begins so
STEP_ROW = '"loss": '  # ... a logged step's row holds its loss
EVENT = '"event": '  # ... every other record (a start, an evaluation, the end) its event
TIMED, UNTIMED = '"time": ', '"time": null'  # ... a row with its time (an older trainer's have none)
SBATCH_FILE = "job.sbatch"
TASK_FILE = "task.yaml"
DOCKER_FILE = "docker-run.sh"
SOURCE_DIR = "src"  # ftctl's own source, shipped with a SkyPilot task as its workdir
SLURM_LOG_PATTERN = "slurm-%j.out"  # Slurm expands %j to the job id
LOCAL_LOG_FILE = "train.log"  # what a local run prints, both streams (ftctl logs RUN_DIR)
FAILURES_DIR = ".ftctl/failures"  # one record per failing rank (ftctl.failures)
# a finished run's output holds its final model at the top: PEFT's adapter, or a full model's config and weights
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's name; the mark of a lora/qlora output
MODEL_CONFIG = "config.json"
# ... and its config is the mark that it is whole: written (and uploaded) after every other file of it
FINAL_MARKS = (ADAPTER_CONFIG, MODEL_CONFIG)
FINAL_STAGING = ".ftctl/final"  # where the trainer saves the final model before it moves up, its config last
# where an object-store output is staged: the checkpoints its store committed, a name a line (resume: one the store
# no longer holds is an earlier run's, the output deleted or replaced since)
UPLOADED_RECORD = ".ftctl/uploaded"
MERGED_DIR = "merged"  # `ftctl merge RUN` writes RUN/merged by default
MERGE_RECORD = "ftctl-merge.json"  # in a merged model: the adapter it was merged from, and its digest
BASE_MERGE = "ftctl-base-merge.json"  # beside an adapter trained over a merged model: that merge's MERGE_RECORD
# at the top of a run's output whose adapter trains over another run's final model (`--model RUN`): that model as the
# run started over it, its step and weights files (trainer.trained.keep_base_run); RUN trained on since is told apart
BASE_RUN = "ftctl-base-run.json"
SLURM_STATUS_PATTERN = "status.{job}.{attempt}"  # per job and attempt: a requeued job starts afresh
SLURM_STOP_PATTERN = "stop.{job}.{attempt}"
# in a run's object-store output: `ftctl cancel` of a SkyPilot job asks its trainer (rank 0 reads it) for a checkpoint
# and a stop there, as the nodes are out of its reach and the store is not (trainer.callbacks.StopRequest); the trainer
# answers in it with the stop's checkpoint
STOP_REQUEST = ".ftctl/stop-request"
# ... and its field saying until when (unix time, the clock of the machine that ran `ftctl cancel`) it asks: the end of
# that cancel's wait. A trainer that finds the request there as it starts heeds it only until then; after, that cancel
# is gone (killed before it could take its request back) and the request stale
STOP_REQUEST_UNTIL = "until_unix"
# ... and the lease of the trainer writing into it now, renewed while it trains (ftctl.lease): a launch into an output
# whose lease is live is refused, as the run directory's train_lock refuses a second trainer on a disk
TRAIN_LEASE = ".ftctl/train-lease"
# in a run's local directory (an object-store output's staging; hidden: never uploaded), the tokenized rows of its data
# (trainer.data.build_dataset), one directory a cache_key: a resume, a Slurm requeue and the other nodes of a run on a
# shared disk read them instead of tokenizing the data again (300k conversations: 30 min and 30 GB on a core, on each
# rank); removed as the run ends with its final model saved (about 9 bytes a token)
DATA_CACHE = ".ftctl/data-cache"
# ... and the flock a node's processes take in turn to choose, download or set aside its checkpoints
# (trainer.sync_callback.resume_lock)...
RESUME_LOCK = ".ftctl/resume.lock"
OLD_RESUME_LOCK = ".ftctl-resume.lock"  # ...where trainers before 2026-12-03 took it: a run they resumed or started


# a job script's own logs in the output before ftctl starts (#SBATCH --output=$OUT/slurm-%j.out): no user's work
LOG_SUFFIXES = (".out", ".err", ".log")


def foreign_files(root) -> list[str]:
    """The names in the directory ``root`` (sorted; hidden ones and logs left out) where it holds files but no run
    of ftctl's (no spec.json, no .ftctl/): [] for a missing or empty directory, or a run's."""
    root = Path(root)
    try:
        names = sorted(n for n in os.listdir(root) if not n.startswith(".") and not n.endswith(LOG_SUFFIXES))
    except OSError:  # missing, a file, not readable: the output check says what is wrong
        return []
    if not names or (root / SPEC_FILE).exists() or (root / ".ftctl").is_dir():
        return []
    return names


def open_lock(path) -> IO[str]:
    """The lock file ``path`` open for flock, created where missing, in a directory several users may share (a run
    directory of a project's, a group's FTCTL_CACHE on a login node): writable where this user may write it, else
    read-only, as flock takes a read-only file too (another user's lock, mode 644, was a PermissionError traceback).
    One it creates is as writable as its directory (group-writable in a group-writable one), so the next user of
    the group can write their name in it. OSError where it is missing and cannot be created (the directory missing
    or not writable)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            return open(path, "r+")
        except PermissionError:
            return open(path)
    try:
        os.fchmod(fd, 0o644 | (os.stat(path.parent).st_mode & 0o022))
    except OSError:  # not ours to change (a file system without modes): it locks all the same
        pass
    return os.fdopen(fd, "r+")


def user_name() -> str:
    """This process's user, as the holder lines of a run's locks and an object-store output's lease name it: in a
    directory or a bucket a lab shares, the colleague to ask; its uid where the system has no name for it (a
    container's)."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (KeyError; OSError where no passwd entry is read)
        return f"uid {os.getuid()}"


def owned_by_another(path) -> str | None:
    """ "alice's, drwxr-sr-x" for a file or directory another user owns: in a directory a lab shares, whom to ask (and
    what its mode lets the group do) where this user may not write; None for this user's own, or one not there."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid == os.getuid():
        return None
    return f"{_name_of(st.st_uid)}'s, {stat.filemode(st.st_mode)}"


def owner_of(path) -> str | None:
    """The user who owns ``path`` (its uid where the system has no name for it), None where it is not there."""
    try:
        return _name_of(os.stat(path).st_uid)
    except OSError:
        return None


def _name_of(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no name for that uid here (a container's)
        return f"uid {uid}"


def current_umask() -> int:
    """This process's umask, read without setting it where Linux says it (/proc/self/status): os.umask's set-and-restore
    is process-wide, and a thread of the trainer creating a file in between would make it 0666/0777."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):  # no /proc (macOS), or a kernel before 4.7
        umask = os.umask(0)
        os.umask(umask)
        return umask


def as_mkdir_made(directory) -> None:
    """The directory ``directory`` (made by tempfile.mkdtemp, 0700, to be renamed into place) as mkdir would have
    made it: the umask's mode, and the setgid bit of its parent's, which a plain chmod cleared. In a group's shared
    run directory (setgid, umask 002) its files then stay the group's and writable by it: a colleague resuming or
    finishing the run can read and remove them (a tokenized-data cache left 0755 by its maker, its files in the
    maker's own group, stayed on the disk after a colleague's resume ended the run)."""
    import stat

    umask = current_umask()
    directory = Path(directory)
    setgid = os.stat(directory.parent).st_mode & stat.S_ISGID
    os.chmod(directory, (0o777 & ~umask) | setgid)


def as_umask(directory) -> None:
    """The files of ``directory`` as the umask lets files be: safetensors writes its weights 0600 (through a temporary
    file; safetensors#782), so a server or a colleague running as another user could not read them (a final model, a
    checkpoint-N a colleague resumes, the demo model in a group's FTCTL_CACHE)."""
    umask = current_umask()
    for file in Path(directory).iterdir():
        if file.is_file() and not file.is_symlink():
            file.chmod(0o666 & ~umask)


def still_locked(fh: IO[str], path) -> bool:
    """Whether ``fh``, flocked, is still the file at ``path``: one removed meanwhile (a failed launch removing the run
    directory it made, with its lock) locks nothing any later opener sees."""
    try:
        return os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
    except OSError:
        return False


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / SPEC_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def sbatch(self) -> Path:
        return self.root / SBATCH_FILE

    @property
    def task(self) -> Path:
        return self.root / TASK_FILE

    @property
    def docker_script(self) -> Path:
        return self.root / DOCKER_FILE

    @property
    def source(self) -> Path:
        return self.root / SOURCE_DIR

    @property
    def local_log(self) -> Path:
        return self.root / LOCAL_LOG_FILE

    @property
    def failures(self) -> Path:
        """Where each failing rank leaves one record (ftctl.failures), read back by the launcher."""
        return self.root / FAILURES_DIR

    def earlier_spec(self, stamp: str) -> Path:
        """Where a relaunch with other settings keeps the spec.json it replaces (backend.write_files): spec.STAMP.json,
        or spec.STAMP-N.json where that is taken (stamps are seconds: two relaunches in one second wrote one name, and
        the second replaced the first's kept spec). Relaunches take the run's launch lock (backend.launching), so none
        takes the same free name meanwhile."""
        kept = self.root / ".ftctl"
        path, n = kept / f"spec.{stamp}.json", 1
        while os.path.lexists(path):
            n += 1
            path = kept / f"spec.{stamp}-{n}.json"
        return path

    @property
    def stop_file(self) -> Path:
        """Created by a local run's launcher to stop its trainer at the next step boundary, with a
        checkpoint ($FTCTL_STOP_FILE: torchrun, signalled, kills its workers mid-save after 30 s)."""
        return self.root / ".ftctl" / "stop"

    @property
    def stop_heard(self) -> Path:
        """The pid of an `ftctl train` trainer, which watches stop_file through the environment it set itself (not
        in /proc/PID/environ, which `ftctl cancel` reads of a launch's trainer: local.backend.stop_file_unheard)."""
        return self.root / ".ftctl" / "stop-heard"

    @property
    def status_file(self) -> Path:
        """The trainer's one-word exit status for runs the launcher watches itself (local, docker)."""
        return self.root / ".ftctl" / "status"

    @property
    def train_lock(self) -> Path:
        """Held (flock) by the rank 0 trainer writing into this directory, so a second one stops at once
        (trainer.run.only_trainer); it names its holder."""
        return self.root / ".ftctl" / "train.lock"

    @property
    def launch_lock(self) -> Path:
        """Held (flock) by the `ftctl launch` (or `ftctl train`) of a run into this directory from its checks until
        its job is recorded (a local run: until it ends), whatever its ftctl home or user: a second launch meanwhile
        is refused at once (backend.launching); it names its holder."""
        return self.root / ".ftctl" / "launch.lock"

    @property
    def launcher_log(self) -> Path:
        """torchrun's own failure report, held back from the terminal (local.backend.run_filtered)."""
        return self.root / ".ftctl" / "launcher.log"

    def slurm_log(self, job: str) -> Path:
        return self.root / SLURM_LOG_PATTERN.replace("%j", str(job))

    def slurm_jobs(self) -> list[str]:
        """The ids of the Slurm jobs whose logs (slurm_log) the run directory holds, oldest first (ids grow): every
        job launched into it, whoever launched it."""
        prefix, suffix = SLURM_LOG_PATTERN.split("%j")
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        ids = [n[len(prefix) : -len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)]
        return sorted((i for i in ids if i.isdigit()), key=int)

    def slurm_status(self, job: str, attempt: int) -> Path:
        return self.root / SLURM_STATUS_PATTERN.format(job=job, attempt=attempt)

    def name(self, file: str) -> Path:
        return self.root / file
