"""The run's README.md: a Hugging Face model card that says what was trained from what, and how to use it.

TRL's card (written at each checkpoint) is made for a model pushed to the Hub: a base in a local directory, or the
demo model loaded from its cache, read "a fine-tuned version of [None](https://huggingface.co/None)", and its
quick start loaded ``model="None"``. This one names the base as the run did (a Hub id is linked and is the card's
``base_model``; a local directory by its name, never the training machine's absolute path) and loads the output from
DIR, said what it is. Each checkpoint-<step> gets one too (PEFT's placeholder was there).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ftctl import __version__
from ftctl.hub import COMMIT, HUB_ID
from ftctl.spec import RunSpec, is_demo_model, split_paths, warmup_of
from ftctl.storage import is_remote, looks_like_path, scheme, write_whole
from ftctl.storage import join as storage_join
from ftctl.trainer.trained import GENERATION_CONFIG

README = "README.md"
DEMO_LICENSE = "apache-2.0"  # HuggingFaceTB/SmolLM2-135M-Instruct's card (license: apache-2.0)


def hub_id(base: str) -> str | None:
    """The base as a Hub id, None where it is a local directory (or anything else)."""
    return base if HUB_ID.match(base) and not Path(base).exists() and not looks_like_path(base) else None


def pinned_at(base: str, revision: str | None) -> str:
    """The words after a hub base's name that say which of its commits the run trained from (" at commit SHA", the
    one launch pinned: spec.json's model_revision); "" where none was pinned (its main as it was then) or the base is
    no hub id. The card's ``base_model`` stays the id, as the Hub takes it."""
    if not revision or not hub_id(base):
        return ""
    return f" at commit {revision}" if COMMIT.match(revision) else f" at revision {revision}"


def base_license(*bases: str) -> dict:
    """The license of the model a run tuned, from its card where one is here (a local base's README.md, or one the Hub
    cache holds): a tuned model is under its base's terms (Llama's and Gemma's say so), and the Hub shows a card
    without one as of unknown license. Its ``license_name`` and ``license_link`` too (``license: other``); {} where
    none is here (the Hub is not asked: a node may not reach it)."""
    from huggingface_hub import try_to_load_from_cache

    for base in bases:
        if is_demo_model(base):  # ftctl's build of it (no card here, none in the Hub cache): the Hub card's license
            return {"license": DEMO_LICENSE}
        local = Path(base).expanduser() / README
        cached = try_to_load_from_cache(base, README) if hub_id(base) else None
        for card in (local, cached):
            try:
                data = ModelCard.load(card).data if isinstance(card, (str, Path)) and Path(card).is_file() else None
            except (OSError, ValueError):
                continue
            if data is not None and data.license:
                keys = ("license", "license_name", "license_link")
                return {key: getattr(data, key, None) for key in keys if getattr(data, key, None)}
    return {}


def named(path_or_id: str) -> str:
    """A model, adapter or data file as a card names it: a Hub id, an object-store, hf:// or builtin: name as it is; a
    local path by its last part. A card is read on other machines and, uploaded, by anyone: the absolute path of the
    machine that trained (/home/USER/..., a node's /scratch/...) is wrong there and shows its owner's directories.
    spec.json beside the card keeps those paths for this machine; adapter_config.json names the base where PEFT loads
    it here (its base_model_name_or_path)."""
    value = str(path_or_id)
    if hub_id(value) or (scheme(value) and scheme(value) != "file") or value.startswith("builtin:"):
        return value
    return Path(value.removeprefix("file://").rstrip("/")).name or value


