"""The lowest held-out loss's checkpoint across a stop and a resume on a fresh node: the store keeps it, the resumed
run's trainer_state names it, and the run's end says which step the final model is and which checkpoint holds the
lowest."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from tests.test_evaluation import eval_data  # noqa: F401 (a fixture, taken by name below)
from tests.trainer_fixtures import FSDP_ON_GLOO, make_run


def test_a_resume_on_a_fresh_node_keeps_the_lowest_checkpoint_in_the_store(
    tiny_model_dir,
    tiny_data,
    request,
    tmp_path,
    one_thread,
    s3_bucket,
    monkeypatch,
    caplog,
):
    """save_total_limit=1, stopped after step 4 (the lowest at step 3), resumed to step 5 on a node whose staging
    is empty and elsewhere: only checkpoint-4 is downloaded, and transformers dropped the best checkpoint's name
    (a path of the first node), so the store deleted checkpoint-3 at the next checkpoint while the log went on
    saying "lowest ... at step 3". The relaunch asks for load_best_model_at_end: its final model, here and in the
    store, is checkpoint-3's adapter (downloaded from the store: the fresh node had only checkpoint-4), said in the
    end line, metrics.jsonl and the model card (it was refused as a key)."""
    from safetensors.torch import load_file

    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints
    from ftctl.trainer.run import train

    uri = f"{s3_bucket}/runs/best"
    held_out = request.getfixturevalue("eval_data")
    first, second = tmp_path / "node-a", tmp_path / "node-b"
    values = dict(save_steps=1, save_total_limit=1, eval_data_path=str(held_out), learning_rate=0.2, resume="auto",
                  keep_staging=True)  # fmt: skip
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(first))  # where an object-store output is staged
    caplog.set_level(logging.INFO, logger="ftctl.trainer.sft_trainer")
    assert train(*make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=4, **values)).status == "complete"
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(first / "metrics.jsonl")) if "eval_loss" in r}
    lowest = min(evals, key=evals.get)
    assert lowest < 4, evals  # the case this is about: the lowest is not the newest
    assert (
        f"the final model is step 4's; the lowest held-out loss, {evals[lowest]:.4f}, was step {lowest}'s: "
        f"{uri}/checkpoint-{lowest} holds it"
    ) in caplog.text
    shutil.rmtree(first)  # the first node is gone
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(second))
    caplog.clear()
    lines = []
    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=5, load_best_model_at_end=True, **values)
    assert train(spec, plan, echo=lines.append).status == "complete"
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(second / "metrics.jsonl")) if "eval_loss" in r}
    assert min(evals, key=evals.get) == lowest, evals  # no lower one after the resume
    assert [c.step for c in list_checkpoints(uri) if c.complete] == [lowest, 5]
    state = json.loads((second / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(second / f"checkpoint-{lowest}")
    assert "does not exist anymore" not in caplog.text
    assert "the final model is step" not in caplog.text  # the end line says it (the lowest's weights)
    assert lines[-1] == (
        f"the final model holds step {lowest}'s weights (loaded from checkpoint-{lowest}): the lowest held-out loss, "
        f"{evals[lowest]:.4f}, step 5's {evals[5]:.4f} (load_best_model_at_end)"
    )
    name = "adapter_model.safetensors"
    best, last = load_file(second / f"checkpoint-{lowest}" / name), load_file(second / "checkpoint-5" / name)
    storage.get_file(storage.join(uri, name), str(tmp_path / "stored.safetensors"))
    for final in (load_file(second / name), load_file(tmp_path / "stored.safetensors")):  # here and in the store
        assert final.keys() == best.keys() and all(final[k].equal(best[k]) for k in best)
        assert any(not final[k].equal(last[k]) for k in last)
    records = [r for r in map(json.loads, open(second / "metrics.jsonl")) if r.get("event") == "final"]
    assert [(r["step"], r["weights_step"], r["checkpoint"]) for r in records] == [(5, lowest, f"checkpoint-{lowest}")]
    assert (
        f"The final model holds step {lowest}'s weights, not the last step's (5)" in (second / "README.md").read_text()
    )


def test_early_stopping_counts_on_across_a_resume(tiny_model_dir, tiny_data, request, tmp_path, one_thread, caplog):
    """patience 3, stopped at step 4 after two evaluations above the lowest (step 2): the resumed run stops at the
    next one above it, step 5. transformers restores no callback's state by default, so the count started again
    from 0 and this run went on to step 11. Evaluated every step, a checkpoint every 2: said at the start."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    values = dict(
        eval_steps=1,
        save_steps=2,
        save_total_limit=1,
        eval_data_path=str(request.getfixturevalue("eval_data")),
        learning_rate=0.05,
        lr_scheduler_type="constant",
        early_stopping_patience=3,
        resume="auto",
    )
    caplog.set_level(logging.INFO, logger="ftctl.trainer.sft_trainer")
    assert train(*make_run(tiny_model_dir, tiny_data, out, max_steps=4, **values)).global_step == 4
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    assert min(evals, key=evals.get) == 2 and evals[4] > evals[3] > evals[2], evals  # two above the lowest
    lines = []
    result = train(*make_run(tiny_model_dir, tiny_data, out, max_steps=12, **values), echo=lines.append)
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    assert result.global_step == 5 and evals[5] > evals[2], evals
    assert lines[-1] == (
        f"stopped at step 5 of 12: 3 evaluations in a row found no held-out loss below {evals[2]:.4f} (step 2); "
        "checkpoint-2 holds it"
    )
    assert (
        f"early stopping counts on from step 4: 2 evaluations in a row found no held-out loss below {evals[2]:.4f}; "
        "it stops at 3"
    ) in caplog.text
    assert (
        "the held-out loss is measured every step and a checkpoint saved every 2 steps: a lowest loss found between "
        "checkpoints is kept by none (the log still names its step); -o eval_steps=2 measures it at checkpoints"
    ) in caplog.text


