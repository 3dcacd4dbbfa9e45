"""What `ftctl status` says of a run's progress: the questions a user watching a tqdm bar and squeue asks while it
trains. From what the trainer writes: its metrics.jsonl (a row a logged step, with the step the run ends at:
trainer.callbacks.MetricsCallback; a "start" record a trainer) where this machine sees it, else its log's last step
line (a Slurm job staged on its nodes' disks); the newest checkpoint from its manifests, in the run directory, the
staging directory's record of what the store committed, or the store itself.

    step 120/1000 (12%)  loss 1.2345  1,234 tok/s  0.80 s a step, ~12 min left; held-out loss 1.3012 at step 100
    newest checkpoint: checkpoint-100, saved 3 min ago, in s3://b/runs/r1

What cannot be seen here is said so, not guessed: a total an older trainer did not record is left out, a time left
is given only while the job runs, and from two logged steps of its own trainer at least. A log's step line ends with
the time the trainer logged it (``14:02:05 UTC``), which dates it (a SkyPilot job's log is read through SkyPilot, its
file's time not seen here); an older trainer's line carries none: it is dated by the log's last write where this
machine sees the log (it is the log's last line: then; lines after it: before then), and the trainer's ETA at it is
counted down from there. Where neither the metrics nor the log is seen here (the job's node gone,
another machine), the newest complete checkpoint in the store says the step it stored (its copy of metrics.jsonl).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import math
import re
import shlex
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ftctl.runpaths import (
    EVENT,
    PROGRESS_LINE,
    START_WANDB_RUN,
    STEP_ROW,
    TENSORBOARD_LOG_DIR,
    TIMED,
    TRACKING_EVENT,
    UNTIMED,
    WANDB_RUN_DIR,
    WANDB_URL,
)

# the trainer's line in a job's log for a logged step (trainer.callbacks.MetricsCallback._progress):
# "step 12/40  loss 1.2345  lr 2.00e-04  grad 0.808  380 tok/s  ETA 0:00:11  14:02:05 UTC" (an older one's: no time)
LOGGED_STEP = re.compile(rf"{PROGRESS_LINE}(\d+)/(\d+)  loss ([0-9.]+|nan|inf)(?:  .*?([\d,.]+) tok/s)?")
STAMPED = re.compile(r"  (\d\d):(\d\d):(\d\d) UTC\s*$")  # its end: when it was logged (trainer.callbacks.STAMP)
ETA = re.compile(r"  ETA ((?:\d+ days?, )?\d+:\d\d:\d\d)(?:  \d\d:\d\d:\d\d UTC)?\s*$")  # "ETA 1 day, 2:03:04"
CLOCK_SKEW_S = 300.0  # a stamp up to this far ahead of this machine's clock is today's (the node's clock runs ahead)
STALE_AFTER_S = 120.0  # a running job's last logged step older than this and 3 of its intervals: said how old
# logging's time at a line's start (trainer.__main__.ZonedFormatter: "2026-12-05 14:02:03,123 +0530 [rank 0] ...";
# an older trainer's without the offset): a dated line after a step line says the step line is older
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.]\d{3} (?:([+-])(\d\d)(\d\d) )?")
# a log's line that its trainer ended: its stop (trainer.run.say_stop's warning, or its error line where the checkpoint
# did not reach the store), its last words (trainer.__main__: "stopped: step 280, ..." / "complete: step 400, ..."),
# or a Slurm script's line after its step ended (slurm.render: "ftctl: trainer exited with 0, status preempted"). The
# stop's name may be words: "stop file" (a Slurm job's), "SIGTERM to ftctl launch" (trainer.callbacks.stop_reason)
TRAINER_ENDED = re.compile(
    r"(?:stopped on .+? (after saving|at) step (\d+)|(?:^|[\s:\]])(stopped|complete): step (\d+), "
    r"|^ftctl: trainer exited with )"
)

STOPPED_ON = re.compile(r"stopped on (.+?) (?:after saving|at) step \d+")  # its stop's name, in TRAINER_ENDED's line


def records(text: str) -> list[dict]:
    """The records of a metrics.jsonl's text, in order; a line cut short (the one the trainer is writing) left out."""
    return [record for line in text.splitlines() if (record := _record(line)) is not None]


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def summary(
    records: list[dict], counts: Callable[[dict], bool], running: bool, now: float | None = None
) -> Progress | None:
    """summary_of_lines of metrics.jsonl's ``records`` (ftctl.progress.records)."""
    return summary_of_lines(map(json.dumps, records), counts, running, now)


