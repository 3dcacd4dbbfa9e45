"""What a checkpoint was trained with, and what a relaunch that resumes it changed.

A relaunch into the same output_dir resumes its newest checkpoint (resume=auto), and transformers' Trainer
restores the optimizer and the learning-rate schedule as they were saved: a learning_rate or weight_decay changed
for the relaunch (the loss spiked; go on more gently) silently did not take effect. Each checkpoint's manifest
now records the settings it was trained with (``saved``), and a resumed run compares them with its own
(``changes``):

- what the checkpoint cannot be continued under (another method, model, adapter shape or optimizer) is refused,
  naming the values that would continue it;
- a new learning_rate or weight_decay is put into the restored optimizer and schedule (the trainer's
  ``callbacks.ApplySettings``; the schedule's shape and position are kept, its peak scaled);
- the rest (the schedule's length and warm-up, the data, the batch, the seed, the base model's commit) take effect as
  they are; the log says which changed, once. Other data (data_path, data_weights) is read from its start: a relaunch on more data
  continues the run's weights, optimizer and schedule on it. The launcher asks for that by name (resume=<checkpoint>):
  with resume=auto it refuses other data over a run's checkpoints (backend.write_files), since every run of a
  method and model shares one default output dir and a new experiment would silently go on from the last.

Micro-batch, accumulation, checkpointing and strategy are not compared: they change how a step runs, not what it
computes (an out-of-memory relaunch resumes with smaller ones).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ftctl import storage
from ftctl.checkpoints.manifest import MANIFEST, checkpoint_step, is_manifest, read_manifest
from ftctl.errors import FtctlError
from ftctl.runpaths import FINAL_MARKS, SPEC_FILE
from ftctl.spec import as_run

# what kind of weights a checkpoint holds: a run dir's checkpoints are another run's where these differ
KIND = ("method", "model_name_or_path", "lora_r", "lora_target_modules", "use_dora", "trainable_layers")
# the checkpoint holds a model, an adapter or optimizer states that other values of these cannot load or continue
REFUSED = (*KIND, "optim")
APPLIED = ("learning_rate", "weight_decay")  # restored with the optimizer: callbacks.ApplySettings puts the new ones in
# read afresh from the run's own settings: the schedule, the clipping, the adapters' scale and dropout...
FOLLOWED = ("max_steps", "num_train_epochs", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps")
FOLLOWED += ("max_grad_norm",)
FOLLOWED += ("lora_alpha", "lora_dropout", "use_rslora", "assistant_only_loss")
FOLLOWED += ("save_steps", "logging_steps", "eval_steps")  # transformers restores them: callbacks.StepsAsGiven
FOLLOWED += ("saves_per_epoch", "evals_per_epoch")
FOLLOWED += ("eval_data_path",)
# the adapter a lora run's adapters started from (lora_model_dir, as the job names it; None: PEFT's fresh ones), for
# lora and qlora always (a checkpoint without it was saved before it was recorded): a relaunch that names another
# resumes the checkpoint all the same and never reads it (spec.from_adapter), so it is refused (_other_adapter)
STARTED = ("lora_model_dir",)
# the base's commit (model_revision: a hub model's, pinned at launch): another is said, not refused. A commit of a model
# repository often changes no weight (a README, a tokenizer's or generation config's fix) and an adapter trained on
# one loads onto the next; where the weights did change, the run goes on from weights trained on others, which the
# user may want (a fixed base) or not: the log says which commits, once. Recorded only for a hub model, and compared
# only where both the checkpoint and the run have one (a run never pinned, or saved before it was recorded, says
# nothing: which main it trained on is not known)
BASE = ("model_revision",)
# ...and which rows the steps after the checkpoint train on
DATA = ("global_batch_size", "model_max_length", "packing", "chat_template_path", "data_path", "data_weights")
DATA += ("eval_split", "seed", "dataset_text_field", "data_columns")
# other rows: read from their start, not past the checkpoint's batches (another text field: other rows' text)
NEW_DATA = ("data_path", "data_weights", "dataset_text_field", "data_columns")
# the files data_path names, by their content and their names below it (trainer.formats.data_digest), not where they
# are: recorded by the trainer beside data_path (content), compared where data_path differs. The same files at another
# path (a fresh machine's copy, another checkout or home) are the same data: not other data refused or read from its
# start (explore66). A checkpoint saved before it was recorded compares data_path alone
DATA_CONTENT = "data_content"
# recorded only where not this default: a checkpoint without it (saved before it was recorded) trained at the default
AT_DEFAULT = {"dataset_text_field": "text", "data_columns": {}}
# what the held-out loss is measured with besides its rows: the tokens scored, how they are cut and packed
MEASURE = (
    "model_max_length",
    "chat_template_path",
    "assistant_only_loss",
    "packing",
    "dataset_text_field",
    "data_columns",
)
# the settings that make other training rows of the same file (a change of one is said by Changes.line)
SHAPE_ROWS = (*NEW_DATA, "model_max_length", "chat_template_path", "eval_split", "seed", "assistant_only_loss")
TRAINER_STATE = "trainer_state.json"  # transformers' own record in each checkpoint: its step and the run's total
_ONLY = {  # compared only where the method has them
    "lora_r": ("lora", "qlora"),
    "lora_alpha": ("lora", "qlora"),
    "lora_dropout": ("lora", "qlora"),
    "lora_target_modules": ("lora", "qlora"),
    "use_rslora": ("lora", "qlora"),
    "use_dora": ("lora", "qlora"),
    "trainable_layers": ("sft",),
    "lora_model_dir": ("lora", "qlora"),
}


def settings(spec, plan) -> dict:
    """The settings a checkpoint is trained with, as the run ran them (the planner's optimizer and learning rate)."""
    values = {key: as_run(key, getattr(spec, key)) for key in REFUSED + APPLIED + FOLLOWED + BASE + DATA + STARTED}
    # the global batch the run makes (micro-batch x accumulation x processes), not the one asked for: resumed on
    # another GPU count it may differ, and the rows the checkpoint's steps trained are skipped at the new size
    values.update(
        learning_rate=plan.learning_rate,
        optim=plan.optim,
        packing=plan.packing,
        global_batch_size=plan.global_batch_size,
    )
    mine = {k: v for k, v in values.items() if spec.method in _ONLY.get(k, (spec.method,))}
    mine = {k: v for k, v in mine.items() if k not in BASE or v is not None}  # (BASE: only where pinned)
    return {k: v for k, v in mine.items() if k not in AT_DEFAULT or v != AT_DEFAULT[k]}


def content(spec, known: str | None = None) -> dict:
    """{DATA_CONTENT: the digest of the files ``spec.data_path`` names} (trainer.formats.data_digest, its one owner;
    ``known``: its file of local files' digests by their stat, the trainer's data cache's); {} where they cannot be
    read here (a path only a cluster's nodes see, a store not reachable): data_path alone is compared then."""
    from ftctl.trainer.formats import data_digest

    try:
        return {DATA_CONTENT: data_digest(spec.data_path, spec.s3_endpoint_url, known=known)}
    except (FtctlError, OSError, ValueError):
        return {}


def saved(checkpoint: str, endpoint_url: str | None = None) -> dict | None:
    """The settings recorded in a checkpoint's manifest; None where it has none (written before they were).
    ``checkpoint``: a local directory (its nodes' manifests too), or an object-store URI (its ftctl-manifest.json,
    asked with the "ask" limits: nothing else of it is read). OSError where a local one cannot be listed."""
    if storage.is_remote(checkpoint):
        names = [MANIFEST]
    else:
        names = sorted((n for n in os.listdir(checkpoint) if is_manifest(n)), key=lambda n: n != MANIFEST)
    for name in names:  # the merged one first
        try:
            recorded = read_manifest(checkpoint, name, endpoint_url).get("settings")
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict):
            return recorded
    return None


