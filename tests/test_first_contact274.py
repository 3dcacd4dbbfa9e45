"""First contact of a TRL / PEFT user (helper 274, /work/notes/explore60-first.md): what the first mistakes are
answered with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ftctl.errors import did_you_mean

ROOT = Path(__file__).resolve().parents[1]


def _ftctl(tmp_path, *args):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "FTCTL_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-m", "ftctl.cli", *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )


# ------------------------------------------------------------------------------------------ a key's near names
def test_a_batch_size_key_missing_its_train_word_is_offered_both_per_device_keys(tmp_path):
    """finding 3: `-o per_device_batch_size=2` was "Did you mean 'per_device_eval_batch_size'?" alone (closer by
    spelling), never the training's key the user meant; `-o eval_batch_size=2` was "'global_batch_size'?"."""
    r = _ftctl(tmp_path, "plan", "--gpus", "cpu", "-o", "per_device_batch_size=2")
    assert r.returncode == 2, r.stderr
    assert "Did you mean 'per_device_eval_batch_size' or 'per_device_train_batch_size'?" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _ftctl(tmp_path, "plan", "--gpus", "cpu", "-o", "eval_batch_size=2")
    assert r.returncode == 2
    assert "Did you mean 'per_device_eval_batch_size'?" in r.stderr, r.stderr


def test_did_you_mean_keeps_its_one_closest_answer_for_plain_typos():
    assert did_you_mean("warmup_step", ["warmup_steps", "warmup_ratio", "max_steps"]) == " Did you mean 'warmup_steps'?"
    assert did_you_mean("learning_rte", ["learning_rate", "lr_scheduler_type"]) == " Did you mean 'learning_rate'?"
    assert did_you_mean("slrum", ["slurm", "sky", "docker", "local"]) == " Did you mean 'slurm'?"
    assert did_you_mean("xyz", ["slurm", "sky"]) == ""
    # a word whose parts several keys hold: those that hold them all
    three = ["global_batch_size", "per_device_train_batch_size", "per_device_eval_batch_size", "max_steps"]
    assert did_you_mean("num_proc", ["dataset_num_proc", "num_train_epochs"]) == " Did you mean 'dataset_num_proc'?"
    assert "per_device_train_batch_size" in did_you_mean("device_batch_size", three)


# ------------------------------------------------------------------------------------------ the README's walk-through
def test_the_readme_walk_through_trains_what_a_minute_on_two_cores_holds(tmp_path):
    """finding 5: "To walk it through on this machine first, in about a minute: ... -o max_steps=3" trained 3 steps
    of the default 32 conversations (QLoRA on CPU): 2 min 51 s on this 2-core machine; 3 steps of 4 took 27 s."""
    import re

    text = (ROOT / "README.md").read_text()
    bullet = text[text.index("- To walk it through on this machine first") :].split("\n- ")[0].split("\n\n")[0]
    assert "in about a minute" in bullet
    keys = re.findall(r"-o (\w+=\S+?)(?=`| )", bullet)
    assert any(k.startswith("max_steps=") for k in keys), bullet
    args = [a for k in keys for a in ("-o", k)]
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    r = _ftctl(tmp_path, "plan", "--gpus", "cpu", "--method", "qlora", "--model", model, *args)
    assert r.returncode == 0, r.stderr
    per_step = int(re.search(r"= (\d+) sequences", r.stdout)[1])
    steps = int(dict(k.split("=") for k in keys)["max_steps"])
    assert per_step * steps <= 16, (per_step, steps)  # ~2.2 s a conversation on 2 cores, beside the start's ~20 s


# ------------------------------------------------------------------------------------------ status / logs, no JOB
def test_status_and_logs_without_a_job_name_the_newest_launched_from_here(tmp_path, monkeypatch):
    """finding 7: `ftctl status` (or `logs`) right after a launch said to look the job's id up in `ftctl jobs`; the
    newest job launched from here is named, as a command to copy. `cancel` names none (not a command to copy)."""
    from ftctl.backend import JobRef, record_job

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    for name in ("older run", "my run"):
        run = tmp_path / "runs" / name
        record_job(JobRef("local", str(run), str(run), name, str(run)))
    newest = f"'{tmp_path}/runs/my run'"
    r = _ftctl(tmp_path, "status")
    assert r.returncode == 2 and "`ftctl jobs` lists the jobs launched from here" in r.stderr, r.stderr
    assert f"The newest: `ftctl status {newest}`." in r.stderr, r.stderr
    r = _ftctl(tmp_path, "logs")
    assert r.returncode == 2 and f"The newest: `ftctl logs {newest}`." in r.stderr, r.stderr
    r = _ftctl(tmp_path, "cancel")
    assert r.returncode == 2 and "The newest" not in r.stderr, r.stderr
    (tmp_path / "home" / "jobs.jsonl").unlink()  # none launched from here: nothing named
    r = _ftctl(tmp_path, "status")
    assert r.returncode == 2 and "The newest" not in r.stderr and "`ftctl jobs` lists" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ a local run's terminal
TRAINER_LINES = """
import logging, sys
from ftctl.trainer.__main__ import log_to_stderr
log_to_stderr(int(sys.argv[1]))
print("step 3/8  loss 0.5770", flush=True)
logging.getLogger("ftctl.checkpoints.resume").warning("resuming from /r/checkpoint-2 (local, verified)")
logging.getLogger("transformers.trainer").warning("a library's record")
"""


def test_a_local_runs_terminal_shows_rank_0s_records_as_their_message_and_its_log_keeps_them_whole(tmp_path, capfd):
    """finding 6: a relaunch's "resuming from .../checkpoint-2 (local, verified)" (and the quarantine, the trainable
    parameters, a stop) came as "2026-12-07 07:26:50,560 +0000 [rank 0] ftctl.checkpoints.resume: ..." among the
    plain lines of a local run's terminal. train.log keeps the whole line (`ftctl status` reads its time back)."""
    from ftctl.local.backend import run_filtered

    script = tmp_path / "trainer_lines.py"
    script.write_text(TRAINER_LINES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rank in (0, 1):
        log = tmp_path / f"train{rank}.log"
        assert run_filtered([sys.executable, str(script), str(rank)], env, tmp_path / "held", log=log) == 0
        shown = capfd.readouterr().err.splitlines()
        kept = log.read_text()
        assert f"[rank {rank}] ftctl.checkpoints.resume: resuming from /r/checkpoint-2" in kept, kept
        if rank == 0:
            assert "resuming from /r/checkpoint-2 (local, verified)" in shown, shown
        else:  # another rank's (a multi-GPU run here) says which
            assert any(
                s.endswith("[rank 1] ftctl.checkpoints.resume: resuming from /r/checkpoint-2 (local, verified)")
                for s in shown
            ), shown
        assert any(s.endswith(f"[rank {rank}] transformers.trainer: a library's record") for s in shown), shown


def test_the_readme_names_the_install_alone(tmp_path):
    """finding 2: the README's two set-up commands were the demo and the whole suite (~24 min on 2 cores, Slurm and
    podman from apt); a user after the install alone was not told of scripts/setup.sh, which both run first."""
    text = (ROOT / "README.md").read_text()
    start = text[text.index("## Start here") : text.index("## Using it")]
    assert "`bash scripts/setup.sh` does that alone" in start, start
    for script in ("demo.sh", "test.sh"):
        assert "scripts/setup.sh" in (ROOT / "scripts" / script).read_text()
