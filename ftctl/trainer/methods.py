"""The one place where fft, sft, lora and qlora differ: which parameters train.

    fft    every weight
    sft    the top ``trainable_layers`` transformer blocks, the final norm and the head; the rest frozen
    lora   PEFT LoRA adapters (r, alpha, dropout; all linear projections by default) over a frozen base
    qlora  the same adapters over the 4-bit NF4 base that model.py loaded (prepare_kbit: frozen, input
           grads for gradient checkpointing; PEFT's fp32 upcast of the rest only under fp16)

Under bf16/fp16 autocast the LoRA adapters keep fp32 weights (their updates are small: bf16 would lose
them) but take their input as it comes (adapter_inputs_as_is): autocast runs their matmuls in 16 bits
either way, and PEFT's cast of every adapter's input to fp32 only adds copies and an fp32 dropout.
fft/sft keep fp32 master weights under bf16 autocast, but the residual stream between the layers runs in
bf16 (hidden_states_in_autocast_dtype), as it does for DeepSpeed/FSDP's 16-bit working weights and the peer.
An adapter adds its scaled output to the base projection's inside one matmul (fused_adapter_output).

Everything else (loading, data, the Trainer, checkpoints) is shared.
"""

from __future__ import annotations

import copy
import json
import logging
import os

from ftctl.errors import FtctlError, did_you_mean
from ftctl.plan import FUSED_ADAPTER_STRATEGIES

log = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "qlora")


