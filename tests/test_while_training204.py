"""A local run that trains past an earlier final adapter (a relaunch extending max_steps): `ftctl status RUN` says it
is training, with its step (it said "complete": the final adapter was looked at before the trainer's lock), and
`ftctl chat RUN` / `ftctl eval RUN` say in one line, before they load, that the final adapter is the earlier run's and
which command loads its newest committed checkpoint; a run with no final adapter yet loads that checkpoint, said once.

The run, its relaunch and the trainer's lock are test_merge_while_training199's (its ``finished`` run, a copy of it
with checkpoint-4 being written, ``training`` holding the lock as the trainer does)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests import test_merge_while_training199 as merge199
from tests.s3_fixtures import s3_bucket, s3_env  # noqa: F401 - fixtures

finished, run, training = merge199.finished, merge199.run, merge199.training  # its fixtures and lock, shared


def _ftctl(*args):
    from ftctl.cli import main

    return CliRunner().invoke(main, [*map(str, args)])


def test_status_of_a_relaunch_past_an_earlier_final_adapter_is_training(run):
    spec = json.loads((run / "spec.json").read_text())
    spec["spec"]["output_dir"] = str(run)  # the copy's own, as a relaunch's spec.json names it (status reads it)
    (run / "spec.json").write_text(json.dumps(spec))
    (run / ".ftctl").mkdir(exist_ok=True)
    (run / ".ftctl" / "status").write_text("complete\n")  # the earlier run's word, as its launcher left it
    with training(run):
        said = _ftctl("status", run, "--exit-code")
    assert said.exit_code == 0, said.output
    assert "local run, training (pid " in said.output and "complete" not in said.output, said.output
    assert "step 3/4" in said.output, said.output
    done = _ftctl("status", run, "--exit-code")  # its trainer gone: the final adapter there is the run's end
    assert done.exit_code == 0 and "local run, complete" in done.output, done.output


def test_chat_says_it_loads_the_earlier_final_adapter_of_a_run_training_now(run):
    with training(run):
        said = _ftctl("chat", run, "-p", "hi", "--max-new-tokens", "1")
    assert said.exit_code == 0, said.output
    notes = [line for line in said.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {run} is still training (step 3/4; pid " + notes[0].split("pid ", 1)[1].split(")")[0] + "): the final "
        "adapter in it is an earlier run's until this run saves its own as it ends; loading it "
        f"(`ftctl chat {run / 'checkpoint-2'}` for its newest committed checkpoint)"
    ], said.stderr
    assert said.stderr.index("note:") < said.stderr.index("loading the LoRA adapter"), said.stderr
    quiet = _ftctl("chat", run, "-p", "hi", "--max-new-tokens", "1")  # nothing trains there: nothing to say
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr, quiet.output


def test_eval_of_a_run_training_with_no_final_adapter_yet_loads_its_newest_committed_checkpoint(run, tiny_data):
    from ftctl.runpaths import FINAL_MARKS

    for mark in FINAL_MARKS:
        (run / mark).unlink(missing_ok=True)
    with training(run):
        said = _ftctl("eval", run, "--data", tiny_data)
    assert said.exit_code == 0, said.output
    assert (
        "is still training (step 3/4; pid " in said.stderr
        and f"): it has no final adapter yet; loading its newest committed checkpoint, {run / 'checkpoint-2'}\n"
        in said.stderr
    ), said.stderr
    assert f"loading the LoRA adapter {run / 'checkpoint-2'} on " in said.stderr, said.stderr
    assert "has no final adapter yet: loading its newest checkpoint" not in said.output  # said once, in the note
    assert "loss" in said.stdout, said.stdout


def test_merge_and_chat_share_the_sentence_naming_the_runs_state(run):
    from ftctl.trainer import trained

    with training(run):
        state = trained.unfinished(str(run))
        merged = _ftctl("merge", run)
    assert state is not None and state.final and state.newest == "checkpoint-2"
    assert merged.exit_code == 2 and merged.output.startswith(f"error: {state.said}; merge its newest"), merged.output
    assert trained.unfinished(str(run)) is None


def test_chat_of_an_object_store_run_whose_trainer_holds_its_lease(finished, s3_bucket):  # noqa: F811 - fixture
    from ftctl import lease, storage

    uri = f"{s3_bucket}/run"
    for rel in storage.local_files(str(finished)):
        storage.put_file(str(finished / rel), storage.join(uri, *rel.split("/")))
    holder = lease.Holder(uri, None, "r")
    holder.take()
    try:
        said = _ftctl("chat", uri, "-p", "hi", "--max-new-tokens", "1")
    finally:
        holder.close()
    assert said.exit_code == 0, said.output
    assert said.stderr.startswith(f"note: {uri} is still training ("), said.stderr
    assert (
        f"earlier run's until this run saves its own as it ends; loading it (`ftctl chat {uri}/checkpoint-2` for"
        in (said.stderr)
    )