# what a run's model card says of each phase of it (a relaunch into its output that went on from a checkpoint with
# another learning rate or data): recorded in each start record of its metrics.jsonl (phase_record), read by phases
PHASE = ("data_path", "data_weights", "learning_rate")
PHASE_KEY = "phase"  # the start record's key (trainer.run.record_start)


def went_on_from(resume, endpoint_url: str | None = None, starts: list[dict] = ()) -> dict | None:
    """The settings recorded by the checkpoint a run named to go on from (``resume``: its spec's, a PATH of another
    run's checkpoint-<step> or of its output's own), its steps being the first ones of the run: what the model card
    says of them (its data, learning rate) and what eval counts as trained-on data (heldout). {} where the checkpoint
    records none or cannot be read now (deleted since, its store not reachable from here); None where the run named
    none (resume=auto, never). Where the checkpoint says nothing now (save_total_limit deleted it), the start record
    of the run's metrics.jsonl that went on from it (``starts``: phase_record's) says its PHASE settings."""
    if not isinstance(resume, str) or resume in ("auto", "never", ""):
        return None
    try:
        recorded = saved(resume, endpoint_url) or {}
    except Exception:  # noqa: BLE001 - advisory: a checkpoint deleted since, a store not reachable from here
        recorded = {}
    named = os.path.basename(resume.rstrip("/"))  # checkpoint-8 of s3://B/r, recorded as the local copy it went on from
    for start in reversed(starts) if not recorded else ():
        went = start.get(PHASE_KEY, {}).get("resumed") if isinstance(start.get(PHASE_KEY), dict) else None
        if not isinstance(went, dict) or not isinstance(went.get("settings"), dict):
            continue
        checkpoint = str(went.get("checkpoint") or "")
        if checkpoint == resume or os.path.basename(checkpoint.rstrip("/")) == named:
            return dict(went["settings"])
    return recorded


