"""A second `ftctl demo` replaces its earlier run in runs/ftctl-demo and nothing else there: what the run wrote goes
(its checkpoints, final adapter, records, an interrupted run's leftovers), the user's own files stay and are named."""

from __future__ import annotations

import fcntl
from dataclasses import replace

import pytest

from ftctl.errors import FtctlError

# what a finished `ftctl demo` leaves (seen: transformers 5.25, PEFT 0.21), and what one interrupted leaves: its
# state and records, a checkpoint cut short mid-save, a rotation's and a write_whole's leftovers
FINISHED = [
    ".ftctl/train.lock",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "checkpoint-30/adapter_model.safetensors",
    "checkpoint-30/ftctl-manifest.json",
    "checkpoint-30/optimizer.pt",
    "metrics.jsonl",
    "spec.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
]
INTERRUPTED = [
    ".ftctl/train.lock",
    ".ftctl/data-cache/da58aa28/data-00000-of-00001.arrow",
    ".ftctl/final/adapter_model.safetensors",
    ".ftctl-deleting/checkpoint-20-1a2b3c4d/optimizer.pt",
    ".README.md.tmp",
    "checkpoint-30/adapter_model.safetensors",
    "metrics.jsonl",
    "spec.json",
]
# a user's: notes, an exported GGUF, a copied folder, an eval's output, a checkpoint's backup, a merge of the run
USERS = [
    "notes.txt",
    "demo-q8_0.gguf",
    "my-copy/adapter_model.safetensors",
    "eval-held-out.jsonl",
    "checkpoint-3.bak/adapter_model.safetensors",
    "merged/model.safetensors",
]


def _earlier_demo(run, names):
    from ftctl.plan import dump_run, make_plan
    from ftctl.runpaths import MERGE_RECORD, SPEC_FILE
    from ftctl.trainer.demo import demo_spec

    for name in names:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(f"{name}'s bytes")
    spec = demo_spec(str(run))
    (run / SPEC_FILE).write_text(dump_run(spec, make_plan(spec, "cpu")))
    if (run / "merged").is_dir():
        (run / "merged" / MERGE_RECORD).write_text("{}")


def _tree(run) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.parametrize("earlier", [FINISHED, INTERRUPTED], ids=["finished", "interrupted"])
def test_a_second_demo_removes_its_earlier_run_and_keeps_the_users_files(tmp_path, earlier):
    """Its earlier run, finished or stopped mid-training (Ctrl-C: a partial checkpoint, the final model's staging, a
    temp file), is gone; the user's files are there as they were, named in the line the demo prints. It removed them
    all but the merged model."""
    from ftctl.runpaths import MERGE_RECORD
    from ftctl.trainer.demo import earlier_demo, replace_earlier_demo, replaced_line

    run = tmp_path / "runs" / "ftctl-demo"
    _earlier_demo(run, [*earlier, *USERS])
    assert earlier_demo(str(run))
    kept = replace_earlier_demo(str(run))
    assert kept == sorted(name.split("/")[0] for name in USERS)
    assert _tree(run) == sorted([*USERS, f"merged/{MERGE_RECORD}"])
    assert all((run / name).read_text() == f"{name}'s bytes" for name in USERS)
    assert not earlier_demo(str(run))  # a replace cut short: spec.json goes last
    assert replaced_line(str(run), kept) == (
        f"(replacing the earlier demo run in {run}; kept checkpoint-3.bak/, demo-q8_0.gguf, eval-held-out.jsonl, "
        "merged/ (merged from it), my-copy/, notes.txt: not the run's, yours to remove)"
    )


def test_what_the_demo_says_as_it_replaces_its_run(tmp_path):
    from ftctl.trainer.demo import replace_earlier_demo, replaced_line

    run = tmp_path / "demo"
    _earlier_demo(run, FINISHED)
    assert replaced_line(str(run), replace_earlier_demo(str(run))) == f"(replacing the earlier demo run in {run})"
    assert list(run.iterdir()) == []
    kept = [f"notes-{n}.txt" for n in range(9)]
    assert replaced_line(str(run), kept).endswith("notes-5.txt and 3 more: not the run's, yours to remove)")