def apply_method(model, spec, plan, resume_from: str | None = None):
    """Make ``model`` train what the plan's method trains; returns the model to train (maybe a PeftModel). A LoRA
    run that resumes ``resume_from`` adapts the modules that checkpoint holds adapters for (checkpoint_targets); one
    with lora_model_dir those of that adapter, whose weights its adapters start from (start_from_adapter; a resume
    loads its checkpoint's over them)."""
    method = plan.method
    if method == "fft":
        model.requires_grad_(True)
    elif method == "sft":
        freeze_below_top_blocks(model, spec.trainable_layers)
    elif method in ADAPTER_METHODS:
        if method == "qlora":
            training_layout(model)
            model = prepare_kbit(model, plan)
        from peft import get_peft_model

        config = lora_config(spec, model)
        if resume_from or spec.lora_model_dir:
            config = checkpoint_targets(config, resume_from or spec.lora_model_dir, model, resumed=bool(resume_from))
        model = get_peft_model(model, config)
        if spec.lora_model_dir and not resume_from:
            start_from_adapter(model, spec.lora_model_dir)
        if plan.precision in ("bf16", "fp16"):
            adapter_inputs_as_is(model)
        if plan.strategy in FUSED_ADAPTER_STRATEGIES:
            fused_adapter_output(model, kernels=plan.lora_kernels)
    else:  # pragma: no cover - spec.validate refuses other methods
        raise FtctlError(f"Unknown method {method!r}.")
    if method in ("fft", "sft") and plan.precision == "bf16":
        hidden_states_in_autocast_dtype(model)
    trainable, total = count_parameters(model)
    log.info(
        "%s: %s of %s parameters trainable (%.2f%%)",
        method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return model


def prepare_kbit(model, plan):
    """The 4-bit base made ready for adapters. PEFT's prepare_model_for_kbit_training casts every
    weight that is not 4-bit (embeddings, head, norms) to fp32: needed with fp16 compute, but with bf16
    it makes the whole residual stream fp32, which costs time and memory for nothing the bf16 TRL peer
    has (on an H200, 8B QLoRA: 8,968 tok/s and 271 kB of activations per token and layer with it,
    bench/NOTES.md). So with bf16 (and fp32 on CPU) the base only freezes, and takes input gradients
    where gradient checkpointing needs them."""
    if plan.precision == "fp16":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model.requires_grad_(False)
    if plan.gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def training_layout(model) -> int:
    """Keep bitsandbytes' 4-bit layers in their training layout. On a CPU with AVX512-BF16 a Linear4bit repacks its
    weight for inference at its first forward in eval mode without grad (the held-out loss), for good, and its matmul
    then has no backward: every step after the first evaluation sent no gradient through the frozen base, so the
    adapters below the top layer stopped learning (measured: zero gradients). GPUs never repack. Returns the layers
    changed."""
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def adapter_inputs_as_is(model) -> int:
    """Stop PEFT from casting each adapter's input to the adapter's fp32 dtype (what
    ``peft.helpers.disable_input_dtype_casting`` does for the length of a block, here for the run).
    Only for training under autocast: there the 16-bit input meets the fp32 adapter in a 16-bit matmul
    anyway, and the fp32 master weights and their gradients stay fp32. Returns the layers changed."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def fused_adapter_output(model, kernels: bool = False) -> int:
    """Each LoRA projection's ``base(x) + B(A(dropout(x))) * scaling`` as ``addmm(base(x), A(dropout(x)),
    B^T, alpha=scaling)``: the scaling and the sum happen in the matmul's epilogue instead of two more
    passes over the projection's output (and the scaling's pass in the backward), and PEFT's defensive copy
    of the 4-bit base's output goes (addmm writes a new tensor). The same sum, rounded once instead of three
    times; the gradients are the same products. Measured on an H200 (bench/NOTES.md, v7): the 16-wide addmm
    costs about what PEFT's three ops did (bench/lora_sum.py: the same within noise at these sizes), the 8B
    qlora step's kernels fell 25 ms, and the host-bound 1B lora/qlora rows gained 4-5% from launching fewer
    ops. Only PEFT's plain case takes this path (one active vanilla adapter, not merged, no
    bias, no extra arguments); anything else runs PEFT's forward. With ``kernels`` (the plan's
    ``lora_kernels``) the adapter's dropout and A run as trainer/lora_dropout.py's kernels in training
    and B's output is added into the base's in place by trainer/lora_up.py's (instead of the addmm); in
    training with a dropout the whole projection is one autograd node (trainer/lora_projection.py).
    Returns the layers changed."""
    import types

    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import LoraLayer

    bases = (torch.nn.Linear, bnb.nn.Linear4bit)  # lora's 16-bit projections, qlora's 4-bit ones
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and isinstance(m.base_layer, bases)]
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)
        layer.ftctl_lora_kernels = kernels
    return len(layers)


def _fused_forward(self, x, *args, **kwargs):
    import torch

    from ftctl.trainer import lora_dropout, lora_projection, lora_up

    active = [a for a in self.active_adapters if a in self.lora_A]
    name = active[0] if len(active) == 1 else None
    if (
        name is None
        or args
        or kwargs
        or self.disable_adapters
        or self.merged
        or name in self.lora_variant
        or self.lora_B[name].bias is not None
        # without autocast the base's output has x's dtype: one dtype for the three matmuls, or PEFT's casts
        or not (
            torch.is_autocast_enabled(x.device.type)
            or x.dtype == self.lora_A[name].weight.dtype == self.lora_B[name].weight.dtype
        )
    ):
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b, dropout = self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
    # the dropout kernels' case: training, a real dropout module, A without a bias
    kernel_dropout = (
        self.training and self.ftctl_lora_kernels and isinstance(dropout, torch.nn.Dropout) and lora_a.bias is None
    )
    if kernel_dropout and lora_projection.usable(self.base_layer, x, lora_a.weight, lora_b.weight, dropout.p):
        # the base, dropout + A and B's sum as one autograd node
        return lora_projection.apply(self.base_layer, x, lora_a.weight, lora_b.weight, dropout.p, self.scaling[name])
    result = self.base_layer(x)
    if (
        kernel_dropout
        and x.dtype
        == (
            torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else lora_a.weight.dtype
        )
        and lora_dropout.usable(x, lora_a.weight, dropout.p)
    ):
        h = lora_dropout.dropout_down(x, lora_a.weight, dropout.p)  # no dropped copy of x kept
    else:
        h = lora_a(dropout(self._cast_input_dtype(x, lora_a.weight.dtype)))
    if self.ftctl_lora_kernels and lora_up.usable(result, h, lora_b.weight):
        return lora_up.add_into(result, h, lora_b.weight, self.scaling[name])  # in place, one pass
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), lora_b.weight.t(), alpha=self.scaling[name]
    )
    return out.view(result.shape)


def hidden_states_in_autocast_dtype(model):
    """Hand the embedding's output to the first block in autocast's 16-bit dtype (a forward hook; only
    while autocast is on). With fp32 master weights the embedding otherwise returns fp32, and the whole
    residual stream follows: every block then adds in fp32 and autocast casts each projection's input
    to bf16 again (five casts a block forward, five back). On an H200 those copies were 21 ms of a 0.315 s
    1B fft step (bench/NOTES.md, v3). The weights and their gradients stay fp32; only bf16, not fp16,
    whose narrow range an fp32 residual protects. Returns the hook's handle."""
    import torch

    def cast(module, args, output):
        device = output.device.type
        if torch.is_autocast_enabled(device) and output.is_floating_point():
            return output.to(torch.get_autocast_dtype(device))
        return output

    return model.get_input_embeddings().register_forward_hook(cast)