def summary_of_lines(
    lines: Iterable[str], counts: Callable[[dict], bool], running: bool, now: float | None = None
) -> Progress | None:
    """The run's last logged step (of its total, where its trainer recorded it), the time a step takes and, while it
    runs, the time left; then its last held-out loss; as its ``tracking``, where its metrics go (the last "tracking"
    record of its trainers: tracking_said). ``lines``: metrics.jsonl's (backend.progress reads them one at a
    time); only the rows after a "start" record that ``counts`` (the job's own trainer: backend.own_start) are shown,
    and the rows before any start record (an older ftctl's) as they are. None: nothing of the job's own logged yet.

    A long run logs a row a step (a million rows, 200 MB, with logging_steps=1): only the records with an "event"
    (starts, evaluations) are parsed whole, and of the logged steps the ends of the newest trainer's (_Steps); parsing
    every row took `ftctl status` 6 s and 1.6 GB at a million rows."""
    steps, held_out, best, tracked, ended = _Steps(), None, None, None, None
    counted = True
    started = ours = False
    for line in lines:
        if STEP_ROW in line and EVENT not in line:  # a logged step (the bulk)
            if counted:
                steps.add(line)
            continue
        if (record := _record(line)) is None:
            continue
        if record.get("event") == "start":
            counted = counts(record)
            started, ours = True, ours or counted
            if counted:
                steps, tracked, ended = _Steps(), None, None
        elif not counted:
            continue
        elif record.get("event") in ("stop", "end", "final"):  # its trainer's end: a stop checkpoint, training done
            ended = record
        elif "loss" in record:  # a row written otherwise than json.dumps writes it
            steps.add(json.dumps(record))
        elif record.get("event") == "eval":
            held_out = record
            best = record if best is None or record["eval_loss"] < best["eval_loss"] else best
        elif record.get("event") == TRACKING_EVENT:
            tracked = record
    if started and not ours:
        return None
    tracking = tracking_said(tracked) if tracked else Tracking()
    parts = []
    if (step := steps.last()) is not None:
        text = step_text(step["step"], step["loss"], step.get("tokens_per_s"), step.get("max_steps"))
        # no time left once its trainer ended (the job still RUNNING or COMPLETING: its script requeues, or ends)
        timing = steps.pace(step.get("max_steps"), running and ended is None, time.time() if now is None else now)
        parts.append(_joined("  ", [text, timing]))
    if running and ended is not None and ended.get("event") == "stop":  # an ended job's stop: its backend's note
        parts.append(Progress(stopped_at(ended)))
    if held_out is not None:
        parts.append(_held_out(held_out, best))
    if not parts and not tracking:
        return None
    said = _joined("; ", parts)
    return Progress(said, said.fields, tracking)


def stopped_at(stop: dict) -> str:
    """'its trainer stopped at checkpoint-286', of a "stop" record (trainer.run.say_stop), the last of a running job's
    trainers: a requeued Slurm job's next attempt, loading, showed the stopped one's steps as its own, with the time
    left (~0 s); what goes on from that checkpoint is the backend's to say (status' note)."""
    where = stop.get("checkpoint") or f"step {stop.get('step')}"
    why = stop.get("signal")  # what asked it to stop: a signal's name, or its stop file's words (callbacks.stop_reason)
    on = f" on {why}" if isinstance(why, str) and why else ""
    unsent = " (not committed to the store)" if stop.get("in_store") is False else ""
    return f"its trainer stopped at {where}{on}{unsent}"


