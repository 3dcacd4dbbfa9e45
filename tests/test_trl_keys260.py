"""Helper 260: TRL's two loss keys, transformers' constant schedule with a warm-up, and the rendezvous port.

- completion_only_loss and assistant_only_loss are TRL's keys for two kinds of rows; ftctl's assistant_only_loss is
  both. A run file that writes them the way TRL reads them trains as it did there, or says in one note what differs.
- lr_scheduler_type: constant is transformers' constant: no warm-up. Asked for one too, it is refused, naming
  constant_with_warmup (transformers ignores the warm-up without a word).
- A job's rendezvous port is never rdzv_port itself (29500: torchrun's, accelerate's and DeepSpeed's default).
"""

from __future__ import annotations

import subprocess

import pytest

from ftctl.launch import job_port_line
from tests.render_fixtures import make_spec


def _port(job_id: int) -> int:
    spec = make_spec([], backend="slurm", gpus="2x8xH100", model_name_or_path="meta-llama/Llama-3.1-8B")
    line = job_port_line(spec, "SLURM_JOB_ID", "a Slurm job")
    done = subprocess.run(
        ["bash", "-c", f'{line}\necho "$RDZV_PORT"'], capture_output=True, text=True, env={"SLURM_JOB_ID": str(job_id)}
    )
    return int(done.stdout)


def test_a_job_numbered_like_000_does_not_listen_on_torchruns_default_port():
    """RDZV_PORT was 29500 + id % 1000: job 123000 listened on 29500, where a hand-started torchrun, accelerate or
    DeepSpeed launch on the same node listens by default ("address already in use")."""
    assert _port(123000) == 29501
    assert _port(123999) == 30500
    assert {_port(n) for n in (4242, 5242)} == {29743}  # ids 1000 apart share a port (their rendezvous ids differ)


# --- G10: TRL's completion_only_loss beside assistant_only_loss


def _built(given: dict, overrides=()):
    from ftctl.spec import build

    notes: list[str] = []
    spec = build({"data_path": "a.jsonl", **given}, None, list(overrides), notes=notes)
    return spec.assistant_only_loss, [n for n in notes if n.startswith(("completion_only_loss", "assistant_only_loss"))]


def test_trls_two_loss_switches_written_out_are_read_not_refused():
    """TRL's default written out (completion_only_loss: true, assistant_only_loss: false: completions of
    prompt-completion rows, every token of conversations) was refused "keep one"; so were the two agreeing. Agreeing,
    they are ftctl's one switch exactly; differing, assistant_only_loss decides and one note says which rows train
    otherwise than in TRL, and how to have TRL's."""
    assert _built({"completion_only_loss": True, "assistant_only_loss": True}) == (True, [])
    assert _built({"completion_only_loss": False, "assistant_only_loss": False}) == (False, [])
    every, notes = _built({"completion_only_loss": True, "assistant_only_loss": False})
    assert every is False and notes == [
        "completion_only_loss: true (run file) and assistant_only_loss: false (run file): ftctl has one switch for "
        "both, assistant_only_loss: false here: every token of every row trains, a prompt-completion row's prompt "
        "too, where TRL trains its completion only; for that, leave assistant_only_loss out (a conversation then "
        "trains its assistant turns only)"
    ]
    answers, notes = _built({"completion_only_loss": False}, ["assistant_only_loss=true"])
    assert answers is True and len(notes) == 1
    assert "(run file) and assistant_only_loss: true (-o)" in notes[0]
    assert "a prompt-completion row trains its completion only, where TRL trains it whole" in notes[0]


def test_completion_only_loss_alone_means_what_it_means_in_trl():
    """false: every token of every row (TRL trains both kinds whole then); true: a prompt-completion row's completion,
    and conversations keep ftctl's assistant turns only: said (the TRL run file's note was not printed, the key being
    read as assistant_only_loss given), from a run file or -o alike; null is TRL's default, ftctl's."""
    assert _built({"completion_only_loss": False}) == (False, [])
    answers, notes = _built({"completion_only_loss": True})  # a run file in TRL's vocabulary: its note
    assert answers is True and len(notes) == 1, notes
    assert notes[0].startswith("assistant_only_loss true, ftctl's default, in a run file in TRL's vocabulary")
    assert "TRL trains a conversation's every token" in notes[0]
    answers, notes = _built({}, ["completion_only_loss=true"])
    assert answers is True and notes == [
        "completion_only_loss: true (-o): a prompt-completion row trains its completion only, as in TRL; a "
        "conversation its assistant turns only, ftctl's default, where TRL trains its every token (its "
        "assistant_only_loss false): -o assistant_only_loss=false for that (a prompt-completion row's prompt then "
        "trains too)"
    ]
    assert _built({"completion_only_loss": None}) == (True, [])
    from ftctl.errors import FtctlError
    from ftctl.spec import build

    with pytest.raises(FtctlError, match=r"'completion_only_loss' \(run file\): expects true or false"):
        build({"data_path": "a.jsonl", "completion_only_loss": "sometimes"})