def test_transformers_best_model_keys_say_what_ftctl_does():
    """load_best_model_at_end, metric_for_best_model and greater_is_better were 'Unknown key' (a TRL recipe's
    lines): what ftctl does agrees, anything else is refused saying which checkpoint is the best and where it is;
    evaluations between checkpoints are said by the plan."""
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.spec import build

    held = {"eval_split": 0.1, "gpus": "1xA100", "model_params": "1b"}
    agreed = {"load_best_model_at_end": False, "metric_for_best_model": "eval_loss", "greater_is_better": False}
    assert build({**held, **agreed}).evaluates
    with pytest.raises(FtctlError) as e:
        build({**held, "load_best_model_at_end": True, "metric_for_best_model": "accuracy"})
    assert "load_best_model_at_end" not in str(e.value)  # only the metric is refused
    assert (
        "'metric_for_best_model' (run file) is not set by hand here: the best checkpoint is the lowest held-out"
        in str(e.value)
    )
    assert build({**held, **agreed, "load_best_model_at_end": True}).load_best_model_at_end
    assert (
        "eval_steps=50 is not a multiple of save_steps=500: a lowest held-out loss found between checkpoints is "
        "kept by none; -o eval_steps=500 measures it at checkpoints"
        in make_plan(build({**held, "eval_steps": 50, "save_steps": 500})).notes
    )
    assert not any("multiple" in n for n in make_plan(build({**held, "eval_steps": 1000, "save_steps": 500})).notes)