def _held_out(held_out: dict, best: dict) -> Progress:
    """``held-out loss 1.3012 at step 100``, of the last evaluation (``held_out``), and ``(lowest 1.2100 at step 50)``
    where an earlier one (``best``) was lower: the run may be overfitting, and checkpoint-N is what chat/eval/merge
    take. Its fields: held_out_loss, held_out_step."""
    fields = {"held_out_loss": _said(held_out["eval_loss"], ".4f"), "held_out_step": held_out["step"]}
    lowest = f" (lowest {best['eval_loss']:.4f} at step {best['step']})" if best is not held_out else ""
    loss = _words(fields["held_out_loss"], ".4f")
    return Progress(f"held-out loss {loss} at step {fields['held_out_step']}{lowest}", fields)


class _Steps:
    """One trainer's logged steps, as their lines come: what pace and the step line read of them (the first two timed
    rows, the last rows, how many are timed), the rest counted, not parsed."""

    def __init__(self):
        self.first: list[dict] = []  # the first two timed rows
        self.timed = 0
        self.prev = self.line = ""  # the last two rows' lines (the last may be cut short: the one being written)
        self.timed_prev = self.timed_line = ""  # the last two timed rows' lines

    def add(self, line: str) -> None:
        self.prev, self.line = self.line, line
        if TIMED not in line or UNTIMED in line:
            return
        if len(self.first) < 2:
            if (row := _record(line)) is None or not isinstance(row.get("time"), (int, float)):
                return
            self.first.append(row)
        self.timed += 1
        self.timed_prev, self.timed_line = self.timed_line, line

    def last(self, timed: bool = False) -> dict | None:
        """The last row (``timed``: of those with a time) that reads whole."""
        for line in (self.timed_line, self.timed_prev) if timed else (self.line, self.prev):
            if (row := _record(line)) is not None and "loss" in row:
                return row
        return None

    def pace(self, total: int | None, running: bool, now: float) -> Progress | None:
        timed = self.timed - (bool(self.timed_line) and _record(self.timed_line) is None)  # one cut short
        first = self.first[1] if timed > 2 else self.first[0] if self.first else None
        last = self.last(timed=True)
        if first is None or last is None or not isinstance(last.get("time"), (int, float)):
            return None
        return pace(first, last, timed - (timed > 2), total, running, now)


# the fields of `ftctl status`'s step line (`ftctl status --json`: StatusReport.to_dict, in this order), each as the
# line says it (a loss to 4 decimals, tokens a second whole, a time as its words say it: "0.80 s", "12 min"); None
# where the line does not say it. A loss that is not a number is said as "nan"/"inf" (JSON has no such number).
FIELDS = ("step", "total_steps", "loss", "tokens_per_s", "step_time", "time_left", "held_out_loss", "held_out_step")


class Progress(str):
    """What `ftctl status` says of a run's progress (its step line; under it, where the job may be stuck, a line
    saying so), with ``fields``: the fields (FIELDS) its step line says, from which its words were written; `ftctl
    status --json` gives them, so the text and the JSON cannot say two things and nothing reads the text back. A
    str (tests and callers compare and print it as one); str's own methods give plain text without the fields:
    new words are a new Progress (_joined). ``tracking``: where the run's metrics go (its own lines, Tracking), from
    the same metrics.jsonl."""

    fields: dict
    tracking: Tracking

    def __new__(cls, text: str = "", fields: dict | None = None, tracking: Tracking | None = None) -> Progress:
        said = super().__new__(cls, text)
        if unknown := set(fields or ()) - set(FIELDS):
            raise KeyError(f"not a field of a step line: {sorted(unknown)}")
        said.fields = {key: (fields or {}).get(key) for key in FIELDS}
        said.tracking = tracking if tracking is not None else Tracking()
        return said


# where `ftctl status` says a run's metrics go (`ftctl status --json`, after the step line's fields; null where not
# said): its W&B run's id, page (online) and W&B's directory of its last attempt, the `wandb sync` line that uploads
# an offline run from this machine; TensorBoard's directory
TRACKING_FIELDS = ("wandb_run_id", "wandb_url", "wandb_dir", "wandb_sync", "tensorboard_dir")


