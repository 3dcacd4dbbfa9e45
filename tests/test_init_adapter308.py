"""lora_model_dir (axolotl's name; LLaMA-Factory's adapter_name_or_path): a run's adapters start from an earlier
adapter's weights at step 0, with a fresh optimizer and schedule, as PEFT's from_pretrained(base, DIR,
is_trainable=True) and a new Trainer do (explore64 finding 9). ftctl refused the key, offering only -o resume=,
which goes on with the old run's optimizer and schedule."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.trainer_fixtures import make_run


def _ftctl(*args):
    from ftctl.cli import main

    return CliRunner().invoke(main, [*map(str, args)])


def _adapter(directory, base, **config):
    """An adapter directory as PEFT saves one (its weights' bytes unread by build)."""
    directory.mkdir(parents=True)
    saved = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(saved | {"base_model_name_or_path": str(base)} | config))
    (directory / "adapter_model.safetensors").write_bytes(b"")
    return directory


class _AtStart:
    """Records, as training begins, the adapters' weights, the step, the optimizer's state and the scheduler's count."""

    def __new__(cls, seen: dict):
        from transformers import TrainerCallback

        class AtStart(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
                seen["step"] = state.global_step
                seen["weights"] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
                seen["optimizer_state"] = len(optimizer.state) if optimizer is not None else 0
                seen["scheduler_steps"] = lr_scheduler.last_epoch if lr_scheduler is not None else 0

        return AtStart()


def _lrs(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r and "loss" in r}


@pytest.fixture(scope="module")
def first(tiny_model_dir, tiny_data, tmp_path_factory):
    """A lora run of r 4 (alpha 8, q_proj and v_proj) trained 4 steps with 2 of warm-up: its final adapter."""
    import torch

    from ftctl.trainer.run import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("init308") / "first"
    small = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": "q_proj,v_proj", "warmup_steps": 2}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, save_steps=2, **small), echo=print)
    return out


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_new_runs_adapters_start_from_the_adapter_with_a_fresh_optimizer_and_schedule(
    first, tiny_model_dir, tmp_path, method, one_thread
):
    """At step 0 the new run's adapters hold the old adapter's weights (over a 16-bit base, and over the 4-bit one),
    its optimizer holds no state and its scheduler has not stepped; its learning rates step for step are those of
    the first run, which started fresh with the same schedule (warm-up, then the cosine). Its r, alpha and target
    modules are the adapter's, none of them given."""
    from safetensors.torch import load_file

    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(demo_data_path().read_text())[200:248]))
    out, seen = tmp_path / "new", {}
    spec, plan = make_run(tiny_model_dir, other, out, method, max_steps=4, warmup_steps=2, lora_model_dir=str(first))
    assert (spec.lora_r, spec.lora_alpha, spec.lora_target_modules) == (4, 8, "q_proj,v_proj")
    assert train(spec, plan, [_AtStart(seen)], echo=lambda *_: None).status == "complete"
    assert seen["step"] == 0 and seen["optimizer_state"] == 0 and seen["scheduler_steps"] == 0
    saved = load_file(first / "adapter_model.safetensors")
    assert len(seen["weights"]) == len(saved) == 8  # A and B of q_proj and v_proj, 2 layers
    for name, tensor in saved.items():
        ours = name.replace(".weight", ".default.weight")
        (got,) = [w for n, w in seen["weights"].items() if n.endswith(ours.removeprefix("base_model.model."))]
        assert got.dtype == tensor.dtype and bool((got == tensor).all()), name
    assert _lrs(out) == pytest.approx(_lrs(first))  # step 1 is the warm-up's, as a fresh run's
    assert json.loads((out / "spec.json").read_text())["spec"]["lora_model_dir"] == str(first)
    card = (out / "README.md").read_text()
    assert (
        "Its adapters started from the weights of the adapter `first` (trained on `conversations.json`), with a "
        "fresh optimizer and learning-rate schedule (`lora_model_dir`)." in card
    ), card


def test_eval_counts_the_adapters_data_as_trained_on(first, tiny_model_dir, tiny_data, tmp_path, one_thread):
    """`ftctl eval NEW --data FIRST's data` of a run started from FIRST's adapter on other data: FIRST's rows trained
    the weights NEW started from, so the loss is no held-out measure, and eval says so (as for -o resume=)."""
    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(demo_data_path().read_text())[200:248]))
    new = tmp_path / "new"
    spec, plan = make_run(tiny_model_dir, other, new, "lora", max_steps=1, lora_model_dir=str(first / "checkpoint-2"))
    assert train(spec, plan, echo=lambda *_: None)
    said = _ftctl("eval", new, "--data", tiny_data)
    assert said.exit_code == 0, said.output
    assert (
        f"note: {tiny_data.name}: the adapter the run started from ({(first / 'checkpoint-2').resolve()}) trained on "
        "its rows, so this loss is lower than on rows it never saw"
        in said.output.replace(str(tiny_data), tiny_data.name)
    ), said.output
    assert "`first/checkpoint-2` (trained on `conversations.json`)" in (new / "README.md").read_text()