def text(spec: RunSpec, base: str, adapter: bool, local_dir: str, step: int | None = None, plan=None) -> str:
    """The card of a run of ``spec`` from ``base`` (the model as the user named it), its final model an adapter
    (lora, qlora) or a whole model (fft, sft), written in ``local_dir`` (an object store's output: staged there);
    ``step``: of its checkpoint-<step> (``local_dir``), PEFT's placeholder card there before ("Model Card for Model
    ID", its base_model the path it loaded, which the Hub refuses); ``plan``: the run's (its precision and how its
    base is stored, for a qlora adapter's snippet). Local paths are named by their last part (named); the snippets
    load DIR, said what it is."""
    linked = hub_id(base)
    data = ModelCardData(
        base_model=linked,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["ftctl", spec.method, "trl", "sft", *(["lora"] if adapter else [])],
        **base_license(base, spec.model_name_or_path),
    )
    origin = f"[{base}](https://huggingface.co/{base})" if linked else f"`{named(base)}`"
    if not linked and not is_remote(base) and not is_demo_model(base):
        origin += " (a local model directory)"
    origin += pinned_at(base, _revision(spec, base))
    loads = (
        _adapter_loads(spec.method, plan, Path(local_dir, GENERATION_CONFIG).is_file())
        if adapter
        else 'from transformers import pipeline\n\ngenerator = pipeline("text-generation", model="DIR")'
    )
    commands = 'ftctl chat DIR -p "A question"'
    if adapter:
        commands += "\nftctl merge DIR   # the base with the adapter merged in: a plain model"
    title = spec.run_name or Path(spec.output.rstrip("/")).name
    if is_remote(spec.output):
        at = storage_join(spec.output, f"checkpoint-{step}") if step is not None else spec.output
        fetched = f"DIR is a copy of {at} (`ftctl sync pull {shlex.quote(spec.output)} DIR` copies the run)."
    else:
        fetched = f"DIR is this directory (`{Path(local_dir).name}`{' of the run' if step is not None else ''})."
    built = _demo_base(base, adapter) if is_demo_model(base) else ""
    settings = (
        f"A checkpoint of the run `{title}`: its weights at step {step}. Its final model and card are in the "
        "directory above."
        if step is not None
        else "Each logged step is a line of `metrics.jsonl` in the run's directory."
    )
    body = f"""
# {title}{f" (checkpoint-{step})" if step is not None else ""}

{_method(spec.method)} of {origin} with ftctl {__version__} (TRL's SFTTrainer),
on {_data(spec.data_path)}.{_started(spec)} {settings}{built}

## Use it

{fetched} Uploaded to the Hub, DIR is its id.

```bash
{commands}
```

```python
{loads}
```
{served(spec, base, adapter, local_dir)}{training(spec.to_dict(), plan.to_dict() if plan is not None else None, local_dir, step=step)}"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank values (vllm/config/lora.py), default 16
VLLM_DEFAULT_RANK = 16


def served(spec: RunSpec, base: str, adapter: bool, directory) -> str:
    """How vLLM serves what the run trained, as vLLM's LoRA loader takes it (vllm/lora/peft_helper.py): an adapter of
    a rank over 16 needs ``--max-lora-rank`` (one of VLLM_RANKS; without it vLLM refused it: "LoRA rank 32 is greater
    than max_lora_rank 16"); a DoRA adapter it refuses whatever the flags, and a qlora adapter it puts on the
    unquantized base, another model than the one trained: both served merged. docs/results.md gave one `vllm serve`
    line for every adapter."""
    if not adapter:
        return "\nServed by vLLM: `vllm serve DIR`.\n"
    merged = "`ftctl merge DIR`, then `vllm serve DIR/merged`"
    if spec.use_dora:
        return f"\nvLLM does not load DoRA adapters: to serve it, {merged}.\n"
    if spec.method == "qlora":
        return (
            f"\nServed by vLLM: {merged}. vLLM puts an adapter onto its base unquantized, which is another model than "
            "the 4-bit one this adapter trained over.\n"
        )
    rank = _rank(spec.lora_r, directory)
    flags = ""
    if _is_number(rank) and rank > VLLM_DEFAULT_RANK:
        fits = [r for r in VLLM_RANKS if r >= rank]
        if not fits:
            return f"\nvLLM serves adapters up to rank {VLLM_RANKS[-1]}, this one is of rank {rank}: {merged}.\n"
        flags = f" --max-lora-rank {fits[0]}"
    if Path(directory, GENERATION_CONFIG).is_file():
        flags += " --generation-config DIR"
    linked = hub_id(base)
    where = "" if linked else " (BASE: the base model's directory)"
    revision = _revision(spec, base) if linked else None  # the base's commit the adapter trained over
    at = f" --revision {shlex.quote(revision)}" if revision else ""
    return (
        f"\nServed by vLLM{where}:\n\n```bash\n"
        f"vllm serve {linked or 'BASE'}{at} --enable-lora --lora-modules {_served_name(spec)}=DIR{flags}\n```\n"
    )


def _started(spec: RunSpec) -> str:
    """The words that say the adapters started from another adapter's weights (lora_model_dir), not from PEFT's
    init, and what that one trained on (its run's spec.json's data_path, where it has one); "" where they did not."""
    if not spec.lora_model_dir:
        return ""
    adapter = Path(spec.lora_model_dir)
    data = None
    for record in (adapter / "spec.json", adapter.parent / "spec.json"):  # a checkpoint's is its run's, above it
        try:
            data = json.loads(record.read_text())["spec"]["data_path"]
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    name = f"{adapter.parent.name}/{adapter.name}" if adapter.name.startswith("checkpoint-") else named(str(adapter))
    on = f" (trained on {_data(data)})" if isinstance(data, str) else ""
    return (
        f" Its adapters started from the weights of the adapter `{name}`{on}, with a fresh optimizer and "
        "learning-rate schedule (`lora_model_dir`)."
    )


def _revision(spec: RunSpec, base: str) -> str | None:
    """The commit of ``base`` the run trained from: its model_revision where ``base`` is its model as named."""
    return spec.model_revision if base == spec.model_name_or_path else None


def _rank(configured: int | None, directory) -> int | None:
    """The adapter's largest rank: adapter_config.json's r and rank_pattern where it is in ``directory`` (a fused
    MoE's gate_up at twice lora_r), else the run's lora_r (None: not known; a config not PEFT's own may hold null
    or no number)."""
    try:
        saved = json.loads(Path(directory, "adapter_config.json").read_text())
    except (OSError, TypeError, ValueError):
        return configured
    saved = saved if isinstance(saved, dict) else {}
    pattern = saved.get("rank_pattern")
    ranks = [saved.get("r") or configured, *(pattern.values() if isinstance(pattern, dict) else ())]
    return max((int(r) for r in ranks if _is_number(r)), default=configured)


def _is_number(value) -> bool:
    """Whether ``value`` is a number to compare and format (a spec.json not ftctl's own may hold a string or null)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value, spec: str = "g") -> str:
    """``value`` formatted as a number where it is one, else written as it is."""
    return format(value, spec) if _is_number(value) else str(value)


def _served_name(spec: RunSpec) -> str:
    """The name requests give vLLM for the adapter: the run's."""
    name = spec.run_name or Path(spec.output.rstrip("/")).name or "run"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def training(spec: dict, plan: dict | None, directory=None, versions: bool = True, step: int | None = None) -> str:
    """The card's "Training" section: the method and the hyperparameters the run trained with, from its spec and
    plan (``spec.json``'s two halves; ``plan`` None: the spec's alone), and the versions it trained with. A card said
    they were in ``spec.json`` beside it, which the upload the docs give leaves out (it holds the training machine's
    paths): the Hub's page of an uploaded adapter or merge named no rank, learning rate, batch or steps.
    ``directory``: where the adapter's ``adapter_config.json`` names the projections it adapted; ``versions``: the
    versions here are the ones it trained with (a merge's card: not known); ``step``: the weights are a checkpoint's,
    of that step (the steps row said the run's whole). A spec.json that is not ftctl's own (beside a downloaded
    adapter: `ftctl merge` reads it) may lack keys or hold other types: an unknown value is written as it is or its
    line left out, and a section that still cannot be said is left out, never ending the merge."""
    try:
        lines = "\n".join(f"- {name}: {value}" for name, value in _training_rows(spec, plan or {}, directory, step))
    except (AttributeError, KeyError, TypeError, ValueError):
        return ""
    return f"\n## Training\n\n{lines}\n" + (f"\nTrained with {_versions()}.\n" if versions else "")


def lora_settings(spec: dict) -> str:
    """An adapter's settings as the card's LoRA row and the plan's lora row say them: "rank 16, alpha 32, dropout
    0.05; rsLoRA" (``spec``: spec.json's, or a RunSpec's lora keys)."""
    lora = f"rank {spec.get('lora_r')}, alpha {spec.get('lora_alpha')}, dropout {spec.get('lora_dropout')}"
    lora += "; rsLoRA" if spec.get("use_rslora") else ""
    return lora + ("; DoRA" if spec.get("use_dora") else "")


def _training_rows(spec: dict, plan: dict, directory, step: int | None) -> list[tuple[str, object]]:
    """The Training section's rows (training)."""
    method = spec.get("method") or plan.get("method")
    rows = [("method", method)]
    if method in ("lora", "qlora"):
        rows.append(("LoRA", lora_settings(spec)))
        rows.append(("adapted modules", _targets(spec.get("lora_target_modules"), directory)))
        if method == "qlora":
            rows.append(("base", "4-bit NF4 with double quantization (bitsandbytes)"))
    elif method == "sft":
        model = plan.get("model")
        layers = model.get("layers") if isinstance(model, dict) else None
        of = f" of {layers}" if layers else ""
        rows.append(("trained", f"the top {spec.get('trainable_layers')}{of} blocks and the output head"))
    rows.append(("data", _data(spec.get("data_path"))))
    starts, logged = _starts(directory)
    if went := _went_on(spec.get("resume"), spec.get("s3_endpoint_url"), starts):
        rows.append(("went on from", went))
    if phases := _phases(starts, step if step is not None else logged, said_went_on=bool(went)):
        rows.append(("phases", phases))
    if spec.get("eval_data_path"):
        rows.append(("held-out data", _data(spec.get("eval_data_path"))))
    elif spec.get("eval_split"):
        split = spec["eval_split"]
        rows.append(
            ("held-out data", f"{split * 100:.4g}% of the data" if _is_number(split) else f"{split} of the data")
        )
    rate = plan.get("learning_rate") or spec.get("learning_rate")
    if rate is not None:
        rows.append(("learning rate", _number(rate)))
    rows.append(("schedule", f"{spec.get('lr_scheduler_type')}, warm-up {_warmup(spec)}"))
    batch = plan.get("global_batch_size") or spec.get("global_batch_size")
    if batch:
        per, accumulation, world = (
            plan.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size")
        )
        how = f" ({per} a process x {accumulation} accumulation x {world} process{'es' if world != 1 else ''})"
        rows.append(("batch", f"{batch} sequences a step" + (how if per and accumulation and world else "")))
    max_steps, epochs = spec.get("max_steps"), spec.get("num_train_epochs")
    if _is_number(max_steps) and max_steps > 0:
        steps = f"{max_steps}"
    elif _is_number(epochs):
        steps = f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
    else:  # transformers' -1: epochs decide; those not known (null, missing) or not a number
        steps = f"{max_steps}" if max_steps not in (None, -1) else f"{epochs} epochs" if epochs is not None else None
    if steps is not None or step is not None:
        of = f" (a checkpoint of the run's {steps})" if steps else " (a checkpoint's)"
        rows.append(("steps", steps if step is None else f"{step}{of}"))
    packing = plan.get("packing")
    length = f"at most {spec.get('model_max_length')} tokens"
    rows.append(("sequence length", length + {True: ", packed", False: ", not packed"}.get(packing, "")))
    if loss := _loss_on(spec.get("assistant_only_loss"), directory):
        rows.append(("loss on", loss))
    if plan.get("precision"):
        rows.append(("precision", plan["precision"]))
    optim = plan.get("optim") or spec.get("optim")
    rows.append(
        (
            "optimizer",
            f"{optim + ', ' if optim else ''}weight decay {spec.get('weight_decay')}, "
            f"max grad norm {spec.get('max_grad_norm')}",
        )
    )
    rows.append(("seed", spec.get("seed")))
    return rows


def _starts(directory) -> tuple[list[dict], int | None]:
    """The start records of the run's metrics.jsonl beside ``directory`` or above it (a checkpoint's), oldest first,
    and the last step it logged (None: none, or no metrics.jsonl there). Only those lines are parsed (a long run's
    file holds a line a logged step)."""
    from ftctl.runpaths import METRICS_FILE
    from ftctl.trainer.trained import START

    for where in (Path(directory), Path(directory).parent) if directory is not None else ():
        try:
            lines = (where / METRICS_FILE).read_text().splitlines()
        except OSError:
            continue
        starts = [r for line in lines if START in line and (r := _record(line)).get("event") == "start"]
        for line in reversed(lines):
            record = _record(line) if '"step"' in line and START not in line else {}
            if _is_number(logged := record.get("step")) and "event" not in record:
                return starts, int(logged)
        return starts, None
    return [], None


def _record(line: str) -> dict:
    """A metrics.jsonl line's record; {} where it is none."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _phases(starts: list[dict], last: int | None, said_went_on: bool) -> str | None:
    """The phases of a run relaunched into its output with another learning rate or data (resume=auto, or a
    checkpoint of its own), each's steps, data and learning rate: ``steps 1-8: `a.json`, learning rate 0.0002; steps
    9-20: `b.json`, learning rate 0.0001``, from the start records of its metrics.jsonl (``starts``:
    checkpoints.settings.phases, the one reader of them); the data and learning-rate rows are the last phase's. The
    last phase ends at ``last`` (a checkpoint's step, else the last one logged). None for a run of one phase, or of
    two that the went-on-from row says (``said_went_on``)."""
    from ftctl.checkpoints.settings import phases

    said = [(first, values) for first, values in phases(starts) if last is None or first <= last]
    if len(said) < 2 or (said_went_on and len(said) == 2):
        return None
    parts = []
    for i, (first, values) in enumerate(said):
        end = said[i + 1][0] - 1 if i + 1 < len(said) else last
        steps = f"step {first}" if end == first else f"steps {first}-{end}" if end else f"steps {first} on"
        what = [_data(values["data_path"])] if isinstance(values.get("data_path"), str) else []
        if _is_number(rate := values.get("learning_rate")):
            what.append(f"learning rate {_number(rate)}")
        parts.append(f"{steps}: {', '.join(what)}" if what else steps)
    return "; ".join(parts)


def _went_on(resume, endpoint_url, starts: list[dict] = ()) -> str | None:
    """The checkpoint a run went on from (resume=PATH: another run's, or its output's own) and what its steps, the
    run's first ones, trained on at which learning rate (its manifest's settings: checkpoints.settings.went_on_from);
    the card's data and learning-rate rows are the last launch's, and said nothing of them (explore64). None where
    the run named none. A run started from an adapter (lora_model_dir) says so in its first paragraph (_started):
    a resume=PATH with it is refused."""
    from ftctl.checkpoints import checkpoint_step
    from ftctl.checkpoints.settings import went_on_from

    recorded = went_on_from(resume, endpoint_url, starts)
    if recorded is None:
        return None
    step = checkpoint_step(resume)
    steps = f"step {step}" if step == 1 else f"steps 1-{step}" if step else "its steps"
    said = [_data(recorded["data_path"])] if isinstance(recorded.get("data_path"), str) else []
    if _is_number(rate := recorded.get("learning_rate")):
        said.append(f"learning rate {_number(rate)}")
    return f"`{adapter_named(resume)}` ({steps}{': ' + ', '.join(said) if said else ''})"


def _warmup(spec: dict) -> str:
    """The warm-up in words, the one spec.warmup_of takes (RunSpec.warmup's): a share of the steps or a number."""
    warmup = warmup_of(spec.get("warmup_steps"), spec.get("warmup_ratio"))
    if not _is_number(warmup):
        return str(warmup)
    if not warmup:
        return "none"
    return f"{warmup * 100:.4g}% of the steps" if warmup < 1 else f"{warmup:g} step{'s' if warmup != 1 else ''}"


def _loss_on(assistant_only: object, directory) -> str | None:
    """Which tokens carried the loss: the run's own words where its metrics.jsonl is beside ``directory`` or above it
    (a checkpoint's), whose start record says so for the formats its data held (data.loss_on's ``loss_on``); else
    what assistant_only_loss decides for each kind of row (a card cannot know the rows' formats); None where neither
    is known (a spec.json without a true or false)."""
    from ftctl.runpaths import METRICS_FILE
    from ftctl.trainer.data import loss_on

    for where in (Path(directory), Path(directory).parent) if directory is not None else ():
        try:
            with open(where / METRICS_FILE) as f:
                for _, line in zip(range(100), f):  # the first start record: the file's first line
                    record = json.loads(line) if line.strip() else {}
                    if isinstance(record, dict) and record.get("event") == "start":
                        said = record.get("loss_on")
                        if isinstance(said, str) and said.isprintable() and 0 < len(said) <= 500:
                            return said
                        break
        except (OSError, ValueError):
            continue
    return loss_on(not assistant_only, None) if isinstance(assistant_only, bool) else None


def _targets(configured, directory) -> str:
    """The projections an adapter adapted: adapter_config.json's list where it is in ``directory`` (all-linear made
    into names), else the run's lora_target_modules as given."""
    try:
        named_there = json.loads(Path(directory, "adapter_config.json").read_text()).get("target_modules")
    except (AttributeError, OSError, TypeError, ValueError):  # AttributeError: a config that is no mapping
        named_there = None
    if isinstance(named_there, list) and named_there:
        return ", ".join(sorted(named_there))
    if isinstance(named_there, str) and named_there:
        return f"`{named_there}`"
    return ", ".join(configured) if isinstance(configured, list) else str(configured)


def _versions() -> str:
    """The versions of what trained it, as the Trainer's own card lists them."""
    from importlib.metadata import PackageNotFoundError, version

    said = [f"ftctl {__version__}"]
    for package in ("transformers", "trl", "peft", "torch"):
        try:
            said.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(said)


def _adapter_loads(method: str, plan, generation_config: bool) -> str:
    """The Python that loads the adapter with PEFT. A qlora adapter's onto its base in 4-bit NF4 as the run quantized
    it (model.nf4_config, computing in the run's precision), as `ftctl chat` and `ftctl merge` load it: the plain
    ``AutoPeftModelForCausalLM.from_pretrained("DIR")`` loaded the base unquantized, another model than the one
    trained (a 3-step qlora run of the demo's model: 67% of one conversation's next tokens alike). A base stored
    quantized (a *-bnb-4bit, GPTQ or AWQ model) loads as it is stored. ``generation_config``: the adapter's directory
    carries one (its base's stops elsewhere: trained.adapter_stops)."""
    from ftctl.trainer.model import DTYPES

    nf4 = method == "qlora" and not (plan is not None and plan.model.quantized)
    imports = ["import torch\n"] if nf4 else []
    imports.append("from peft import AutoPeftModelForCausalLM\n")
    transformers = [
        name for name, wanted in (("BitsAndBytesConfig", nf4), ("GenerationConfig", generation_config)) if wanted
    ]
    if transformers:
        imports.append(f"from transformers import {', '.join(transformers)}\n")
    if nf4:
        dtype = f"torch.{DTYPES[plan.precision if plan is not None else 'bf16']}"
        body = (
            "# the 4-bit NF4 base it trained over (without it: the unquantized base, another model)\n"
            "nf4 = BitsAndBytesConfig(\n"
            '    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, '
            f"bnb_4bit_compute_dtype={dtype}\n)\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("DIR", quantization_config=nf4, dtype={dtype})'
        )
    else:  # without device_map a GPU machine loaded it on the CPU (bench/NOTES.md v100); a 4-bit base lands on the GPU
        body = (
            'model = AutoPeftModelForCausalLM.from_pretrained("DIR", device_map="auto")  # the GPU where there is one'
        )
    if generation_config:
        body += '\nmodel.generation_config = GenerationConfig.from_pretrained("DIR")  # stops where its answers end'
    return "".join(imports) + "\n" + body


def _data(data_path: str | None) -> str:
    """The data a run trained on, as its card says it (named)."""
    return ", ".join(f"`{named(p)}`" for p in split_paths(data_path)) or "its data"


def merged_text(
    adapter: str,
    base: str,
    method: str | None,
    into: str,
    record: dict | None = None,
    directory=None,
    step: int | None = None,
    revision: str | None = None,
) -> str:
    """The card of `ftctl merge`'s output: the adapter ``adapter`` (as the user named it) of a ``method`` run merged
    into ``base`` (``into``: which weights of it, in words). Without it, the merged directory uploaded to the Hub
    (`hf upload`) had no card: no base_model, no library, no word of what it is. ``record``: the run's spec.json
    ({"spec": ..., "plan": ...}; None where the adapter has none): its data and hyperparameters (training), the
    adapter's projections read in ``directory``; ``step``: the adapter is the run's checkpoint of that step;
    ``revision``: the commit of ``base`` merged into (the one its run pinned: Trained.base_revision)."""
    linked = hub_id(base)
    data = ModelCardData(
        base_model=linked,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["ftctl", *([method] if method else []), "trl", "sft"],
        **base_license(base),
    )
    origin = f"[{base}](https://huggingface.co/{base})" if linked else f"`{named(base)}`"
    origin += pinned_at(base, revision)
    kind = "QLoRA" if method == "qlora" else "LoRA"
    built = _demo_base(base, adapter=False) if is_demo_model(base) else ""
    body = f"""
# {Path(adapter.rstrip("/")).name}

The {kind} adapter `{adapter_named(adapter)}` merged into {origin} ({into}) with `ftctl merge` (ftctl {__version__}): a plain
transformers model, loaded without PEFT or bitsandbytes. `ftctl-merge.json` beside this card says which adapter and
which base weights went in.{built}

## Use it

```python
from transformers import pipeline

generator = pipeline("text-generation", model="DIR")  # this directory, or its Hub id once uploaded
answer = generator([{{"role": "user", "content": "A question"}}], max_new_tokens=256)
print(answer[0]["generated_text"][-1]["content"])
```

Served by vLLM: `vllm serve DIR`.
{training(record["spec"], record.get("plan"), directory, False, step) if record and record.get("spec") else ""}"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def adapter_named(adapter: str) -> str:
    """An adapter as a merge's card names it (named): a checkpoint with its run's name (``r1/checkpoint-6``)."""
    name = named(adapter)
    parent = Path(adapter.rstrip("/")).parent.name
    return f"{parent}/{name}" if name.startswith("checkpoint-") and name != adapter and parent else name


def write_merged(
    directory, adapter: str, base: str, method: str | None, into: str, trained=None, revision: str | None = None
) -> None:
    """``trained``: the adapter's local directory, where its run's spec.json is read (beside it or above it);
    ``revision``: the commit of ``base`` merged into (merged_text)."""
    from ftctl.checkpoints import checkpoint_step
    from ftctl.trainer.trained import run_record

    record = run_record(str(trained)) if trained is not None else None
    step = checkpoint_step(str(adapter)) if record else None
    _save(merged_text(adapter, base, method, into, record, trained, step, revision), directory)


def _save(card: str, directory) -> None:
    """README.md written whole: beside it first, then renamed over the one there (TRL's, PEFT's, the last
    checkpoint's), so a run stopped while writing it leaves one card or the other, never half of one."""
    write_whole(Path(directory, README), str(ModelCard(card)))  # a full disk leaves no .README.md.tmp either


def _demo_base(base: str, adapter: bool) -> str:
    """The demo's base is not the Hub's weights of its id but ftctl's build of them (ftctl.trainer.model), which every
    ftctl builds alike: an adapter loaded onto the Hub's is on other weights than it trained with (explore17)."""
    from ftctl.trainer.model import DEMO_SOURCE

    line = (
        f"\n\nIts base is ftctl's build of {base} ({DEMO_SOURCE}), not the Hub's weights, which differ by that rounding"
    )
    if adapter:
        line += ": loaded onto those, the adapter is not on the weights it trained with; `ftctl chat` and `ftctl merge` load ftctl's build"
    return line + "."


def _method(method: str) -> str:
    return {
        "fft": "A full fine-tune",
        "sft": "A fine-tune of the top layers",
        "lora": "A LoRA adapter",
        "qlora": "A QLoRA adapter (trained over the 4-bit base)",
    }[method]


def write(directory: str, spec: RunSpec, base: str, adapter: bool, step: int | None = None, plan=None) -> None:
    """The card into ``directory``, replacing TRL's or PEFT's (written at each checkpoint and with the final model);
    ``step``: ``directory`` is the run's checkpoint-<step>; ``plan``: the run's (text)."""
    _save(text(spec, base, adapter, directory, step, plan), directory)