class Tracking(str):
    """Where a run's metrics go, a line a tracker (tracking_said), with its ``fields`` (TRACKING_FIELDS), as Progress
    says a step line."""

    fields: dict

    def __new__(cls, text: str = "", fields: dict | None = None) -> Tracking:
        said = super().__new__(cls, text)
        said.fields = {key: (fields or {}).get(key) for key in TRACKING_FIELDS}
        return said


def tracking_said(record: dict) -> Tracking:
    """The lines of metrics.jsonl's "tracking" record (trainer.tracking.record_destinations, the trainer's last
    attempt's): ``W&B run ID: URL`` online; offline, W&B's directory and the `wandb sync` line that uploads every
    attempt's (offline-run-*-ID: W&B makes one an attempt), from a copy where the directory is in an object store;
    ``TensorBoard: tensorboard --logdir DIR``."""
    from ftctl.storage import is_remote

    lines, fields = [], {}
    run, url, folder = record.get(START_WANDB_RUN), record.get(WANDB_URL), record.get(WANDB_RUN_DIR)
    if isinstance(run, str) and isinstance(folder, str):
        fields |= {"wandb_run_id": run, "wandb_url": url if isinstance(url, str) else None, "wandb_dir": folder}
        parent = folder.rstrip("/").rpartition("/")[0] or "."
        if fields["wandb_url"]:
            lines.append(f"W&B run {run}: {url}")
        elif is_remote(folder):
            lines.append(
                f"W&B run {run}, logged offline into {folder} (sent with each checkpoint): upload it from a copy of "
                f"{parent}/ with wandb sync offline-run-*-{shlex.quote(run)}"
            )
        else:
            fields["wandb_sync"] = f"wandb sync {shlex.quote(parent)}/offline-run-*-{shlex.quote(run)}"
            lines.append(f"W&B run {run}, logged offline into {folder}: upload it with {fields['wandb_sync']}")
    if isinstance(logs := record.get(TENSORBOARD_LOG_DIR), str):
        fields["tensorboard_dir"] = logs
        sent = " (sent with each checkpoint: tensorboard --logdir on a copy of it)" if is_remote(logs) else ""
        lines.append(f"TensorBoard: {logs}{sent}" if sent else f"TensorBoard: tensorboard --logdir {shlex.quote(logs)}")
    return Tracking("\n".join(lines), fields)


def _joined(sep: str, parts: list[Progress | None]) -> Progress:
    """``parts`` (None: left out) said one after another, with the fields each says."""
    parts = [part for part in parts if part is not None]
    return Progress(sep.join(parts), {k: v for part in parts for k, v in part.fields.items() if v is not None})


def _said(value: float, spec: str) -> float | str:
    """``value`` as its words say it (``spec``: ".4f", a loss's), for the fields: a number; "nan", "inf", "-inf" as
    words."""
    text = format(value, spec)
    return float(text) if math.isfinite(float(text)) else text


def _words(value: float | str, spec: str) -> str:
    """A field's number in a line's words (``spec``), or its word ("nan")."""
    return value if isinstance(value, str) else format(value, spec)


def step_text(step: int, loss: float, tokens_per_s: float | None, total: int | None = None) -> Progress:
    """``step 120/1000 (12%)  loss 1.2345  1,234 tok/s``; ``step 120  loss ...`` where the total is not known. Its
    fields: step, total_steps, loss, tokens_per_s."""
    fields = {
        "step": step,
        "total_steps": total if isinstance(total, int) and total > 0 else None,
        "loss": _said(loss, ".4f"),
        "tokens_per_s": _said(tokens_per_s, ".0f") if tokens_per_s else None,
    }
    total = fields["total_steps"]
    of = f"/{total} ({100 * step // total}%)" if total else ""
    rate = f"  {_words(fields['tokens_per_s'], ',.0f')} tok/s" if fields["tokens_per_s"] is not None else ""
    return Progress(f"step {step}{of}  loss {_words(fields['loss'], '.4f')}{rate}", fields)