def test_a_symlink_named_as_the_runs_is_removed_not_followed(tmp_path):
    from ftctl.trainer.demo import replace_earlier_demo

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "checkpoint-30").mkdir(parents=True)
    (elsewhere / "checkpoint-30" / "optimizer.pt").write_text("x")
    run = tmp_path / "demo"
    _earlier_demo(run, FINISHED[1:4])
    (run / "checkpoint-30").symlink_to(elsewhere / "checkpoint-30")
    assert replace_earlier_demo(str(run)) == []
    assert (elsewhere / "checkpoint-30" / "optimizer.pt").is_file() and list(run.iterdir()) == []


def test_a_demo_still_training_there_is_not_replaced(tmp_path):
    """A demo in another terminal holds the run's train lock: its files stay, the second one says why it stops."""
    from ftctl.runpaths import RunPaths
    from ftctl.trainer.demo import replace_earlier_demo

    run = tmp_path / "demo"
    _earlier_demo(run, FINISHED)
    with open(RunPaths(run).train_lock, "w") as lock:
        lock.write("pid 12 on host since then\n")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(FtctlError, match=r"is still training \(.*pid 12 on host since then\): an earlier `ftctl"):
            replace_earlier_demo(str(run))
    assert _tree(run) == sorted(FINISHED)


def test_the_demo_replaces_only_its_own_earlier_run(tmp_path):
    from ftctl.plan import dump_run, make_plan
    from ftctl.runpaths import SPEC_FILE
    from ftctl.trainer.demo import demo_spec, earlier_demo

    spec = demo_spec(str(tmp_path / "demo"))
    (tmp_path / "demo").mkdir()
    assert not earlier_demo(spec.output)
    (tmp_path / "demo" / SPEC_FILE).write_text(dump_run(spec, make_plan(spec, "cpu")))
    assert earlier_demo(spec.output)
    other = replace(spec, run_name="mine")
    (tmp_path / "demo" / SPEC_FILE).write_text(dump_run(other, make_plan(other, "cpu")))
    assert not earlier_demo(spec.output)


def test_the_demo_keeps_a_model_merged_from_its_earlier_run(tmp_path):
    """`ftctl merge runs/ftctl-demo` (RUN/merged) is the user's: a second `ftctl demo` removed it with its run; a merge
    written under a name of the run's is kept too."""
    from ftctl.runpaths import MERGE_RECORD
    from ftctl.trainer.demo import replace_earlier_demo

    run = tmp_path / "demo"
    for name in ("checkpoint-3/adapter_model.safetensors", "merged/model.safetensors", "runs/model.safetensors"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    (run / "merged" / MERGE_RECORD).write_text("{}")
    (run / "runs" / MERGE_RECORD).write_text("{}")
    (run / "metrics.jsonl").write_text("{}")
    assert replace_earlier_demo(str(run)) == ["merged", "runs"]
    assert sorted(p.name for p in run.iterdir()) == ["merged", "runs"]
    assert (run / "merged" / "model.safetensors").is_file()


def test_all_a_real_run_writes_at_the_top_of_its_output_is_the_runs(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """The names run_wrote knows are those the trainer, PEFT and transformers write: every one a LoRA run of the tiny
    model leaves (a step, its checkpoint, the final adapter, its tokenizer and card) is the run's."""
    from ftctl.trainer.demo import run_wrote
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    out = tmp_path / "run"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=1, save_steps=1)
    assert train(spec, plan, echo=lambda *_: None).status == "complete"
    names = sorted(p.name for p in out.iterdir())
    assert "adapter_model.safetensors" in names and "checkpoint-1" in names, names
    assert [name for name in names if not run_wrote(name)] == []


def test_a_replace_cut_short_is_finished_by_the_next_demo(tmp_path, monkeypatch):
    """Ctrl-C while the demo removes its earlier run: spec.json, which says the directory is the demo's, goes last,
    so the next demo still knows the rest is its own (removed in name order, training_args.bin outlived it)."""
    from pathlib import Path

    from ftctl.trainer.demo import earlier_demo, replace_earlier_demo

    run = tmp_path / "demo"
    _earlier_demo(run, [*FINISHED, *USERS])
    unlink = Path.unlink

    def interrupted(path, *args, **kwargs):
        if path.name == "training_args.bin":
            raise KeyboardInterrupt
        unlink(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", interrupted)
        with pytest.raises(KeyboardInterrupt):
            replace_earlier_demo(str(run))
    assert earlier_demo(str(run))
    replace_earlier_demo(str(run))
    assert sorted(p.name for p in run.iterdir()) == sorted({name.split("/")[0] for name in USERS})