def phase_record(resumed: str | None, now: dict, endpoint_url: str | None = None) -> dict:
    """What a run's start record says of the phase it starts (``now``: the settings it trains with, ``settings``):
    its PHASE settings, and where it goes on from a checkpoint (``resumed``: its own, or another run's), that
    checkpoint's step and the PHASE settings its manifest recorded (the earlier phase's; {} where it records none, or
    cannot be read now). A relaunch's checkpoints replace the earlier ones (save_total_limit), so the start record
    keeps what they trained with."""
    record: dict = {"settings": {k: now[k] for k in PHASE if k in now}}
    if resumed:
        try:
            before = saved(resumed, endpoint_url) or {}
        except Exception:  # noqa: BLE001 - advisory: a store not reachable from here
            before = {}
        step = checkpoint_step(os.path.basename(resumed.rstrip("/")))
        record["resumed"] = {
            "checkpoint": resumed,
            "step": step,
            "settings": {k: before[k] for k in PHASE if k in before},
        }
    return record


def phases(starts: list[dict]) -> list[tuple[int, dict]]:
    """The phases of a run, (first step, PHASE settings) each, in order, from the start records of its metrics.jsonl
    (``starts``, oldest first; phase_record's under PHASE_KEY): a fresh start begins them again; a start that went on
    from checkpoint-N ends those before at step N (a relaunch from an older checkpoint trains the steps past it
    again) and begins one at N + 1; where no earlier record says what its first N steps trained with, its
    checkpoint's recorded settings do. Neighbours of the same settings are one phase (a preempted run requeued).
    Start records written before phases were recorded are passed over; [] where none says one."""
    said: list[tuple[int, dict]] = []
    for start in starts:
        phase = start.get(PHASE_KEY) if isinstance(start, dict) else None
        if not isinstance(phase, dict) or not isinstance(phase.get("settings"), dict):
            continue
        went = phase.get("resumed")
        step = went.get("step") if isinstance(went, dict) else None
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            said = [(1, phase["settings"])]
            continue
        said = [(first, values) for first, values in said if first <= step]
        if not said and isinstance(went.get("settings"), dict):
            said = [(1, went["settings"])]
        said.append((step + 1, phase["settings"]))
    merged: list[tuple[int, dict]] = []
    for first, values in said:
        if not merged or merged[-1][1] != values:
            merged.append((first, values))
    return merged