def pace(first: dict, last: dict, timed: int, total: int | None, running: bool, now: float) -> Progress | None:
    """``0.80 s a step, ~12 min left``: the rate of the trainer's own logged steps (``timed`` of them, ``first`` to
    ``last``: from its second one, once there is a third: the first pays for what runs once, CUDA's start,
    compiling), evaluations and saves included, as a user's clock sees them; the time left only while the job runs,
    counted from the last step's time. None: fewer than two logged steps. Its fields: step_time, time_left."""
    if timed < 2 or last["step"] <= first["step"]:
        return None
    interval = (last["time"] - first["time"]) / (timed - 1)  # between two logged steps
    per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
    fields = {"step_time": duration(per_step, exact=True), "time_left": None}
    said = f"{fields['step_time']} a step"
    if not running:
        return Progress(said, fields)
    since = max(0.0, now - last["time"])
    stale = since > max(STALE_AFTER_S, 3 * interval)  # evaluating, saving, or stuck: the clock since is not a rate's
    if isinstance(total, int) and total > last["step"]:
        left = (total - last["step"]) * per_step
        fields["time_left"] = duration(left) if stale else duration(max(0.0, left - since))
        said += f", ~{fields['time_left']} left" + (" at its last step" if stale else "")
    return Progress(said + (f", logged {duration(since)} ago" if stale else ""), fields)


def duration(seconds: float, exact: bool = False) -> str:
    """``0.80 s``, ``45 s``, ``12 min``, ``2 h 5 min``, ``3 days``; ``exact``: a step's time, with its decimals."""
    if exact and seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 59.5 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.0f} days"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def logged_step(
    lines: list[str], running: bool, written: float | None = None, now: float | None = None, job: str | None = None
) -> Progress | None:
    """The last step line among ``lines`` (a job's last attempt in its log) as summary says a step, dated by the time
    the trainer logged it (its end: ``14:02:05 UTC``), else by ``written``, when the log was last written (its mtime):
    at that time where it is the log's last line, else before it (or before the first logging-dated line after it);
    then, while the job runs, the time a step takes and the time left from the trainer's ETA at that line, counted
    from then, and, where no step was logged for much longer than one comes, that the job may be stuck (``job``: the
    id `ftctl logs` takes). An older trainer's line in a log whose time is not known here (SkyPilot's): the trainer's
    ETA at that line, said as such. Its fields: step_text's, and step_time, time_left where it says them."""
    steps = [(i, m) for i, line in enumerate(lines) if (m := LOGGED_STEP.match(line))]
    if not steps:
        return None
    i, m = steps[-1]
    step, total = int(m[1]), int(m[2])
    text = step_text(step, float(m[3]), float(m[4].replace(",", "")) if m[4] else None, total)
    eta = ETA.search(lines[i])
    now = time.time() if now is None else now
    stamped = _stamped(lines[i], now)
    # no time left once its trainer ended (the job still RUNNING: its script requeues it, waits for its time limit,
    # or ends): said so, as summary_of_lines says a metrics.jsonl's stop (explore61 finding 9)
    if running and (ended := _trainer_ended(lines[i + 1 :])):
        return Progress(f"{text}; {ended}", text.fields)
    if written is None and stamped is None:
        if not (running and eta):
            return text
        fields = text.fields | {"time_left": f"ETA {eta[1]}"}
        return Progress(f"{text}  {fields['time_left']} at that line of its log", fields)
    if not running:
        return text
    after = [line for line in lines[i + 1 :] if line.strip()]
    at = stamped or min([written, *[t for line in after if (t := _logged_at(line)) is not None][:1]])
    age = max(0.0, now - at)
    if not after or stamped is not None:
        when = f"at {clock(at, now)}, {duration(age)} ago"
    else:  # lines after it: it is older than the log's last write
        when = f"before {clock(at, now)}" + (f", over {duration(age)} ago" if age >= 60 else "")
    per_step = _seconds(eta[1]) / (total - step) if eta and total > step else None
    if per_step is None:
        return Progress(f"{text}  logged {when}", text.fields)
    # steps between two logged ones: the last two lines' (one line: its step, at most that many since the start)
    every = step - int(steps[-2][1][1]) if len(steps) > 1 and step > int(steps[-2][1][1]) else step
    interval = every * per_step
    left = (total - step) * per_step
    fields = text.fields | {"step_time": duration(per_step, exact=True)}
    said = f"{text}  {fields['step_time']} a step"
    if age <= max(STALE_AFTER_S, 3 * interval):
        fields["time_left"] = duration(max(0.0, left - age))
        return Progress(f"{said}, ~{fields['time_left']} left, logged {when}", fields)
    fields["time_left"] = duration(left)
    moved = f"; its log was last written {duration(max(0.0, now - written))} ago" if after and written else ""
    look = f"`ftctl logs {shlex.quote(str(job))}`" if job else "its log"
    return Progress(
        f"{said}, ~{fields['time_left']} left at that step, logged {when}\n"
        f"no step logged for {duration(age)} where one came every ~{duration(interval)}{moved}: the job may be stuck "
        f"(or in a long evaluation or save); {look} shows what it wrote last",
        fields,
    )