def lora_config(spec, model=None):
    """PEFT's LoraConfig of the spec; with ``model``, its target modules checked against it (lora_targets) and its
    dropout against its experts (adapter_dropout)."""
    from peft import LoraConfig

    targets = lora_targets(spec, model)
    experts = expert_weights(model) if targets == "all-linear" and model is not None else []
    if targets == "all-linear" and model is not None:
        targets = all_linear(model, experts)
    fused = {}
    if experts:  # all-linear of a mixture of experts: expert_weights
        gate_up = {r".*\.experts\.gate_up_proj": 2}  # gate and up fused: each at rank r, as PEFT adapts them
        fused = dict(
            target_parameters=experts,
            rank_pattern={k: n * spec.lora_r for k, n in gate_up.items()},
            alpha_pattern={k: n * spec.lora_alpha for k, n in gate_up.items()},
        )
    return LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=adapter_dropout(spec, model),
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,  # a LoRA variant: _fused_forward hands such layers to PEFT's own forward
        **fused,
    )


def all_linear(model, experts: list[str] = ()) -> str | list[str]:
    """lora_target_modules all-linear as PEFT takes it for ``model``: every linear layer of its language model but
    the output head. "all-linear", PEFT's own, where that is what PEFT adapts; a mixture of experts' (``experts``,
    expert_weights) the names of its linear layers, so that PEFT's map of transformers 4's expert names adds no
    router; a multimodal model's (Gemma 3 4B-27B: Gemma3ForConditionalGeneration, Mistral 3, Qwen2.5-VL) a regular
    expression of its language model's linear layers (language_model). PEFT's all-linear adapted the vision tower's
    linear layers too (Gemma 3's SigLIP: at r=16, 38.7M adapter weights of 4B where its language model's are 29.8M,
    122.4M of 27B for 113.5M), which ftctl's text rows never reach: adapters with zero gradients and their optimizer
    state, beyond the plan's count (the language model's); Unsloth's default leaves them out too."""
    import re

    within = language_model(model)
    if not within:
        return linear_layer_names(model, head=False) if experts else "all-linear"
    names = "|".join(map(re.escape, linear_layer_names(model.get_submodule(within), head=False)))
    return rf"{re.escape(within)}\.(?:.*\.)?(?:{names})"