@dataclass
class Changes:
    step: int
    changed: dict = field(default_factory=dict)  # key: (saved, now)
    # what an unset max_steps (-1: the epochs decide) reads as on each side: the checkpoint's run's num_train_epochs
    # and steps (its trainer_state.json's max_steps), this run's num_train_epochs (its steps are not counted yet)
    epochs: tuple = (None, None)
    total: int | None = None

    @property
    def applied(self) -> dict:
        return {k: v for k, v in self.changed.items() if k in APPLIED}

    @property
    def new_data(self) -> bool:
        """Other data: the resumed run reads it from its start (the Trainer's ignore_data_skip) instead of skipping
        the batches the checkpoint's steps took of the data it had: continuing a run on more data."""
        return any(k in NEW_DATA for k in self.changed)

    def held_out(self, eval_data_path) -> list[str]:
        """The changed settings that measure the held-out loss otherwise (other rows, or the same rows scored
        otherwise): the checkpoint's lowest one compares with nothing measured now. ``eval_data_path``: the run's
        (its rows are held out of data_path where it has none)."""
        rows = ("eval_data_path",) if eval_data_path else ("data_path", "eval_split", "seed", "eval_data_path")
        return [k for k in self.changed if k in rows + MEASURE]

    def line(self, own: bool = True) -> str:
        """``own``: the checkpoint is the output's own (not another run's, -o resume=PATH), which another --output
        would leave behind."""
        each = ", ".join(
            f"{k} {self._show(k, old, 0)} -> {self._show(k, new, 1)}" for k, (old, new) in self.changed.items()
        )
        if self.new_data:
            reading = " (the new data from its start)"
        elif "global_batch_size" in self.changed:
            was, now = self.changed["global_batch_size"]
            reading = (
                f" (the first {self.step} steps are skipped as trained at {now} sequences a step: {self.step * now:,} "
                f"sequences where {self.step * was:,} were trained; -o global_batch_size={was} with a GPU count that "
                "makes it continues where the run was)"
            )
        elif any(k in DATA for k in self.changed):
            reading = f" (the batches of the first {self.step} steps, of the data as it is now, are skipped as trained)"
        else:
            reading = ""
        return (
            f"checkpoint-{self.step} was saved with other settings: {each}; the run goes on from step {self.step} "
            f"with the new ones{reading}" + ("; another --output starts a new run instead" if own else "")
        )

    def _show(self, key: str, value, side: int) -> str:
        """``value`` of ``key`` as the change line says it; an unset max_steps (transformers' -1) as what decides the
        run's length instead: "max_steps none (1 epoch, 10 steps) -> 15" (it said "max_steps -1 -> 15")."""
        if key != "max_steps" or not isinstance(value, int) or value > 0:
            return _show(value)
        epochs = self.epochs[side]
        said = [f"{epochs:g} epoch{'s' if epochs != 1 else ''}"] if isinstance(epochs, (int, float)) else []
        said += [f"{self.total} steps"] if side == 0 and self.total else []
        return f"none ({', '.join(said)})" if said else "none"


def edited_data(
    checkpoint: str | None, now: dict, changed: Changes | None, data_path, checkpoint_uri: str
) -> str | None:
    """The line saying that a resume of the local ``checkpoint`` trains other rows than it was trained on with the
    same settings (``now``: the run's settings with data_rows and data_digest, trainer.data.rows_digest): its data was edited or replaced since. The Trainer skips
    the batches of the checkpoint's steps of the rows as they are now. None where the rows are the same, the
    checkpoint recorded none (saved before they were), or a setting that makes other rows changed (Changes.line
    says so)."""
    before = saved(checkpoint) if checkpoint else None
    if not before or not before.get("data_digest") or before["data_digest"] == now.get("data_digest"):
        return None
    if changed and any(k in SHAPE_ROWS for k in changed.changed):
        return None
    step, was, rows = checkpoint_step(checkpoint) or 0, before.get("data_rows"), now.get("data_rows")
    how = f"{was:,} training rows -> {rows:,}" if was != rows else f"its {rows:,} training rows hold other tokens"
    return (
        f"{_show(data_path)} has changed since checkpoint-{step} was saved ({how}): the run goes on from step {step} "
        f"and skips the batches of its first {step} steps, drawn from the data as it is now, as trained (so this epoch "
        "some rows it trained may train again and some new ones not at all). To train the edited rows from their "
        f"start with this run's weights: save them as a new file and relaunch with --data NEW -o "
        f"resume={checkpoint_uri}; for a new run: another --output."
    )


