"""``ftctl chat RUN``: talk to what a run trained, through the chat template it trained with.

RUN is a run's output directory (its final model or adapter, else its newest complete checkpoint:
ftctl.trainer.trained), one of its ``checkpoint-<step>`` directories, a run's output in object storage (its
top-level files downloaded to a temporary directory, else its newest committed checkpoint's; a checkpoint or merge
there with its run's spec.json, as a local one reads it), or a model id or directory (the base, to compare
against). On a GPU the weights load in the run's 16-bit precision (bf16 when the run trained in fp32),
spread over the GPUs there are; on CPU in fp32. An adapter stays unmerged, on its base
as the run trained it: a qlora adapter on the 4-bit NF4 base (what it learned against, and what fits where
the run fit).

Decoding is greedy unless ``temperature`` > 0 (then sampled, with ``top_p`` where given). The rest is the model's
generation config (its generation_config.json), as ``model.generate()`` takes it in the user's own code: a
repetition_penalty in greedy decoding too, top_k and (without ``top_p``) top_p when sampling; the answer stops at its
eos ids, the tokenizer's eos and the chat template's end of turn (stop_ids). With prompts given
(``-p``) each is one single-turn question and only the answers are printed; without, the lines read
from stdin are one conversation (``/new`` starts another; an empty line or end of input stops), the
oldest turns dropped when it outgrows the model's context. ``--compare`` answers each prompt with the run's
base too (:meth:`Loaded.base`); ``ftctl eval`` scores the same pair on a dataset (trainer/heldout.py).

A run that trained on plain text only (``text`` rows, prompt-completion strings: no roles, no chat template;
its metrics.jsonl says, trained.Trained.plain_text) is prompted as it trained: each prompt is continued as
written (the tokenizer's bos first), with no template and no conversation history. ``--plain-text`` and
``--chat-template`` choose either way for any model (a merged run, a base model).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.runpaths import RUN_RECORDS

log = logging.getLogger(__name__)

NEW_CONVERSATION = "/new"


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None  # None: the model's generation config's, as generate() takes it (1.0 where it has none)
    system: str | None = None  # a system message before every conversation

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise FtctlError(f"--max-new-tokens {self.max_new_tokens}: give at least 1.")
        if not 0 <= self.temperature < float("inf"):  # nan too: it sampled from nan probabilities
            raise FtctlError(f"--temperature {self.temperature}: give 0 (greedy) or more, a finite number.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise FtctlError(f"--top-p {self.top_p}: give a value in (0, 1].")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    what: str  # one line: what was loaded, in what precision, where
    found: object = None  # the trained.Trained it came from (None: a plain model)
    precision: str = "fp32"
    download: object = None  # the temporary directory a run in object storage was downloaded to (kept while loaded)
    plain_text: bool = False  # prompts continued as written, without the chat template

    @contextlib.contextmanager
    def base(self):
        """The model the run started from, for a side-by-side answer: the adapter switched off, or the base of a
        full-model run loaded beside it."""
        if self.found is None:
            raise FtctlError("--compare needs a run (its output directory or a checkpoint), not a plain model.")
        if self.found.adapter:
            with self.model.disable_adapter():
                yield self.model
            return
        import torch

        from ftctl.trainer import trained as trained_mod
        from ftctl.trainer.model import resolve_model

        revision = self.found.base_revision  # the commit the run pinned, not the Hub's main as it is now
        plain = trained_mod.Trained(Path(resolve_model(self.found.base, revision=revision)), False, revision)
        if changed := trained_mod.compared_base_trained_on(self.found, str(plain.path)):  # another run, trained on
            log.warning("%s", changed)
        yield trained_mod.load(plain, self.precision, device_map="auto" if torch.cuda.is_available() else None).eval()


@dataclass(frozen=True)
class Located:
    """What :func:`load` loads, found before any weights are read (locate): ``ftctl eval A B`` finds every RUN first,
    so a typo in the last is said before the first one loads."""

    target: str  # RUN as given, or the checkpoint while_training chose of a run that trains now
    found: object = None  # the trained.Trained to load; None: a run in object storage (downloaded as it loads)
    plain: bool = False  # a model id: the base itself


def locate(target: str, echo=None, command: str = "chat") -> Located:
    """Which weights :func:`load` would load from ``target`` (a run, a checkpoint, a model id), without reading them,
    FtctlError where there are none: a local run's are found (trained.find), a model id is looked up (the Hub asked
    once), a run in object storage is listed (its files download as it loads). ``echo``, ``command``: as load's."""
    from ftctl import storage
    from ftctl.trainer import trained as trained_mod

    if storage.is_remote(target) or Path(target).expanduser().is_dir():
        target = while_training(target, command, echo or (lambda line: log.warning("%s", line)))
    if storage.is_remote(target):
        with storage.storage_errors(target, None):
            there = storage.ls(target)
        if not there:
            raise FtctlError(
                f"Nothing is at {target}: give a run's output in object storage (or one of its checkpoints), as "
                "`ftctl status` names it."
            )
        return Located(target)
    if Path(target).expanduser().is_dir() or "://" in target or _path_shaped(target):
        return Located(target, trained_mod.find(target))  # a directory that is not there is said as merge says it
    return Located(target, _model_id(target), plain=True)  # ORG/NAME, no directory here: a model id, the base itself