def language_model(model) -> str:
    """The name of a multimodal model's language model (Gemma 3's model.language_model: get_decoder()) where the
    model has linear layers outside it but for its output head (a vision tower, a projector); "" for a model that
    is its language model and its head."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    within = next((name for name, m in model.named_modules() if m is decoder and name), "")
    head = model.get_output_embeddings()
    outside = (
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head and not name.startswith(f"{within}.")
    )
    return within if within and next(outside, None) else ""


# what decides which modules a LoRA checkpoint's adapters sit on, and their shapes, in its adapter_config.json
ADAPTED = (
    "target_modules",
    "target_parameters",
    "exclude_modules",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
)


def checkpoint_targets(config, checkpoint: str, model, resumed: bool = True):
    """``config`` (lora_config's) with the adapted modules of the checkpoint a run resumes, as PEFT resolved and
    saved them in its adapter_config.json (ADAPTED). transformers' resume loads a checkpoint's adapters into the
    run's PeftModel without a word about the ones it lacks or holds beside them: where this ftctl (585ecd6: the
    experts, not the router, of a mixture of experts) or PEFT resolves lora_target_modules (the same all-linear)
    otherwise than the run that saved it, the trained adapters the new model lacked were dropped, the new ones
    started from their init, and the run stopped at torch's 'loaded state dict contains a parameter group that
    doesn't match the size of optimizer's group'. Said where they differ; a checkpoint whose adapter_config.json
    cannot be read, or whose modules the model lacks, is refused. The run's later checkpoints and final adapter hold
    the same modules: their adapter_config.json is the record of it. ``resumed`` False: ``checkpoint`` is the adapter
    a run starts from (lora_model_dir), said so."""
    from ftctl.trainer.distributed import processes

    name = os.path.basename(os.path.normpath(checkpoint))
    doing, other = ("resume", "Resume another checkpoint (-o resume=PATH)") if resumed else ("start from", "")
    other = other or "Name another adapter (-o lora_model_dir=DIR)"
    path = os.path.join(checkpoint, "adapter_config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not saved.get("target_modules") and not saved.get("target_parameters"):
            raise ValueError("it names no target_modules")
    except (OSError, ValueError) as e:
        raise FtctlError(
            f"Cannot {doing} {checkpoint}: its adapter_config.json, which says which modules its LoRA adapters are "
            f"on, cannot be read ({e}). {other}, or give another --output to train from the start."
        ) from None
    resumed, blank = copy.deepcopy(config), type(config)()
    for key in ADAPTED:
        if hasattr(resumed, key):
            setattr(resumed, key, saved.get(key, getattr(blank, key)))
    if resumed.target_parameters and resumed.lora_dropout:  # PEFT's ParamWrapper: adapter_dropout
        resumed.lora_dropout = 0.0
    if missing := _unmatched(resumed, model):
        raise FtctlError(
            f"Cannot {doing} {checkpoint}: its LoRA adapters are on {', '.join(missing)}, which "
            f"{model.config.name_or_path or 'the model'} has no module named (another transformers names them "
            f"otherwise?). {doing.capitalize()} it with the versions it was trained with, or "
            f"{'give another --output to train' if resumed else 'train new adapters'} from the start."
        )
    then, now = _adapted(resumed, model), _adapted(config, model)
    if then != now and processes().is_main:
        doing = "resuming with" if resumed else "starting from"
        log.warning("%s %s's adapters on %s: a new run would adapt %s", doing, name, _said(then), _said(now))
    return resumed


def start_from_adapter(model, directory: str) -> int:
    """The adapters of ``model`` (get_peft_model's, on the modules of the adapter in ``directory``:
    checkpoint_targets) given that adapter's weights, as PEFT's from_pretrained(..., is_trainable=True) loads them:
    the run trains them on from step 0, its optimizer and schedule fresh (lora_model_dir). Every adapter weight must
    come from the file and every one of the file's must find its place: refused otherwise, naming one. Returns the
    tensors loaded."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    from ftctl.trainer.distributed import processes

    weights = load_peft_weights(directory, device="cpu")
    loaded = set_peft_model_state_dict(model, weights)
    missing = [k for k in loaded.missing_keys if "lora_" in k]  # (the base's weights are missing by design)
    if missing or loaded.unexpected_keys:
        what = f"lacks {missing[0]}" if missing else f"holds {loaded.unexpected_keys[0]}, which this model has not"
        raise FtctlError(
            f"lora_model_dir={directory}: its adapter {what} ({len(missing) + len(loaded.unexpected_keys)} such "
            "weights): it was saved by another kind of adapter or model; train new adapters without lora_model_dir."
        )
    if processes().is_main:
        log.info(
            "adapters start from %s (%d weights), at step 0 with a fresh optimizer and schedule",
            directory,
            len(weights),
        )
    return len(weights)