def other_data(output, checkpoint: str, checkpoint_uri: str, was: dict, another: str = "another --output") -> str:
    """The refusal of other data over ``checkpoint`` of ``output`` with resume=auto (a new experiment would
    silently go on from the last one); ``was``: the data settings it was trained with; ``another``: the launch's way
    to another output (spec.RunSpec.another_output)."""
    return (
        f"{output} holds {checkpoint} of a run trained on {', '.join(f'{k}={_show(v)}' for k, v in was.items())}; "
        f"this launch names other data. To go on training that run on it: -o resume={checkpoint_uri}. For a new "
        f"run: {another}."
    )


def refused_data(
    output, checkpoint: str, checkpoint_uri: str, changed: Changes | None, resume, another: str
) -> str | None:
    """other_data's line where a resume=auto run would go on from ``checkpoint`` (``checkpoint_uri``) of ``output``
    on other data (``changed``: Changes.new_data), None otherwise: refused by the launch (preflight.check_resume) and
    by the trainer, which a launch passed before the checkpoint was saved (two launches into one output at once: the
    second waited on the first's lease, then resumed its checkpoints on its own data, explore66). ``another``:
    other_data's."""
    if not (changed and changed.new_data and resume == "auto"):
        return None
    was = {k: old for k, (old, _) in changed.changed.items() if k in NEW_DATA}
    return other_data(output, checkpoint, checkpoint_uri, was, another)


def changes(checkpoint: str | None, now: dict) -> Changes | None:
    """What changed since the local ``checkpoint`` was saved (None: nothing, or nothing recorded); FtctlError where
    it cannot be continued under the new settings."""
    if checkpoint is None or (before := saved(checkpoint)) is None:
        return None
    return compare(checkpoint, before, now)


def compare(checkpoint: str, before: dict, now: dict, spec=None) -> Changes | None:
    """``changes`` of settings ``before`` (a manifest's, of ``checkpoint``, local or in the store). A refusal names the
    values that continue it as ``spec`` (the run's RunSpec) gave each key (spec.given_as: --method lora, -o
    method=lora, method: lora in its run file); without it, by the key's flag where it has one (FLAGS)."""
    before, now = {**AT_DEFAULT, **before}, {**AT_DEFAULT, **now}  # left out where they were the default
    if spec is not None and _moved(before, now):  # a launch's settings: the files' content taken only where needed
        now.update(content(spec))
    changed = {k: (before[k], v) for k, v in now.items() if k in before and before[k] != v}
    changed.pop(DATA_CONTENT, None)  # said as data_path's change (or edited_data's), never as a value of its own
    if _moved(before, now) and before[DATA_CONTENT] == now.get(DATA_CONTENT):
        changed.pop("data_path", None)  # the same files at another path: the same data
    if said := _other_adapter(checkpoint, changed, spec):
        raise FtctlError(said)
    refused = [k for k in REFUSED if k in changed]
    if refused:
        was = ", ".join(f"{k}={_show(changed[k][0])}" for k in refused)
        asked = ", ".join(f"{k}={_show(changed[k][1])}" for k in refused)
        raise FtctlError(
            f"{checkpoint} was trained with {was}; this run asks for {asked}, which cannot continue it. "
            f"Relaunch with {_joined([_given(spec, k, _show(changed[k][0])) for k in refused])} to resume it, or give "
            "another --output to train from the start."
        )
    if not changed:
        return None
    epochs = (before.get("num_train_epochs"), now.get("num_train_epochs"))
    unset = "max_steps" in changed and isinstance(changed["max_steps"][0], int) and changed["max_steps"][0] <= 0
    total = _total_steps(checkpoint, getattr(spec, "s3_endpoint_url", None)) if unset else None
    return Changes(checkpoint_step(checkpoint) or 0, changed, epochs, total)


