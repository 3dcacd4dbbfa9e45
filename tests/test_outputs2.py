"""What a run leaves, read right on another machine, on the Hub and by vLLM (task 129, after explore27): a run whose
base was loaded from another path than the one the user named (a SkyPilot node loads a shipped base from its inputs/
copy: FTCTL_BASE_MODEL names the laptop's), an adapter over a base loaded by its Hub id on a node offline without
HF_HUB_OFFLINE, each checkpoint-N's card, the paths in the cards and in a merge's record, and load_best_model_at_end
over a 4-bit base."""

from __future__ import annotations

import json
import shutil
import socket
import warnings

import pytest

from tests.test_evaluation import eval_data  # noqa: F401 (a fixture, taken by name below)
from tests.test_outputs_elsewhere import _ids, qwen_like_base  # noqa: F401 (a fixture, taken by name below)
from tests.trainer_fixtures import make_run

LAPTOP = "/home/someone/models/qwen-like"  # where the user named the base: not on this machine
HUB_ID = "someone/qwen-like"  # as PEFT records a base loaded by its Hub id


@pytest.fixture(scope="module")
def node_run(qwen_like_base, tiny_data, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """A 2-step lora run, a checkpoint a step, as a SkyPilot node runs it: the base loaded from this machine's copy,
    the user's name for it (the laptop's path) in FTCTL_BASE_MODEL. PEFT's config names a Hub id, as for a base
    loaded by its id, and the Hub cannot be reached (HF_HUB_OFFLINE unset): each lookup of a host name is counted."""
    import torch
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    class LoadedById(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.peft_config["default"].base_model_name_or_path = HUB_ID

    looked_up = []

    def no_network(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    from huggingface_hub import constants

    def telemetry(topic, **kwargs):  # TRL's usage ping to the Hub at its trainer's start, where it would be sent
        if not (constants.is_offline_mode() or constants.HF_HUB_DISABLE_TELEMETRY):
            looked_up.append(f"telemetry {topic}")

    out = tmp_path_factory.mktemp("node") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTCTL_BASE_MODEL", LAPTOP)
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DISABLE_TELEMETRY", "CI"):
            mp.delenv(name, raising=False)  # CI: TRL sends no ping in CI
        mp.setattr(socket, "getaddrinfo", no_network)
        mp.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)  # as the hub read it at its import
        mp.setattr("trl.trainer.base_trainer.send_telemetry", telemetry)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            spec, plan = make_run(qwen_like_base, tiny_data, out, "lora", max_steps=2, save_steps=1, lora_r=4)
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                train(spec, plan, callbacks=[LoadedById()], echo=lambda line: None)
        finally:
            torch.set_num_threads(threads)
    return out, looked_up, [str(w.message) for w in said]


def test_an_adapter_saved_on_a_node_stops_at_the_turns_end_though_its_base_is_named_by_the_laptops_path(
    node_run,
    qwen_like_base,  # noqa: F811
):
    """The adapter names its base as the user did (the laptop's path, where PEFT loads it there), and its directory
    still gets the base's generation config stopping at <|im_end|>: it was read from the base the adapter names, not
    here on the node, so the final adapter had no generation_config.json (vLLM's --generation-config RUN and
    generate() ran on past the answer). Each checkpoint-N has it too."""
    out, _, _ = node_run
    eos, end = _ids(qwen_like_base)
    for adapter in (out, out / "checkpoint-1", out / "checkpoint-2"):
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == LAPTOP
        assert json.loads((adapter / "generation_config.json").read_text())["eos_token_id"] == [eos, end], adapter


def test_an_adapter_over_a_base_loaded_by_its_hub_id_is_saved_without_asking_the_hub(node_run):
    """PEFT's save_embedding_layers="auto" asked the Hub for the base's config.json at every save where the adapter's
    config names an id: offline, two warnings a checkpoint ("Unable to fetch remote file", "Could not find a config
    file in ...") and a lookup each. The run says what it trained (no embeddings), so no save asks. Nor does TRL's
    trainer ping the Hub's telemetry as it starts (a node that reaches no Internet; nobody asked for it): the trainer
    sets HF_HUB_DISABLE_TELEMETRY=1 where the user set nothing."""
    _, looked_up, said = node_run
    assert looked_up == []
    assert not [w for w in said if "config file" in w or "remote file" in w], said


def test_the_final_adapter_is_made_ready_without_asking_the_hub_for_its_base(node_run, tmp_path, monkeypatch):
    """The final save's last touches (trained.for_other_readers) read an adapter's base's generation config from the
    base it names: a Hub id on a node offline was asked of the Hub (with huggingface_hub's retries) at every run's
    end. The adapter's own, written at its save from the base in memory, is all it reads now."""
    from ftctl.trainer.trained import for_other_readers

    adapter = tmp_path / "adapter"
    shutil.copytree(node_run[0], adapter, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": HUB_ID}))
    (adapter / "generation_config.json").unlink()  # a base whose eos is the template's end of turn: none written
    looked_up = []

    def no_network(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for_other_readers(adapter)
    assert looked_up == [] and not (adapter / "generation_config.json").exists()


def test_each_checkpoint_has_ftctls_card_and_no_card_names_a_path_of_the_machine(node_run, qwen_like_base, tiny_data):  # noqa: F811
    """checkpoint-N/README.md was PEFT's placeholder ("Model Card for Model ID", base_model the path it loaded, which
    the Hub refuses); the run's card named the base, the data and the output by their absolute paths, wrong on any
    other machine and, uploaded, showing the user's directories. Local ones are named by their last part."""
    from huggingface_hub import ModelCard

    out, _, _ = node_run
    for directory in (out, out / "checkpoint-1"):
        text = (directory / "README.md").read_text()
        assert "Model Card for Model ID" not in text
        for path in (LAPTOP, str(qwen_like_base), str(tiny_data), str(out), "/home/", "/tmp/"):
            assert path not in text, (directory, path)
        card = ModelCard.load(directory / "README.md")
        assert card.data.library_name == "peft" and card.data.base_model is None  # a local base: no Hub id
        assert "A LoRA adapter of `qwen-like` (a local model directory)" in text and f"on `{tiny_data.name}`" in text
        assert 'model = AutoPeftModelForCausalLM.from_pretrained("DIR", device_map="auto")' in text
    checkpoint = (out / "checkpoint-1" / "README.md").read_text()
    assert "# run (checkpoint-1)" in checkpoint and "its weights at step 1" in checkpoint
    assert "DIR is this directory (`checkpoint-1` of the run)" in checkpoint
    assert "DIR is this directory (`run`)" in (out / "README.md").read_text()
    assert not list(out.glob("**/.README.md.tmp"))


def test_a_merges_record_names_the_adapter_from_the_merge_and_holds_on_another_machine(
    node_run,
    qwen_like_base,  # noqa: F811
    tmp_path,
):
    """ftctl-merge.json named the adapter by its absolute path (and the base by the laptop's): wrong once the run and
    its merge were copied elsewhere (the stale-merge check saw another adapter), and uploaded with the merge it showed
    the training machine's directories. Now the adapter's path from the merge (RUN/merged: ..), the base by name."""
    from ftctl.errors import FtctlError
    from ftctl.trainer.merge import merge

    out, _, _ = node_run
    run = tmp_path / "here" / "run"
    shutil.copytree(out, run)
    merged = merge(str(run), str(run / "merged"), base=str(qwen_like_base))  # the adapter names the laptop's base
    record = json.loads((merged / "ftctl-merge.json").read_text())
    assert (record["adapter"], record["base"]) == ("..", qwen_like_base.name)
    assert str(tmp_path) not in (merged / "README.md").read_text()
    elsewhere = tmp_path / "elsewhere" / "run"  # the run and its merge, copied to another machine
    shutil.copytree(run, elsewhere)
    with pytest.raises(FtctlError, match="holds the merge of this adapter as it is now"):
        merge(str(elsewhere), str(elsewhere / "merged"), base=str(qwen_like_base))


def test_a_merge_into_a_store_names_the_adapter_by_its_store_uri_or_its_runs_name(
    node_run,
    qwen_like_base,  # noqa: F811
    tmp_path,
    s3_bucket,
):
    """A local run merged into an object store: ftctl-merge.json named the adapter by this machine's absolute path
    (meaningless where the store is read, and showing /home/USER/... to whoever reads it). Now a run whose output is
    in a store (a staging directory, a `sync pull` copy: its spec.json says) is named by the adapter's URI there, the
    name a merge of the run from the store records; any other by its run's name. Merged again, it is still this
    adapter's merge."""
    from ftctl import storage
    from ftctl.errors import FtctlError
    from ftctl.trainer.merge import merge

    out, _, _ = node_run
    run = tmp_path / "here" / "r1"
    shutil.copytree(out, run)
    plain = f"{s3_bucket}/merged/plain"
    merge(str(run / "checkpoint-1"), plain, base=str(qwen_like_base))
    record = json.loads(storage.read_text(f"{plain}/ftctl-merge.json"))
    assert record["adapter"] == "r1/checkpoint-1" and str(tmp_path) not in json.dumps(record)
    with pytest.raises(FtctlError, match="holds the merge of this adapter as it is now"):
        merge(str(run / "checkpoint-1"), plain, base=str(qwen_like_base))

    spec = json.loads((run / "spec.json").read_text())
    spec["spec"]["output_dir"] = f"{s3_bucket}/runs/r1/"  # this directory: the staging of a store's run
    (run / "spec.json").write_text(json.dumps(spec))
    staged = f"{s3_bucket}/merged/staged"
    merge(str(run), staged, base=str(qwen_like_base))
    assert json.loads(storage.read_text(f"{staged}/ftctl-merge.json"))["adapter"] == f"{s3_bucket}/runs/r1"
    with pytest.raises(FtctlError, match="holds the merge of this adapter as it is now"):
        merge(str(run), staged, base=str(qwen_like_base))
    merge(str(run / "checkpoint-1"), f"{s3_bucket}/merged/one", base=str(qwen_like_base))
    one = json.loads(storage.read_text(f"{s3_bucket}/merged/one/ftctl-merge.json"))
    assert one["adapter"] == f"{s3_bucket}/runs/r1/checkpoint-1"


def test_qlora_with_load_best_model_at_end_saves_the_lowest_checkpoints_adapter(
    tiny_model_dir, tiny_data, request, tmp_path, one_thread
):
    """test_best_model's lines (evaluated and saved every step, patience 2, load_best_model_at_end) over the 4-bit
    base: the final adapter is the lowest held-out loss's checkpoint's (PEFT's load_adapter into the quantized
    model), not the last step's, and the end line says so. The rate is 0.5: the fp32 adapters (fp32_trainables) still
    descend at step 6 at 0.05 and 0.2, where the bf16 ones TRL made them rose before it."""
    from safetensors.torch import load_file

    from ftctl.trainer.run import train
    from tests.test_best_model import _evals, _same

    out = tmp_path / "out"
    values = dict(eval_steps=1, save_steps=1, eval_data_path=str(request.getfixturevalue("eval_data")))
    values |= dict(learning_rate=0.5, lr_scheduler_type="constant", early_stopping_patience=2, lora_r=4)
    lines = []
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "qlora", max_steps=6, load_best_model_at_end=True, **values)
    result = train(spec, plan, echo=lines.append)
    evals = _evals(out)
    lowest, last = min(evals, key=evals.get), result.global_step
    assert lowest < last, evals
    assert lines[-1] == (
        f"the final model holds step {lowest}'s weights (loaded from checkpoint-{lowest}): the lowest held-out loss, "
        f"{evals[lowest]:.4f}, step {last}'s {evals[last]:.4f} (load_best_model_at_end)"
    )
    name = "adapter_model.safetensors"
    final = load_file(out / name)
    assert _same(final, load_file(out / f"checkpoint-{lowest}" / name))
    assert not _same(final, load_file(out / f"checkpoint-{last}" / name))


def test_an_adapter_that_trains_the_head_still_saves_it_as_peft_would(tiny_model_dir, tmp_path):
    """save_embedding_layers said (embeddings_as_trained), as PEFT's "auto" decides it without the Hub: an adapter on
    the LM head (lora_target_modules naming lm_head) saves the head with it, one on the projections does not."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.sft_trainer import embeddings_as_trained, trains_embeddings

    for targets, head in ((["q_proj", "lm_head"], True), ("all-linear", False)):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=targets)
        )
        assert trains_embeddings(model) is head
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PEFT's "Setting save_embedding_layers to True" where it decides
            model.save_pretrained(tmp_path / "auto")  # PEFT's own choice (the base is a local path: no Hub)
        with embeddings_as_trained(model):
            model.save_pretrained(tmp_path / "said")
        assert "save_pretrained" not in vars(model)  # the model's own again
        auto, said = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("auto", "said"))
        assert auto.keys() == said.keys() and any("lm_head.base_layer" in k for k in said) is head