def _adapted(config, model) -> dict[str, str]:
    """The modules and parameters a LoraConfig adapts in ``model``: each full name, and its end as said (q_proj;
    a parameter's with its module's: experts.gate_up_proj, gate.weight)."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    config = _maybe_include_all_linear_layers(copy.deepcopy(config), model)
    if config.target_modules is None:  # PEFT_TARGETS: PEFT's for the model's type
        config.target_modules = PEFT_DEFAULTS.get(getattr(model.config, "model_type", None))
    modules = model.named_modules() if config.target_modules else ()
    found = {n: n.rsplit(".", 1)[-1] for n, _ in modules if check_target_module_exists(config, n)}
    params = tuple(f".{t}" for t in config.target_parameters or ())
    return found | {n: ".".join(n.split(".")[-2:]) for n, _ in model.named_parameters() if n.endswith(params)}


def _said(adapted: dict[str, str]) -> str:
    """q_proj, v_proj (4): what is adapted, and how many."""
    return f"{', '.join(sorted(set(adapted.values())))} ({len(adapted)})"


def _unmatched(config, model) -> list[str]:
    """The target modules, parameters and modules_to_save of ``config`` that match nothing of ``model`` as PEFT
    matches them (the name or its end after a dot; a string: a regular expression of the whole name)."""
    import re

    modules = [name for name, _ in model.named_modules()]
    params = [name for name, _ in model.named_parameters()]
    experts = peft_expert_names(model)

    def absent(t, names):
        return t not in experts and not any(m == t or m.endswith(f".{t}") for m in names)

    targets = config.target_modules
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, m) for m in modules) else [targets]
    else:
        missing = [t for t in targets or () if absent(t, modules)]
    missing += [t for t in config.target_parameters or () if absent(t, params)]
    return missing + [t for t in config.modules_to_save or () if absent(t, modules)]


def expert_weights(model) -> list[str]:
    """A mixture of experts' fused expert weights (transformers 5: 3-D parameters of a module named experts), as
    LoraConfig's target_parameters takes them: ["experts.down_proj", "experts.gate_up_proj"]; [] for a dense model.

    all-linear adapts them and the model's linear layers but for the output head, never the router, on every MoE
    family. PEFT's own all-linear adapted the router too (Qwen3-MoE, Mixtral, GLM-4-MoE, DeepSeek-V3: its map of
    transformers 4's names, where the router was a Linear named gate), which MoE recipes leave out (Unsloth: router
    training off by default, for stability), and no expert at all of gpt-oss or Qwen3.5-MoE, which the plan counts.
    Where PEFT maps transformers 4's names (the four above), a Linear named gate_proj/up_proj/down_proj outside the
    experts (a dense first layer, shared experts) is taken for an expert's and is not adapted: PEFT 0.21's doing."""
    names = set()
    for name, p in model.named_parameters():
        module, _, param = name.rpartition(".")
        if module.rsplit(".", 1)[-1] == "experts" and len(getattr(p, "ds_shape", p.shape)) == 3:  # ZeRO-3's: flat
            names.add(f"experts.{param}")
    return sorted(names)


def adapter_dropout(spec, model=None) -> float:
    """lora_dropout, but 0 where all-linear, or an expert's name PEFT maps (peft_expert_names: the field's gate_proj,
    up_proj, down_proj), adapts a mixture of experts' fused expert weights (transformers 5's Qwen3-MoE, Mixtral,
    DeepSeek: 3-D parameters, not nn.Linear): PEFT's adapter for them (ParamWrapper) takes no dropout, and every MoE
    LoRA run with the default 0.05 stopped at the model's wrapping. A dropout the run set itself is refused there
    instead, with the two ways on."""
    from ftctl.spec import FIELDS, lora_target_names

    names = lora_target_names(spec.lora_target_modules)
    if not spec.lora_dropout or model is None or not isinstance(names, list) and names != "all-linear":
        return spec.lora_dropout
    if isinstance(names, list) and not set(names) & peft_expert_names(model):
        return spec.lora_dropout
    if not expert_weights(model):  # a 3-D weight elsewhere (Qwen3.5's conv1d, SigLIP's probe) is no expert
        return spec.lora_dropout
    if spec.lora_dropout != FIELDS["lora_dropout"].default:
        which = "all-linear" if names == "all-linear" else ",".join(names)
        raise FtctlError(
            f"lora_dropout={spec.lora_dropout:g}: {which} adapts {spec.model_name_or_path}'s fused expert weights, "
            "which PEFT's LoRA trains without dropout: -o lora_dropout=0, or adapt the attention alone "
            "(-o lora_target_modules=q_proj,k_proj,v_proj,o_proj)."
        )
    log.info("lora_dropout 0: PEFT's adapters of a mixture of experts' fused expert weights take no dropout")
    return 0.0


def lora_targets(spec, model=None) -> str | list[str] | None:
    """lora_target_modules as PEFT takes it: "all-linear", or the list of names; None (PEFT picks them for the
    model's type) for PEFT_TARGETS that nobody could name (plan.with_lora_targets). With ``model``, every name must
    match one of its modules as PEFT matches them (the module's name, or its end after a dot: q_proj matches
    model.layers.0.self_attn.q_proj): PEFT silently leaves out a name that matches nothing beside one that matches
    (a typo trains fewer adapters than asked), and where none matches fails with a dump of every module. A name
    that matches nothing is refused here, before the adapters are made, with the model's linear layers to name."""
    from ftctl.spec import PEFT_TARGETS, lora_target_names

    names = lora_target_names(spec.lora_target_modules)
    if names == PEFT_TARGETS:
        return None
    if model is None or names == "all-linear":
        return names
    modules = [name for name, _ in model.named_modules()]
    experts = peft_expert_names(model)
    missing = [t for t in names if t not in experts and not any(m == t or m.endswith(f".{t}") for m in modules)]
    if missing:
        linear = linear_layer_names(model)
        which = " or ".join(map(repr, missing))
        hints = "".join(dict.fromkeys(did_you_mean(t, linear + sorted(experts)) for t in missing))
        if experts:
            hints += f" Its experts and router (gate), as PEFT names them: {', '.join(sorted(experts))}."
        raise FtctlError(
            f"lora_target_modules: no module of {spec.model_name_or_path} is named {which}.{hints} Its linear "
            f"layers: {', '.join(linear)}; name some of them, comma-separated (-o lora_target_modules=q_proj,v_proj), "
            "or give all-linear for every one but the output head."
        )
    return names


def peft_expert_names(model) -> set[str]:
    """transformers 4's names of a mixture of experts' projections and router (Qwen2/3-MoE's gate_proj, up_proj,
    down_proj, gate; Mixtral's w1, w2, w3, gate), which are no module of transformers 5's fused experts but which
    PEFT maps onto them: the field's Qwen3-MoE and Mixtral recipes name them. Empty where PEFT maps none."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:  # pragma: no cover - a PEFT without the map (before transformers 5)
        return set()
    base = getattr(conversion, "_MODEL_TO_CONVERSION_PATTERN", {}).get(getattr(model.config, "model_type", None))
    return set(getattr(conversion, "_MOE_TARGET_MODULE_MAPPING", {}).get(base) or ())


def linear_layer_names(model, head: bool = True) -> list[str]:
    """The names (their last part, as lora_target_modules takes them) of the model's linear layers, in the model's
    order: q_proj, k_proj, ... lm_head (not with ``head=False``). bitsandbytes' 4-bit layers are torch Linear
    layers; GPT-2's Conv1D counts."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:  # pragma: no cover - transformers always has it
        pass
    out = None if head else model.get_output_embeddings()
    return list(
        dict.fromkeys(
            name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, kinds) and m is not out
        )
    )