@pytest.mark.parametrize(
    "given, said",
    [
        (
            {"eval_split": 0},
            "load_best_model_at_end: true loads the checkpoint with the lowest held-out loss at the end: give held-out "
            "data (--eval-data FILE, or -o eval_split=0.05), or leave it out (the final model is then the last "
            "step's).",
        ),
        (
            {"eval_steps": 50, "save_steps": 100},  # transformers takes it, and keeps none of step 50's lowest
            "load_best_model_at_end: true needs a checkpoint at every evaluation (the lowest held-out loss's weights "
            "are a checkpoint's): eval_steps=50 is not a multiple of save_steps=100; -o save_steps=50 (a checkpoint "
            "at each evaluation) or -o eval_steps=100.",
        ),
        (
            {"eval_strategy": "steps", "logging_steps": 10},  # TRL's: evaluated every logging_steps
            "eval_steps=10 is not a multiple of save_steps=100; -o save_steps=10",
        ),
        ({"evals_per_epoch": 2}, "evals_per_epoch=2 beside save_steps=100 may fall between checkpoints"),
    ],
)
def test_load_best_model_at_end_is_refused_before_the_launch_where_it_cannot_hold(given, said):
    """Without held-out data, or with evaluations that may fall between checkpoints: one line before the launch
    (transformers raised its ValueError on the node). Evaluations at checkpoints (every one, every other one, per
    epoch alike) are taken, under every strategy: FSDP too, given or planned (it was refused, and left out of the
    planner's choices: 8B fft on 2xH100 was planned with FSDP2 without the key, with it refused)."""
    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.spec import build

    held = {"eval_split": 0.1, "gpus": "1xA100", "model_params": "1b", "load_best_model_at_end": True}
    with pytest.raises(FtctlError, match="load_best_model_at_end") as e:
        build({**held, **given})
    assert said in str(e.value)
    for fine in (
        {"eval_steps": 200, "save_steps": 100},
        {"saves_per_epoch": 2},
        {"evals_per_epoch": 2, "saves_per_epoch": 2},
        {"strategy": "fsdp", "gpus": "2xA100"},
    ):
        assert build({**held, **fine}).load_best_model_at_end
    assert make_plan(build({**held, "gpus": "2xH100", "model_params": "8b", "method": "fft"})).strategy == "fsdp"