def load(target: str | Located, plain_text: bool | None = None, echo=None, command: str = "chat") -> Loaded:
    """The model (with its adapter) and tokenizer of a run, a checkpoint, or a plain model (or of what
    :func:`locate` found of one). ``plain_text``: prompt without the chat template (None: as the run trained);
    ``echo`` is told what is loading, before the weights are read (a 7B model on CPU takes minutes), and first, where
    the run trains now, what that loads (while_training; ``command``: the ftctl command loading it, named in that
    line), or, a merge its run has trained on past since (merge.trained_since, what a merge into it again refuses
    with), that."""
    import torch
    from transformers import AutoTokenizer

    from ftctl import storage
    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.masks import ensure_chat_template
    from ftctl.trainer.merge import trained_since

    located = target if isinstance(target, Located) else locate(target, echo, command)
    target, found, plain, download = located.target, located.found, located.plain, None
    if found is None:  # in object storage: its top-level files, the final model or adapter
        download = tempfile.TemporaryDirectory(prefix="ftctl-chat-")
        target, local = _download(target, download.name)
        found = trained_mod.find(local, store=target)  # a newer checkpoint a relaunch left past its final model
    if not plain and not found.adapter and (note := trained_since(str(found.path), target if download else None)):
        (echo or (lambda line: log.warning("%s", line)))(note)  # a merge of the run before it trained on
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        precision = found.precision if found.precision in ("bf16", "fp16") else "bf16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            precision = "fp16"
    else:
        precision = "fp32"
    plain_text = found.plain_text if plain_text is None else plain_text
    where = target if download or not Path(target).expanduser().is_dir() else found.path
    if download and found.path.name != Path(local).name:  # that checkpoint of the store's run
        where = storage.join(target.rstrip("/"), found.path.name)
    if found.adapter:
        what = f"LoRA adapter {where} on {found.base}" + (" in 4 bits" if found.method == "qlora" else "")
    else:
        what = f"model {where}"
    where = "GPU" if on_gpu else "CPU"
    what = f"{what}, {precision} on {where}" + (", plain text: prompts continued as written" if plain_text else "")
    if echo:
        echo(f"loading the {what} ...")
    try:
        model = trained_mod.load(found, precision, device_map="auto" if on_gpu else None, as_trained=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(trained_mod.tokenizer_source(found))
    except OSError as e:  # transformers' own: a model the Hub does not have, or cannot be reached for
        raise FtctlError(
            f"Cannot load {target}: {_not_here() if plain else ''}{str(e).strip().splitlines()[0]} Give a run's "
            "output directory, one of its checkpoints, or a model id this machine can read (HF_TOKEN for a gated one)."
        ) from None
    if not plain_text and (note := ensure_chat_template(tokenizer)):
        log.warning("%s", note)
    return Loaded(model, tokenizer, what, None if plain else found, precision, download, plain_text)


def while_training(run: str, command: str, echo) -> str:
    """What loads from ``run`` where it trains now (trained.unfinished), said to ``echo`` in one line first: chatting
    with what is there is fine, but its final adapter is an earlier run's (a relaunch extending max_steps), so the
    line names the command that loads its newest committed checkpoint; a run with no final adapter yet loads that
    checkpoint (returned: what to load), named. ``run`` as it is where nothing trains there."""
    import shlex

    from ftctl import storage
    from ftctl.trainer import trained as trained_mod

    if not (state := trained_mod.unfinished(run)):
        return run
    checkpoint = storage.join(run.rstrip("/"), state.newest) if state.newest else None
    none = "it has committed no checkpoint yet"
    if state.final:
        newest = (
            f"`ftctl {command} {shlex.quote(checkpoint)}` for its newest committed checkpoint" if checkpoint else none
        )
        echo(f"note: {state.said}; loading it ({newest})")
        return run
    echo(f"note: {state.said}; " + (f"loading its newest committed checkpoint, {checkpoint}" if checkpoint else none))
    return checkpoint or run


def _download(uri: str, into: str) -> tuple[str, str]:
    """(what loads, the local directory holding it) for a run in object storage: its top-level files (its final model
    or adapter), or a checkpoint's or a merge's (``uri`` one of its directories), into ``into``/run, with the run's
    spec.json and metrics.jsonl beside it as a local run has them (trained.Trained reads them there): without them a
    qlora checkpoint loaded on the 16-bit base, and a merged model named no base for --compare. A run with no final
    model yet (stopped, or training) loads its newest committed checkpoint, as a local run directory does, said."""
    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints
    from ftctl.trainer import trained as trained_mod

    local = str(Path(into) / "run")
    try:
        trained_mod.download_top(uri, local)
    except FtctlError:
        with storage.storage_errors(uri, None):
            done = [c for c in list_checkpoints(uri) if c.complete]
        if not done:  # nothing whole to load: download_top's line
            raise
        newest = done[-1]
        log.warning("%s has no final model or adapter yet: loading its newest checkpoint, %s", uri, newest.name)
        return newest.uri, trained_mod.download_top(newest.uri, str(Path(local) / newest.name))
    if not any((Path(local) / name).is_file() for name in RUN_RECORDS):  # a checkpoint or a merge: its run's records
        parent = uri.rstrip("/").rsplit("/", 1)[0]
        with storage.storage_errors(uri, None):
            for name in RUN_RECORDS:
                if storage.exists(storage.join(parent, name)):
                    storage.get_file(storage.join(parent, name), str(Path(into) / name))
    return uri, local


def _path_shaped(target: str) -> bool:
    """A local path by its form (storage.looks_like_path: ./, /, ~, its first part a directory here), or more parts
    than a model id's ORG/NAME: never looked up on the Hub."""
    from ftctl import storage
    from ftctl.hub import HUB_ID

    return storage.looks_like_path(target) or ("/" in target and not HUB_ID.match(target))


def _model_id(target: str):
    """The base model ``target`` names (trained.Trained) where it is neither a directory here nor a path by its form;
    one the Hub does not give is said as not a directory too (_not_here)."""
    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.model import resolve_model

    try:
        return trained_mod.Trained(Path(resolve_model(target, flag="RUN")), adapter=False)
    except FtctlError as e:
        why = str(e).removeprefix(f"RUN {target}: ")  # check_model's "FLAG VALUE: why; fix"
        if why.startswith("no such directory"):  # not a model id either: said already
            raise
        raise FtctlError(f"Cannot load {target}: {_not_here()}{why}") from None


def _not_here() -> str:
    """An ORG/NAME is a run's path as well as a model id (runs/r1 typed in another directory than the run's): one
    that loads as neither is said as both."""
    return f"it is not a directory here (in {Path.cwd()}), and as a model id: "


def answer(
    model, tokenizer, messages: list[dict], decoding: Decoding = Decoding(), streamer=None, plain_text: bool = False
) -> str:
    """The model's next assistant turn after ``messages`` (a system message from ``decoding`` first); with
    ``plain_text`` the continuation of the last message's text, as written."""
    import torch

    if plain_text:
        if decoding.system:
            raise FtctlError(
                "--system is a chat template's turn, and the prompts go without a template here (--plain-text, or a "
                "run that trained on plain text): write it into the prompt, or pass --chat-template."
            )
        inputs = _plain(model, tokenizer, messages[-1]["content"], decoding.max_new_tokens)
    else:
        if decoding.system:
            messages = [{"role": "system", "content": decoding.system}, *messages]
        inputs = _fit(model, tokenizer, messages, decoding.max_new_tokens)
    sampling: dict = {"do_sample": decoding.temperature > 0}
    if decoding.temperature > 0:  # top_p (and top_k) where not given: the generation config's, as generate() reads it
        sampling["temperature"] = decoding.temperature
        if decoding.top_p is not None:
            sampling["top_p"] = decoding.top_p
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=decoding.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=stop_ids(model, tokenizer),
            streamer=streamer,
            **sampling,
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def stop_ids(model, tokenizer) -> list[int]:
    """Where an answer ends: the model's eos tokens, the tokenizer's, and the special token its chat template
    closes an assistant turn with (a base model trained on Llama 3's template learns <|eot_id|>, which its own
    generation config does not stop at): trained.eos_ids, what a run's saved generation config says too."""
    from ftctl.trainer.trained import eos_ids

    return eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)