def _moved(before: dict, now: dict) -> bool:
    """Whether ``before`` (a checkpoint's settings) names another data_path than ``now`` and records its files'
    DATA_CONTENT, which then says whether the data is other data."""
    return bool(before.get(DATA_CONTENT)) and before.get("data_path") != now.get("data_path")


def _total_steps(checkpoint: str, endpoint_url: str | None) -> int | None:
    """The steps of the run that saved ``checkpoint`` (local or in the store): its trainer_state.json's max_steps,
    which an epoch-based run's Trainer counted; None where it cannot be read."""
    try:
        total = json.loads(storage.read_text(storage.join(checkpoint, TRAINER_STATE), endpoint_url)).get("max_steps")
    except Exception:  # noqa: BLE001 - words of a warning: a checkpoint without transformers' record, a store away
        return None
    return total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None


# the run keys of those that have a flag of launch's (and plan's, train's): a fix names the flag, as a user gives it
FLAGS = {"method": "--method", "model_name_or_path": "--model"}


def _given(spec, key: str, value: str) -> str:
    """``key`` at ``value`` as the user gives it: as ``spec`` gave it (spec.given_as), else its flag, else -o."""
    import shlex

    from ftctl.spec import given_as

    if spec is not None:
        return given_as(spec, key, value, FLAGS.get(key))
    return f"{FLAGS[key]} {shlex.quote(value)}" if key in FLAGS else f"-o {shlex.quote(f'{key}={value}')}"


def _joined(parts: list[str]) -> str:
    """Flags and -o's as one command line's words; a run file's lines among them apart by commas."""
    return " ".join(parts) if all(p.startswith("-") for p in parts) else ", ".join(parts)


def _other_adapter(checkpoint: str, changed: dict, spec) -> str | None:
    """The refusal of a launch that names another lora_model_dir than the one ``checkpoint``'s run started from (or
    one for a run that started with new adapters): the run resumes the checkpoint and would not read it. Taken out of
    ``changed`` either way: a launch that names none resumes as it would anyway, and a path on a SkyPilot node
    (./inputs/...: the checkpoint's record, read by a launch) is no path of this machine to compare."""
    if "lora_model_dir" not in changed:
        return None
    was, now = changed.pop("lora_model_dir")
    if now is None or (was is not None and os.path.isabs(was) != os.path.isabs(now)):
        return None
    import shlex

    name = os.path.basename(checkpoint.rstrip("/"))
    started = f"from the adapter lora_model_dir={shlex.quote(was)}" if was else "with new adapters (no lora_model_dir)"
    keep = f"relaunch with {_given(spec, 'lora_model_dir', was)} (or without it)" if was else "leave lora_model_dir out"
    return (
        f"{checkpoint} is of a run that started {started}; this launch names lora_model_dir={shlex.quote(now)}, which "
        f"it would not read: it would resume {name}, its adapters' weights, optimizer and schedule. To start from "
        f"that adapter, give {getattr(spec, 'another_output', 'another --output')}; to go on with this run, {keep}."
    )


def written_over(output: str, names: list[str]) -> str | None:
    """resume=never where ``output`` holds checkpoints ``names`` (an earlier run's): the new run would write over
    them (its checkpoint-N over theirs) and leave the others for a later resume=auto to mistake for its own."""
    if not names:
        return None
    newest = max(names, key=checkpoint_step)
    return (
        f"resume=never, but {output} holds an earlier run's checkpoints ({newest} the newest), which this run would "
        "write over: give another --output, resume=auto to continue them, or delete them first."
    )