def transformer_blocks(model):
    """The model's list of transformer blocks: the ModuleList with num_hidden_layers entries, of its language model
    (a multimodal one's, as Gemma 3 4B-27B are: its config's text config; not its vision tower's layers)."""
    import torch

    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    within = next((name + "." for name, m in model.named_modules() if m is decoder and name), "")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name.startswith(within):
            return name, module
    raise FtctlError(
        f"method sft: cannot find the transformer blocks of {type(model).__name__}; "
        "use method fft or lora for this model."
    )


def freeze_below_top_blocks(model, k: int) -> list[str]:
    """Freeze everything, then unfreeze the top ``k`` blocks, the final norm and the head.

    Returns the names of the trainable parameters. With tied input/output embeddings the head is
    the embedding matrix, which then trains too."""
    import torch

    name, blocks = transformer_blocks(model)
    if k > len(blocks):
        raise FtctlError(
            f"trainable_layers={k} but the model has {len(blocks)} blocks: use at most "
            f"{len(blocks)} (or method fft to train everything)."
        )
    model.requires_grad_(False)
    for block in list(blocks)[-k:]:
        block.requires_grad_(True)
    model.get_output_embeddings().requires_grad_(True)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    for norm in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(parent, norm, None), torch.nn.Module):
            getattr(parent, norm).requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 leaves an empty placeholder on each rank
        if hasattr(p, "quant_state") or type(p).__name__ == "Params4bit":
            n *= 2  # bitsandbytes packs two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