def test_early_stopping_says_when_no_checkpoint_holds_the_lowest(
    tiny_model_dir, tiny_data, request, tmp_path, one_thread
):
    """Evaluated every step, a checkpoint every 3: the lowest (step 2) is between checkpoints. The stop line said
    nothing of where it is (and named transformers' stale pointer, an earlier checkpoint, where there was one)."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    values = dict(eval_steps=1, save_steps=3, eval_data_path=str(request.getfixturevalue("eval_data")))
    lines = []
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, max_steps=12, learning_rate=0.05, early_stopping_patience=2, **values
    )
    result = train(spec, plan, echo=lines.append)
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    lowest = min(evals, key=evals.get)
    assert lowest % 3 and result.global_step < 12, evals
    assert lines[-1].endswith(f"below {evals[lowest]:.4f} (step {lowest}); no checkpoint holds it")


def _evals(out) -> dict[int, float]:
    return {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}


def _same(final: dict, checkpoint: dict) -> bool:
    """The final model's tensors are the checkpoint's (the final one has no second copy of a tied head)."""
    return set(final) <= set(checkpoint) and all(final[k].equal(checkpoint[k]) for k in final)


def test_early_stopping_with_load_best_model_at_end_saves_the_lowest_checkpoints_weights(
    tiny_model_dir, tiny_data, request, tmp_path, one_thread
):
    """TRL's usual lines (fft): evaluated and saved every step, patience 2, load_best_model_at_end. Stopped at step
    4 after two evaluations above step 2's: the final model.safetensors is checkpoint-2's weights (it was step 4's),
    and the end lines say so."""
    from safetensors.torch import load_file

    from ftctl.trainer.run import train

    out = tmp_path / "out"
    values = dict(eval_steps=1, save_steps=1, eval_data_path=str(request.getfixturevalue("eval_data")))
    values |= dict(learning_rate=0.05, lr_scheduler_type="constant", early_stopping_patience=2)
    lines = []
    spec, plan = make_run(tiny_model_dir, tiny_data, out, max_steps=12, load_best_model_at_end=True, **values)
    result = train(spec, plan, echo=lines.append)
    evals = _evals(out)
    lowest = min(evals, key=evals.get)
    assert (lowest, result.global_step) == (2, 4), evals
    assert lines[-2:] == [
        f"stopped at step 4 of 12: 2 evaluations in a row found no held-out loss below {evals[2]:.4f} (step 2); "
        "checkpoint-2 holds it",
        f"the final model holds step 2's weights (loaded from checkpoint-2): the lowest held-out loss, "
        f"{evals[2]:.4f}, step 4's {evals[4]:.4f} (load_best_model_at_end)",
    ]
    final = load_file(out / "model.safetensors")
    assert _same(final, load_file(out / "checkpoint-2" / "model.safetensors"))
    assert not _same(final, load_file(out / "checkpoint-4" / "model.safetensors"))


def test_a_best_that_is_the_last_step_is_said_and_nothing_loaded(tmp_path):
    """The lowest held-out loss at the last step: the model in memory is it; nothing is downloaded or loaded, and the
    end line, metrics.jsonl and the card say the last step's weights are the lowest's."""
    from types import SimpleNamespace

    from ftctl.trainer.run import load_best
    from ftctl.trainer.sft_trainer import weights_said

    state = SimpleNamespace(best_global_step=6, best_metric=4.25, global_step=6, log_history=[])
    trainer = SimpleNamespace(state=state, _load_best_model=lambda: pytest.fail("loaded"))
    procs = SimpleNamespace(is_main=True)
    run = SimpleNamespace(trainer=trainer, procs=procs, local_dir=str(tmp_path), remote_uri="s3://nowhere/run")
    lines = []
    load_best(run, lines.append)
    assert lines == [
        "the final model holds step 6's weights, the last step's, whose held-out loss 4.2500 is the lowest"
    ]
    (record,) = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert (record["event"], record["weights_step"], record["weights_eval_loss"]) == ("final", 6, 4.25)
    assert "holds step 6's weights, the last step's: the lowest held-out loss, 4.2500" in weights_said(
        trainer.final_weights
    )


def test_a_best_checkpoint_that_cannot_be_loaded_is_said(tmp_path):
    """Where no copy of the lowest's checkpoint is left, or its DeepSpeed shards were written by another number of
    processes (a resume on another world size after it), the warning says why and which step the final model is."""
    from types import SimpleNamespace

    from ftctl.checkpoints import write_manifest
    from ftctl.trainer.run import not_loadable

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"0")
    write_manifest(str(ckpt), 2, 2, "spec")  # written by 2 processes
    run = SimpleNamespace(
        local_dir=str(tmp_path),
        remote_uri="s3://b/run",
        plan=SimpleNamespace(strategy="zero3"),
        procs=SimpleNamespace(world_size=1),
    )
    assert not_loadable(run, None, 2) == (
        f"are in no checkpoint: neither {tmp_path} nor s3://b/run holds a complete checkpoint-2"
    )
    assert "whose DeepSpeed shards 2 processes wrote and 1 cannot load" in not_loadable(run, str(ckpt), 2)
    run.plan.strategy = "ddp"  # whole tensors: any world size loads them
    assert not_loadable(run, str(ckpt), 2) is None


# FSDP2 over gloo (trainer_fixtures.FSDP_ON_GLOO), so that transformers' FSDP load of the best checkpoint (accelerate's
# load_fsdp_model of its pytorch_model_fsdp.bin, broadcast from rank 0) runs as on GPUs. The runs given on the command
# line, one after the other in the same 2 processes (torch imported once).
_EACH_RANK = """
import hashlib, json, os, sys
import ftctl.trainer.distributed as distributed
import ftctl.trainer.run as trainer_run
from ftctl.plan import load_run
def digest(p):
    return hashlib.sha256(distributed.local(p).detach().float().contiguous().numpy().tobytes()).hexdigest()
_save = trainer_run.save
def save(run):  # each rank's trained weights (ZeRO-3's, FSDP2's gathered whole) as load_best left them, before the save
    model = run.trainer.accelerator.unwrap_model(run.trainer.model)
    if run.plan.strategy == "zero3":
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            seen = {n: digest(p) for n, p in model.named_parameters() if p.requires_grad}
    else:
        seen = {n: digest(p) for n, p in model.named_parameters() if p.requires_grad}
    open(os.path.join(run.local_dir, f"weights-{os.environ['RANK']}.json"), "w").write(json.dumps(seen))
    _save(run)
trainer_run.save = save
launched = dict(os.environ)
for path in sys.argv[1:]:  # each with the environment it was launched with (TrainingArguments sets FSDP's variables)
    os.environ.clear()
    os.environ.update(launched)
    assert trainer_run.train(*load_run(path)).status == "complete"
"""


@pytest.mark.slow
def test_zero3_and_fsdp_on_two_processes_load_the_lowest_checkpoint_on_every_rank(
    tiny_model_dir, tiny_data, request, tmp_path
):
    """2 processes (gloo), one after the other: FSDP2 fft, FSDP2 lora stopped at step 2 and resumed to step 3, and
    DeepSpeed ZeRO-3 fft. transformers loads the best model with accelerate's load_fsdp_model under FSDP (a resume's
    load: pytorch_model_fsdp.bin, the whole model or the adapter alone, broadcast from rank 0 into each rank's shards)
    and with deepspeed_load_checkpoint under ZeRO-3 (every rank its shards of the checkpoint's DeepSpeed state). Each
    rank holds the lowest checkpoint's trained weights before the final save, the final model.safetensors (adapter) is
    that checkpoint's, and the last checkpoint's trainer_state names it (the resumed lora run's lowest was found before
    the resume). Under FSDP load_best_model_at_end was refused; taken, the lora run failed ("got mixed torch.Tensor and
    DTensor": its root module's frozen norm was left whole by the last evaluation) until distributed.reshard."""
    import dataclasses
    import hashlib
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.test_distributed import DS_ENV
    from tests.trainer_fixtures import REPO, subprocess_env, write_spec

    held_out = str(request.getfixturevalue("eval_data"))
    values = dict(
        eval_data_path=held_out, learning_rate=0.05, save_steps=1, lr_scheduler_type="constant", resume="auto"
    )
    specs, outs = [], {}
    runs = [("fsdp", "fft", 3, True), ("fsdp", "lora", 2, False), ("fsdp", "lora", 3, True), ("zero3", "fft", 3, True)]
    for strategy, method, steps, best in runs:
        out = outs.setdefault((strategy, method), tmp_path / f"{strategy}-{method}")
        spec, plan = make_run(tiny_model_dir, tiny_data, out, method, max_steps=steps, gpus="2xcpu",
                              load_best_model_at_end=best, **values)  # fmt: skip
        plan = dataclasses.replace(plan, strategy=strategy)  # fsdp: refused on CPU (see FSDP_ON_GLOO)
        specs.append(str(write_spec(spec, plan, tmp_path / f"{len(specs)}.json")))
    script = tmp_path / "each_rank.py"
    script.write_text(FSDP_ON_GLOO + _EACH_RANK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*torchrun, str(script), *specs], env=subprocess_env(**DS_ENV), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for run, out in outs.items():
        evals = _evals(out)
        lowest = min(evals, key=evals.get)
        assert lowest < 3, (run, evals)
        said = f"the final model holds step {lowest}'s weights (loaded from checkpoint-{lowest})"
        assert said in proc.stdout, (run, proc.stdout[-3000:])
        name = "adapter_model.safetensors" if run[1] == "lora" else "model.safetensors"
        best, last = load_file(out / f"checkpoint-{lowest}" / name), load_file(out / "checkpoint-3" / name)
        final = load_file(out / name)
        assert _same(final, best) and not _same(final, last), run
        digests = {k: hashlib.sha256(v.float().contiguous().numpy().tobytes()).hexdigest() for k, v in best.items()}
        for rank in (0, 1):
            seen = json.loads((out / f"weights-{rank}.json").read_text())
            seen = {k.replace(".default.", "."): v for k, v in seen.items()}  # PEFT's adapter name, not in its file
            assert seen.keys() == final.keys() and all(seen[k] == digests[k] for k in seen), (run, rank)
        state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
        assert state["best_model_checkpoint"] == str(out / f"checkpoint-{lowest}"), run
    steps = [r["step"] for r in map(json.loads, open(outs["fsdp", "lora"] / "metrics.jsonl")) if "loss" in r]
    assert steps == [1, 2, 3]  # lora's second training went on from checkpoint-2