def final_written_over(output: str, endpoint_url: str | None = None) -> str | None:
    """``output`` holds a run's final model (final_saved) and no complete checkpoint to go on from (deleted to save
    room, or never saved): the run would train from step 0 and replace that model, with no word (explore36). Only
    of a run's output (its spec.json): a directory of no run's (a checkpoint-N named as --output) is refused as one."""
    try:
        if not (final_saved(output, endpoint_url) and storage.exists(storage.join(output, SPEC_FILE), endpoint_url)):
            return None
    except (OSError, storage.StorageError, FtctlError):
        return None
    return (
        f"{output} holds a finished run's final model but no checkpoint to go on from (deleted, or none saved): this "
        "run would train from step 0 and write over it. Give another --output, or move that model out of it first."
    )


def _show(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def final_saved(uri: str, endpoint_url: str | None = None) -> bool:
    """Whether a run's output (local or in the store) holds its final model or adapter, whole, at its top: its
    config, written and uploaded after every other file of it (runpaths.FINAL_MARKS)."""
    try:
        return any(storage.exists(storage.join(uri, name), endpoint_url) for name in FINAL_MARKS)
    except (OSError, storage.StorageError, FtctlError):
        return False


def past_end(state_json: str, spec, checkpoint: str) -> str | None:
    """The line refusing to resume a run's own ``checkpoint`` (its trainer_state.json text) past this run's max_steps
    (a stopped run relaunched with a lower one): the Trainer trained nothing, wrote the checkpoint's weights as the
    final model of a run of max_steps steps (its model card said so) and called it complete, after the log said "the
    run goes on from step N with the new ones" (explore64). A checkpoint of the last step (a run stopped before its
    final model) resumes to write it; another run's is the trainer's callbacks.NothingToTrain's."""
    import shlex

    step = checkpoint_step(os.path.basename(checkpoint.rstrip("/"))) or 0
    try:
        step = int(json.loads(state_json).get("global_step") or step)
    except (ValueError, TypeError, AttributeError):
        pass
    if not 0 < spec.max_steps < step:
        return None
    return (
        f"{spec.output} holds checkpoint-{step}, past this run's end at max_steps={spec.max_steps}: nothing would be "
        f"trained, and its final model would be step {step}'s. To train on, give a max_steps over {step} (-o "
        f"max_steps={step + spec.max_steps} trains {spec.max_steps} more); to use step {step}'s weights as they are: "
        f"ftctl chat {shlex.quote(checkpoint)} (or eval, merge)."
    )


def finished(state_json: str, spec, changed: Changes | None) -> str | None:
    """The line that refuses to resume a checkpoint (its ``trainer_state.json`` text) of a finished run (its final
    model saved, final_saved) that has trained every step of this run: transformers' Trainer would take one step
    past the end, at the schedule's last rate, and write the final model again. None where steps are left, or
    where an epoch's steps may have changed (the data or the batch of an epoch-based run: the Trainer counts
    them). A run stopped between its last checkpoint and its final model is not finished: it resumes, takes no step
    (sft_trainer.SFTTrainer._run_epoch) and writes the final model."""
    try:
        state = json.loads(state_json)
        step, total = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    except (ValueError, TypeError, AttributeError):
        return None
    if spec.max_steps > 0:
        target, more = spec.max_steps, "-o max_steps"
    elif changed and any(k in DATA or k == "num_train_epochs" for k in changed.changed):
        return None
    else:
        target, more = total, "-o num_train_epochs"
    if not target or step < target:
        return None
    # with other settings it is not "this run" (explore36): they are named, as the resume's warning names them; a
    # length of its own (max_steps, num_train_epochs) is this run's, what "raise -o max_steps" changes
    other = {
        k: v for k, v in (changed.changed if changed else {}).items() if k not in ("max_steps", "num_train_epochs")
    }
    each = ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in other.items())
    run = f"trained to step {step} of {target} (checkpoint-{step})"
    run = f"a run {run} with other settings ({each})" if each else f"this run {run}"
    return (
        f"{spec.output} holds {run}: nothing is left to train. To train it further, raise {more}; to start another "
        "run, give another --output."
    )