def _plain(model, tokenizer, text: str, max_new_tokens: int):
    """A prompt encoded as plain-text rows train (bos as the tokenizer adds it; no eos after it)."""
    inputs = tokenizer(text, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    if length and tokenizer.eos_token_id is not None and inputs["input_ids"][0, -1] == tokenizer.eos_token_id:
        inputs = {k: v[:, :-1] for k, v in inputs.items()}
        length -= 1
    limit = getattr(model.config, "max_position_embeddings", None) or sys.maxsize
    if length + max_new_tokens > limit:
        raise FtctlError(
            f"The prompt is {length} tokens and the continuation may take {max_new_tokens}, more than the model's "
            f"context of {limit}: shorten it or lower --max-new-tokens."
        )
    return {k: v.to(model.device) for k, v in inputs.items()}


def _fit(model, tokenizer, messages: list[dict], max_new_tokens: int):
    """The encoded prompt, its oldest turns dropped (never the system message, never the last question)
    until it and the answer fit the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None) or sys.maxsize
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    while True:
        inputs = tokenizer.apply_chat_template(
            system + turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        length = inputs["input_ids"].shape[1]
        if length + max_new_tokens <= limit:
            return inputs.to(model.device)
        if len(turns) <= 1:
            raise FtctlError(
                f"The prompt is {length} tokens and the answer may take {max_new_tokens}, more than the model's "
                f"context of {limit}: shorten it or lower --max-new-tokens."
            )
        turns = turns[2:]  # the oldest question and its answer


def ask(loaded: Loaded, prompts: list[str], decoding: Decoding, echo=print, compare: bool = False) -> list[str]:
    """Each prompt as its own single-turn conversation; prints the answers (with their prompts when several).
    ``compare``: the base model's answer too, above the run's (``base:`` / ``tuned:``)."""
    questions = [[{"role": "user", "content": prompt}] for prompt in prompts]
    plain = loaded.plain_text
    answers = [answer(loaded.model, loaded.tokenizer, q, decoding, plain_text=plain) for q in questions]
    before = []
    if compare:
        with loaded.base() as base:
            before = [answer(base, loaded.tokenizer, q, decoding, plain_text=plain) for q in questions]
    for i, prompt in enumerate(prompts):
        if len(prompts) > 1 or compare:
            echo(("\n" if i else "") + f"> {prompt}")
        echo(f"base:  {before[i]}\ntuned: {answers[i]}" if compare else answers[i])
    return answers


def converse(loaded: Loaded, decoding: Decoding, read=input, echo=print, interactive: bool = True) -> None:
    """One conversation on the lines ``read`` returns, until an empty line or end of input (plain text: each
    line continued on its own)."""
    if interactive:
        how = "Each line is continued on its own" if loaded.plain_text else f"{NEW_CONVERSATION} starts over"
        echo(f"{loaded.what}. {how}; an empty line or Ctrl-D ends.")
    messages: list[dict] = []
    while True:
        try:
            line = read("you> " if interactive else "").strip()
        except EOFError:
            break
        if not line:
            break
        if line == NEW_CONVERSATION or loaded.plain_text:
            messages = []
        if line == NEW_CONVERSATION:
            continue
        messages.append({"role": "user", "content": line})
        streamer = _streamer(loaded.tokenizer) if interactive else None
        if interactive:
            print("model> ", end="", flush=True)
        reply = answer(loaded.model, loaded.tokenizer, messages, decoding, streamer, loaded.plain_text)
        if streamer is None:
            echo(reply + ("" if interactive else "\n"))
        messages.append({"role": "assistant", "content": reply})


def _streamer(tokenizer):
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