def _trainer_ended(lines: list[str]) -> str | None:
    """What the first of ``lines`` (a log's, after its last step line) that says the trainer ended says of it
    (stopped_at's words: 'its trainer stopped at step 280', and where its error line said the stop's checkpoint did not
    reach the store, that too); None where none does."""
    for line in lines:
        if m := TRAINER_ENDED.search(line):
            if m[3] == "complete":
                return f"its trainer finished at step {m[4]}"
            if step := m[2] or m[4]:  # "at step N, but its checkpoint-N did not reach" the store: its error line
                why = {"signal": said[1]} if (said := STOPPED_ON.search(line)) else {}
                return stopped_at({"step": int(step)} | why | ({"in_store": False} if m[1] == "at" else {}))
            return "its trainer ended"
    return None


def clock(when: float, now: float) -> str:
    """``14:02 IST``, today's (this machine's local time, its zone named: the log beside it says UTC, or another
    node's offset); ``2026-12-04 14:02 IST`` another day's."""
    day = "%H:%M %Z" if time.localtime(when)[:3] == time.localtime(now)[:3] else "%Y-%m-%d %H:%M %Z"
    return time.strftime(day, time.localtime(when))


def _stamped(line: str, now: float) -> float | None:
    """The time a progress line ends with (``14:02:05 UTC``, trainer.callbacks.STAMP): the last such time of day up to
    ``now`` (CLOCK_SKEW_S after it too: the node's clock may run ahead of this one's); None where it has none."""
    if not (m := STAMPED.search(line)):
        return None
    h, minute, s = (int(x) for x in m.groups())
    if h > 23 or minute > 59 or s > 60:
        return None
    at = now - now % 86400 + h * 3600 + minute * 60 + s  # UTC's day of now: POSIX time has 86400 s a day
    return at - 86400 if at > now + CLOCK_SKEW_S else at


