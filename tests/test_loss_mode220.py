"""Which tokens carry the loss is said where a run is looked at before and as it spends GPU time (helper 220): a
TRL user gets the assistant turns only of conversations (TRL's assistant_only_loss), the completion only of
prompt-completion rows (TRL's completion_only_loss), every token of plain text; and with assistant_only_loss: false
every token, a prompt-completion row's prompt too, where TRL still trains its completion only. Before, `ftctl data
check` said it in a note and `ftctl plan`, `launch --dry-run` and the trainer's start never did: the dry run said
"14 tokens, 14 trained" alone."""

from __future__ import annotations

import json
import re

import pytest

from ftctl import preflight
from ftctl.plan import make_plan
from ftctl.spec import build
from tests.trainer_fixtures import make_run

ROWS = {
    "pc": [{"prompt": "The capital of France is", "completion": " Paris."}] * 3,
    "text": [{"text": "Paris is the capital of France."}] * 3,
}
EVERY = "every token, the prompts' too (assistant_only_loss: false)"
TRL_PC = "; TRL trains a prompt-completion row's completion only (its completion_only_loss)"


def _spec(tiny_model_dir, data, tmp_path, **over):
    values = {"model_name_or_path": str(tiny_model_dir), "data_path": str(data), "gpus": "cpu"}
    return build({**values, "output_dir": str(tmp_path / "out"), **over})


def _rows(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[kind]))
    return path


@pytest.mark.parametrize(
    ("kind", "every", "said"),
    [
        ("conversations", False, "the assistant turns only (assistant_only_loss)"),
        ("conversations", True, EVERY),
        ("pc", False, "the completion only (completion_only_loss)"),
        ("pc", True, EVERY + TRL_PC),
        ("text", False, "every token (plain text)"),
    ],
)
def test_the_dry_run_says_which_tokens_of_its_rows_the_loss_is_on(
    tiny_model_dir, tiny_data, tmp_path, kind, every, said
):
    data = tiny_data if kind == "conversations" else _rows(tmp_path, kind)
    spec = _spec(tiny_model_dir, data, tmp_path, assistant_only_loss=not every)
    (note,) = preflight.check_tokenized(spec, dry_run=True)
    assert note.level == preflight.NOTE and " trained); loss: " in note.what, note.what
    # then the rows that repeat an earlier row, where some do (these rows: each three times; the demo's, some)
    repeats = r"; [\d,]+ row\(s\) repeat an earlier row token for token \([\d,]+ distinct\): each trains as often as it appears"
    assert re.search(rf" trained\); loss: {re.escape(said)}({repeats})?$", note.what), note.what
    if kind != "conversations":
        assert note.what.endswith(
            f"{said}; 2 row(s) repeat an earlier row token for token (1 distinct): each trains as often as it appears"
        )


def test_the_plan_says_what_the_setting_trains_of_each_kind_of_row(tiny_model_dir, tiny_data, tmp_path):
    """`ftctl plan` reads no data: its loss row says what assistant_only_loss decides for each kind of row."""

    def row(spec):
        return next(line for line in make_plan(spec).table(spec).splitlines() if line.startswith("loss "))

    spec = _spec(tiny_model_dir, tiny_data, tmp_path)
    assert row(spec).split(None, 1)[1] == (
        "a conversation's assistant turns only (assistant_only_loss), a prompt-completion row's completion only "
        "(completion_only_loss), plain text's every token"
    )
    assert row(_spec(tiny_model_dir, tiny_data, tmp_path, assistant_only_loss=False)).endswith(EVERY + TRL_PC)


def test_the_trainer_says_the_loss_of_its_rows_as_it_starts(tiny_model_dir, tiny_data, tmp_path):
    """The line after the trainer's start line, and its start record in metrics.jsonl (loss_on); mixed rows by kind."""
    from ftctl.runpaths import METRICS_FILE
    from ftctl.trainer.run import setup

    mixed = _rows(tmp_path, "text")
    spec, plan = make_run(tiny_model_dir, f"{tiny_data},{mixed}", tmp_path / "out", max_steps=1)
    said: list[str] = []
    run = setup(spec, plan, echo=said.append)
    run.preemption.uninstall()  # nothing trains: the test's own signal handlers back
    loss = "the assistant turns only (assistant_only_loss) of 48 conversations; every token of 3 plain-text rows"
    start = next(i for i, line in enumerate(said) if line.startswith("attention: "))
    assert said[start + 1] == f"loss: {loss}", said
    records = [json.loads(line) for line in (tmp_path / "out" / METRICS_FILE).read_text().splitlines()]
    assert [r["loss_on"] for r in records if r.get("event") == "start"] == [loss]