def test_an_adapter_of_another_base_is_one_clear_error(tiny_model_dir, tmp_path):
    other_base = tmp_path / "other-base"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    adapter = _adapter(tmp_path / "a", tiny_model_dir)
    with pytest.raises(FtctlError) as e:
        build({"method": "lora", "model_name_or_path": str(other_base), "lora_model_dir": str(adapter)})
    assert str(e.value) == (
        f"lora_model_dir={adapter}: its adapter trained over {tiny_model_dir}, and this run's --model is "
        f"{other_base}: an adapter's weights mean something over their own base only: give --model {tiny_model_dir}."
    )
    # a copy of the base elsewhere is another model by path: the same error; the base itself is taken
    copy = shutil.copytree(other_base, tmp_path / "copy")
    with pytest.raises(FtctlError, match="its adapter trained over"):
        build({"model_name_or_path": str(copy), "lora_model_dir": str(adapter)})
    assert build({"model_name_or_path": str(tiny_model_dir), "lora_model_dir": str(adapter)}).lora_r == 4


def test_the_adapters_settings_win_and_a_conflicting_one_given_is_refused(tiny_model_dir, tmp_path):
    adapter = _adapter(tmp_path / "a", tiny_model_dir, use_rslora=True)
    base = {"model_name_or_path": str(tiny_model_dir)}
    notes: list[str] = []
    spec = build({**base, "lora_model_dir": str(adapter), "lora_dropout": 0.1}, notes=notes)
    assert (spec.lora_r, spec.lora_alpha, spec.lora_target_modules, spec.use_rslora) == (4, 8, "q_proj,v_proj", True)
    assert spec.lora_dropout == 0.1  # a training setting, the run's
    assert any(n.startswith(f"lora_model_dir {adapter}: the adapters start from its weights") for n in notes)
    # all-linear (axolotl's lora_target_linear: true beside its lora_model_dir) is no conflict: the adapter's modules
    assert build({**base, "lora_model_dir": str(adapter), "lora_target_linear": True}).lora_target_modules == (
        "q_proj,v_proj"
    )
    assert build(base, None, [f"lora_model_dir={adapter}", "lora_r=4", "lora_target_modules=v_proj,q_proj"]).lora_r == 4
    # PEFT saves all-linear as each module's full name: the run's keys name their ends
    full = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.up_proj"]
    every = _adapter(tmp_path / "all", tiny_model_dir, target_modules=full)
    assert build({**base, "lora_model_dir": str(every)}).lora_target_modules == "q_proj,up_proj"
    with pytest.raises(FtctlError) as e:
        build(base, None, [f"lora_model_dir={adapter}", "lora_r=8", "lora_alpha=16"])
    assert str(e.value) == (
        f"lora_model_dir={adapter}: lora_r=8 (-o), where the adapter's is 4; lora_alpha=16 (-o), where the adapter's "
        "is 8: its weights train on with its own r, alpha and target modules: leave lora_r, lora_alpha out (or give "
        "the adapter's), or train new adapters without lora_model_dir."
    )


def test_llama_factorys_adapter_name_or_path_is_lora_model_dir(tiny_model_dir, tmp_path):
    adapter = _adapter(tmp_path / "a", tiny_model_dir)
    spec = build({"model_name_or_path": str(tiny_model_dir), "adapter_name_or_path": str(adapter)})
    assert spec.lora_model_dir == str(adapter)


@pytest.mark.parametrize(
    "given, said",
    [
        ({"method": "fft"}, "an adapter's weights start a lora or qlora run's adapters, not --method fft's"),
        ({"resume": "ADAPTER/checkpoint-2"}, "both say where the adapters start"),
        ({"lora_model_dir": "s3://b/run"}, "an adapter is read from a directory here: `ftctl sync pull` it"),
        ({"lora_model_dir": "MISSING"}, "is not a LoRA adapter (no such directory here"),
        ({"lora_model_dir": "MODEL"}, "is not a LoRA adapter (a full model (fft, sft): give it as --model"),
        ({"lora_model_dir": "RUN"}, "(it holds no final adapter: name one of its checkpoints, lora_model_dir=RUN/"),
        ({"output_dir": "ADAPTER"}, "is in this run's own --output, which it would write over: to train that run on"),
    ],
)
def test_what_cannot_start_a_run_is_refused(tiny_model_dir, tmp_path, given, said):
    adapter = _adapter(tmp_path / "a", tiny_model_dir)
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    where = {"ADAPTER": str(adapter), "MISSING": str(tmp_path / "no"), "MODEL": str(tiny_model_dir)}
    where["RUN"] = str(tmp_path / "run")
    values = {"model_name_or_path": str(tiny_model_dir), "lora_model_dir": str(adapter)}
    for key, value in given.items():
        values[key] = next((value.replace(k, v) for k, v in where.items() if value.startswith(k)), value)
    with pytest.raises(FtctlError) as e:
        build(values)
    assert said.replace("RUN", where["RUN"]) in str(e.value)


def test_bad_input_on_the_command_line_is_one_error_line(tiny_model_dir, tmp_path):
    other = tmp_path / "other-base"
    other.mkdir()
    (other / "config.json").write_text("{}")
    adapter = _adapter(tmp_path / "a b", tiny_model_dir)
    for extra in ([f"lora_model_dir={adapter}"], [f"lora_model_dir={tmp_path / 'none'}"]):
        said = _ftctl("plan", "--gpus", "cpu", "--model", other, *(a for o in extra for a in ("-o", o)))
        assert said.exit_code != 0 and "Traceback" not in said.output, said.output
        assert isinstance(said.exception, SystemExit), repr(said.exception)
        lines = [line for line in said.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "lora_model_dir=" in lines[0], said.output