def _logged_at(line: str) -> float | None:
    """When logging wrote a line of the trainer's, by the UTC offset it says (the node's zone, whatever this
    machine's); a line without one (an older trainer's) in this machine's local time. None: no such line."""
    if not (m := LOG_TIME.match(line)):
        return None
    try:
        fields = time.strptime(m[1], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    if not m[2]:
        return time.mktime(fields)
    offset = int(m[3]) * 3600 + int(m[4]) * 60
    return calendar.timegm(fields) - (offset if m[2] == "+" else -offset)


def _seconds(eta: str) -> float:
    """``0:05:02`` -> 302; ``1 day, 2:03:04`` -> 93784 (datetime.timedelta's text, the trainer's ETA)."""
    days, _, clock_text = eta.rpartition(", ")
    h, m, s = (int(x) for x in clock_text.split(":"))
    return (int(days.split()[0]) if days else 0) * 86400 + h * 3600 + m * 60 + s


def stored(output: str, endpoint_url: str | None, now: float | None = None) -> tuple[Progress | None, str] | None:
    """What the newest complete checkpoint in an object-store output says of the run, for `ftctl status` where neither
    its metrics.jsonl nor its log is seen here: (its last logged step of its total, loss and pace as summary says them
    from the checkpoint's copy of metrics.jsonl, one its manifest lists: whole; the checkpoint and when it was saved),
    the first None where it holds no copy (an older ftctl's) or one that is not gzip, and empty (with its
    ``tracking``) where no step was logged before the checkpoint. None where the store holds no complete checkpoint; a
    store that cannot be read raises (OSError, FtctlError)."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.manifest import METRICS_COPY_ERRORS, metrics_copy, open_metrics_copy
    from ftctl.storage import storage_errors

    now = time.time() if now is None else now
    with storage_errors(output, endpoint_url):
        done = [c for c in list_checkpoints(output, endpoint_url=endpoint_url) if c.complete]
        if not done:
            return None
        newest = done[-1]
        listed = {f.get("path") for f in (newest.manifest or {}).get("files", []) if isinstance(f, dict)}
        said = None
        if copy := metrics_copy(newest.uri, listed):  # gzip (50-57 MB at a million rows; an older ftctl's: plain)
            with open_metrics_copy(copy, endpoint_url) as f:  # downloaded whole, gunzipped a line at a time
                with contextlib.suppress(*METRICS_COPY_ERRORS):  # not gzip: said as a copy that says nothing
                    said = summary_of_lines(f, lambda start: True, running=False, now=now)
    saved = _saved(newest, now)
    at = (newest.manifest or {}).get("created_unix")
    saved += f" at {clock(at, now)}" if isinstance(at, (int, float)) else ""
    step = None
    if said is not None:  # a step logged, or only where the metrics go (no step logged before it was saved)
        text = f"{said} (from {saved}, the newest complete checkpoint in {output})" if said else ""
        step = Progress(text, said.fields, said.tracking)
    return step, f"newest checkpoint: {saved}, in {output}"


def newest_checkpoint(output: str, endpoint_url: str | None, staged: Path | None, now: float | None = None) -> str:
    """``newest checkpoint: checkpoint-100, saved 3 min ago`` (``, in s3://...`` for an object-store output): of a
    local output, its newest complete one; of an object-store output, the newest its store committed, from the
    directory it is staged in where this machine sees it (its record of what the store committed, no request), else
    from the store; a newer one saved there and not committed yet is said too. What cannot be read is said so."""
    from ftctl.checkpoints import list_checkpoints, uploaded
    from ftctl.errors import FtctlError
    from ftctl.storage import is_remote, storage_errors

    now = time.time() if now is None else now
    if not is_remote(output):
        done = [c for c in list_checkpoints(output) if c.complete]
        return f"newest checkpoint: {_saved(done[-1], now)}" if done else "no checkpoint saved yet"
    here = []
    if staged is not None and staged.is_dir():
        here = [c for c in list_checkpoints(str(staged)) if c.complete]
        sent = uploaded(str(staged))
        committed = [c for c in here if c.name in sent]
        if sent and committed:  # not one an earlier run left here (resume's concern): one this run sent
            newest, ahead = committed[-1], [c for c in here if c.step > committed[-1].step]
            return f"newest checkpoint: {_saved(newest, now)}, in {output}" + _ahead(ahead, output, now)
    try:
        with storage_errors(output, endpoint_url):
            done = [c for c in list_checkpoints(output, endpoint_url=endpoint_url) if c.complete]
    except (OSError, FtctlError) as e:
        said = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
        return f"newest checkpoint: {output} cannot be listed now ({said})"
    if not done:
        return f"no checkpoint committed to {output} yet" + _ahead(here, output, now)
    ahead = [c for c in here if c.step > done[-1].step]
    return f"newest checkpoint: {_saved(done[-1], now)}, in {output}" + _ahead(ahead, output, now)


def _ahead(here: list, output: str, now: float) -> str:
    return f" ({_saved(here[-1], now)} on this disk, not in {output} yet)" if here else ""


def _saved(checkpoint, now: float) -> str:
    when = (checkpoint.manifest or {}).get("created_unix")
    if not isinstance(when, (int, float)):
        return checkpoint.name
    return f"{checkpoint.name}, saved {duration(max(0.0, now - when))} ago"
