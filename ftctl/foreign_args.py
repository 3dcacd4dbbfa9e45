"""What a command line written for another tool means here: FastChat's and TRL's --KEY VALUE flags are ftctl's run
keys (--learning_rate 2e-5 is -o learning_rate=2e-5, --model_name_or_path is --model), torchrun's flags are ftctl's to
choose, other tools' verbs (init, run, finetune) are ftctl's commands. Said when click meets an option or a command
it does not have."""

from __future__ import annotations

import click

# run flags named otherwise than their run key
FLAG_KEYS = {"model": "model_name_or_path", "data": "data_path", "eval_data": "eval_data_path", "output": "output_dir"}
# SkyPilot's `sky launch` flags, and what says the same here (a SkyPilot user's first lines: click offered --partition
# for --region, --account or --cluster for --cloud, nothing for --num-nodes)
SKY_FLAGS = {
    "--cloud": "--infra CLOUD (--infra aws), or -o cloud=CLOUD",
    "--region": "--infra CLOUD/REGION (--infra aws/us-east-1), or -o region=REGION with --infra CLOUD",
    "--zone": "--infra CLOUD/REGION/ZONE (--infra aws/us-east-1/us-east-1a)",
    "--infra": "--infra CLOUD[/REGION[/ZONE]] with --backend sky",
    "--num-nodes": "--nodes N (or --gpus 2x8xA100: nodes x GPUs x type)",
    "--accelerators": "--gpus 8xA100 (A100:8 too)",
    "--disk-size": "-o disk_size=GIB (left out: sized for the model, its checkpoints and the image)",
    "--image-id": "--container docker:IMAGE (ftctl build --push makes one)",
    "--idle-minutes-to-autostop": "-o idle_minutes=N (30 unless given), or --down",
    "-i": "-o idle_minutes=N (SkyPilot's -i: idle minutes to autostop), or --down",
    "--use-spot": "--spot (a managed job: SkyPilot recovers it after a preemption, and the trainer resumes)",
    "--workdir": "nothing: ftctl ships its own source as the task's workdir, and each local --data or --model as a "
    "file_mounts entry",
    "--env": "-o env=NAME=VALUE; a secret: export it and pass --secret NAME",
    "--name": "-o run_name=NAME",
    "--detach-run": "nothing: launch returns once SkyPilot has the job; `ftctl logs -f JOB` follows it",
    "--yes": "nothing: launch asks no question",
    "-y": "nothing: launch asks no question",
}


def run_key_hint(option: str, command: click.Command, argv: list[str] | None = None) -> str | None:
    """What an unknown --OPTION that names a run key (or one ftctl decides) is here: the command's flag for it
    where it has one (--model_name_or_path: --model), else -o; with the value ``argv`` (the command line) gives it
    (--max_steps=5, --max_steps 5: -o max_steps=5, quoted for the shell), else VALUE."""
    from ftctl.spec import FIELDS
    from ftctl.tool_vocabulary import READ_BESIDE, canonical_key, not_a_key

    if option in SKY_FLAGS:
        return f"{option} is SkyPilot's (sky launch); here: {SKY_FLAGS[option]}."
    word = option.lstrip("-")
    if word.replace("-", "_") == "dataset_name":  # TRL's: a file or a Hub dataset (qlora.py's dataset: MEANT's)
        flag = flag_for("data_path", command)
        return (
            f"{word} is data_path here: {flag + ' PATH, or ' if flag else ''}-o data_path=PATH (a file, a URI, or a "
            "Hub dataset as hf://datasets/ORG/NAME)."
        )
    key = canonical_key(word)
    if key not in FIELDS and key not in READ_BESIDE:  # (TRL's completion_only_loss is read beside assistant_only_loss)
        return not_a_key(word)
    flag = flag_for(key, command)
    from ftctl.backend import backend_options

    if not flag and key in set().union(*backend_options().values()):  # `train --partition`: where it is not sent
        return None
    if flag and _is_flag(flag, command):  # --spot takes no value: `--spot VALUE` read VALUE as the run file
        return f"{key} is a run key: {flag}, or -o {key}=true (or {key}: true in a run file)."
    value = given_value(option, argv or [])
    if value is None:
        return (
            f"{key} is a run key: {flag + ' VALUE, or ' if flag else ''}-o {key}=VALUE (or {key}: VALUE in a run file)."
        )
    import shlex

    as_flag = f"{flag} {shlex.quote(value)}, or " if flag else ""
    import json
    import re

    in_file = value if re.fullmatch(r"-?[\w.+/][\w.+/-]*", value) else json.dumps(value)  # YAML reads it as typed
    return f"{key} is a run key: {as_flag}-o {shlex.quote(f'{key}={value}')} (or {key}: {in_file} in a run file)."


def given_value(option: str, argv: list[str]) -> str | None:
    """The value ``argv`` gives ``option`` (its first --OPTION=VALUE, or --OPTION VALUE: the word after it, where it
    is a value, _is_value); None where it gives none (a bare --bf16: HF's argparse reads true)."""
    for i, word in enumerate(argv):
        name, eq, value = word.partition("=")
        if name != option:
            continue
        if eq:
            return value
        return argv[i + 1] if i + 1 < len(argv) and _is_value(argv[i + 1]) else None
    return None


def _is_flag(flag: str, command: click.Command) -> bool:
    return any(isinstance(p, click.Option) and p.is_flag and flag in p.opts for p in command.params)


def takes(option: str) -> bool:
    """Whether -o takes what --OPTION names: a run key, or one ftctl decides (torchrun's --nproc_per_node: neither)."""
    from ftctl.spec import FIELDS
    from ftctl.tool_vocabulary import DECIDED, READ_BESIDE, canonical_key

    key = canonical_key(option.lstrip("-"))
    return key in FIELDS or key in READ_BESIDE or option.lstrip("-").replace("-", "_") in DECIDED


def flag_for(key: str, command: click.Command) -> str | None:
    """The command's flag for a run key (--model for model_name_or_path), None where it has none."""
    options = (p for p in command.params if isinstance(p, click.Option))
    return next((p.opts[0] for p in options if FLAG_KEYS.get(p.name, p.name) == key), None)


def as_run_keys(argv: list[str], command: click.Command) -> str | None:
    """A FastChat or TRL command line's --KEY VALUE flags as this command takes them (said one at a time, each cost
    a retry): its flag for the key where it has one, else -o KEY=VALUE; argparse's lists (--lora_target_modules
    q_proj v_proj) joined with commas; TRL's --dataset_name and qlora.py's --dataset as --data. A flag that names no
    run key but is explained (torchrun's --nproc_per_node), or that pushes to the Hub (--push_to_hub), is left out
    and named; one whose value ftctl refuses otherwise (--dataset_train_split train_sft) stays, named with why. Where the line is in a tool's vocabulary (TRL's --use_peft, --dataset_name; FastChat's --q_lora), the
    tool's defaults it leaves out are written into it, as a run file in that vocabulary trains (spec.TOOL_DEFAULTS),
    and TRL's line without --use_peft trains every weight (--method fft). None where fewer than two name run keys."""
    import shlex
    from pathlib import Path

    from ftctl.spec import COMMA_LISTS
    from ftctl.tool_datasets import dataset_as_data_path
    from ftctl.tool_vocabulary import canonical_key

    known = {o for p in command.params for o in p.opts}
    line, turned, dropped, refused, kept, args, keys, names = ["ftctl"], 0, [], [], [], list(argv), {}, []
    while args:
        word = args.pop(0)
        name, eq, value = word.partition("=")
        if word.endswith(".py") and not name.startswith("-"):  # the other tool's script (trl/scripts/sft.py)
            dropped.append(word)
            continue
        if word in TOOL_COMMANDS and not names and not Path(word).exists():  # `trl sft ...` as `ftctl launch sft ...`
            dropped.append(word)
            continue
        if not name.startswith("--") or name in known or name in SKY_FLAGS or not run_key_hint(name, command):
            line.append(word)
            continue
        if not eq:  # HF's argparse: a bare --bf16 is true; a value never starts with a dash but a number's
            value = args.pop(0) if args and _is_value(args[0]) else "true"
        raw = name.lstrip("-").replace("-", "_")
        key = canonical_key(raw)
        if key in COMMA_LISTS:  # argparse's nargs="+": --lora_target_modules q_proj k_proj v_proj
            while args and _is_value(args[0]) and not args[0].endswith((".yaml", ".yml")):
                value += "," + args.pop(0)
        names.append(raw)
        if raw in DATA_FLAGS:
            data = dataset_as_data_path(value)
            if raw == "dataset" and not _names_data(value):  # qlora.py's and LLaMA-Factory's names
                dropped.append(name)
                continue
            key, value = "data_path", data
        elif not takes(name):
            dropped.append(name)
            continue
        elif why := _refused(key, value):
            if key in PUSHES:  # what it asks for comes after the run: the run trains the same without it
                refused.append(f"{name}: {why}")
                continue
            kept.append(f"{name} {value}: {why}")  # it asks for other data or another run: the user's to change
        flag = flag_for(key, command)
        line += [flag, value] if flag else ["-o", f"{key}={value}"]
        turned += 1
        keys[key] = value
    if turned < 2:
        return None
    left = f" (left out: {', '.join(dropped)}; `ftctl keys NAME` says what each is here)" if dropped else ""
    left += f" (refused here, so left out: {'; '.join(refused)})" if refused else ""
    left += f" (refused here, change or leave out: {'; '.join(kept)})" if kept else ""
    tool_line, tool_said = _tool_defaults(names, keys, argv, command)
    if tool_line:
        line += tool_line
        left += tool_said
    elif method := _full_rate(keys, argv, command):
        line += ["--method", "fft"]
        left += method
    return f"FastChat's and TRL's --KEY VALUE flags are run keys here; as {command.name} takes them{left}:\n  " + (
        shlex.join(line)
    )


# the other tools' commands a pasted line may keep after `ftctl launch` (`trl sft --model_name_or_path ...`): left out,
# named (kept, a launch reads it as its run file: "Run file 'sft' does not exist")
TOOL_COMMANDS = ("sft",)
# keys of other tools that push the trained model to the Hub after the run, refused here (ftctl merge, then hf upload):
# a pasted line leaves them out, as the run trains the same without them
PUSHES = ("push_to_hub", "hub_model_id", "hub_strategy")
# a dataset's flags of other tools, data_path here: TRL's dataset_name, qlora.py's dataset (a file, or a Hub id)
DATA_FLAGS = ("dataset_name", "dataset")


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_value(word: str) -> bool:
    """Whether a command line's word is the value of the flag before it: it does not start with a dash, unless it is
    a negative number (--max_steps -1)."""
    import re

    return not word.startswith("-") or bool(re.fullmatch(r"-[\d.]+(e-?\d+)?", word))


def _names_data(value: str) -> bool:
    """Whether qlora.py's --dataset VALUE names data ftctl reads (a path, a URI, a Hub dataset's ORG/NAME), not one
    of its own named sets (alpaca, oasst1) nor LLaMA-Factory's dataset_info.json entries."""
    from pathlib import Path

    return "/" in value or "." in value or Path(value).expanduser().exists()


def _refused(key: str, value: str) -> str | None:
    """Why a key ftctl decides itself (DECIDED) refuses this value (--push_to_hub, --group_by_length false ...),
    as spec.build says it; None where it is taken. Keys whose check needs the rest of the run (eos_token: the
    model's template; the evaluation keys: its held-out data) are left to the launch."""
    from ftctl.errors import FtctlError
    from ftctl.spec import build
    from ftctl.tool_vocabulary import DECIDED

    if key not in DECIDED or key in ("eos_token", "evaluation_strategy", "eval_strategy", "do_eval"):
        return None
    try:
        build(overrides=[f"{key}={value}"], notes=[])
    except FtctlError as e:
        said = str(e)
        return DECIDED[key] if "is not set by hand here" in said else None
    return None


def _tool_defaults(names: list[str], keys: dict[str, str], argv: list[str], command: click.Command):
    """What a line in a tool's vocabulary (spec.VOCABULARY: TRL's use_peft, dataset_name ...; FastChat's q_lora)
    adds to train as that tool does: its defaults the line leaves out (spec.TOOL_DEFAULTS, TOOL_LORA_DEFAULTS where
    it trains adapters), each as -o, and for TRL's without --use_peft at a full fine-tune's rate, --method fft (TRL
    trains every weight without it; at a LoRA rate, lora, said, as for a run file in TRL's words). Returns the words and what the message says of them; ([], '') for a line in no tool's vocabulary."""
    from ftctl.spec import FIELDS, LORA_KEYS, TOOL_DEFAULTS, TOOL_LORA_DEFAULTS, VOCABULARY, as_run
    from ftctl.tool_vocabulary import ADAPTER_METHODS, METHOD_AGREES, canonical_key, config_word, method_meant

    tools = [tool for tool, words in VOCABULARY.items() if set(names) & set(words)]
    if not tools:
        return [], ""
    tool = tools[0]
    given = {n: (n, config_word(keys[canonical_key(n)])) for n in names if n in METHOD_AGREES}
    given = {n: v for n, v in given.items() if v[1] in METHOD_AGREES[n]}
    asked = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    method = keys.get("method") or method_meant(given)
    words, said = [], ""
    if not method and tool == "TRL" and not asked & (ADAPTER_FLAGS | set(LORA_KEYS)) and flag_for("method", command):
        # as a run file in TRL's words without use_peft (spec.TOOL_DEFAULTS_NOT_TAKEN's note, LORA_LEAST_LR's refusal):
        # at a full fine-tune's rate every weight, as TRL trains it; at a LoRA rate ftctl's lora, said
        if full := _full_rate(keys, argv, command):
            method = "fft"
            words += ["--method", "fft"]
            said = full
        else:
            said = (
                " (no --use_peft: TRL's sft would train every weight; here lora, ftctl's default, at this LoRA rate: "
                "add --method fft for TRL's full fine-tune)"
            )
    defaults = dict(TOOL_DEFAULTS[tool])
    if (method or FIELDS["method"].default) in ADAPTER_METHODS:
        defaults.update(TOOL_LORA_DEFAULTS[tool])
    if "warmup_steps" in keys:  # it replaces warmup_ratio
        defaults.pop("warmup_ratio", None)
    if "max_steps" in keys and not keys["max_steps"].lstrip().startswith("-"):  # it decides the run's length
        defaults.pop("num_train_epochs", None)
    taken = {k: v for k, v in defaults.items() if k not in keys}
    for k, v in taken.items():
        words += ["-o", f"{k}={_number(v)}"]
    if taken:
        ours = " ".join(f"-o {k}={_number(as_run(k, FIELDS[k].default))}" for k in taken)
        said += (
            f" ({', '.join(taken)}: {tool}'s defaults, which the line leaves out, as {tool} trains it; ftctl's own: "
            f"{ours})"
        )
    if kept := _ours_kept(tool, keys, method or FIELDS["method"].default):
        said += f" (ftctl's own kept, which the line leaves out: {'; '.join(kept)})"
    return words, said


def _ours_kept(tool: str, keys: dict[str, str], method: str) -> list[str]:
    """ftctl's defaults that differ from ``tool``'s and stay where a pasted line in its vocabulary leaves the key out
    (spec.TOOL_DEFAULTS_NOT_TAKEN, which a run file's notes say): what each does here and the -o for the tool's."""
    from ftctl.spec import BATCH_KEYS, GLOBAL_BATCH_SIZE, METHOD_LEARNING_RATE
    from ftctl.tool_vocabulary import ADAPTER_METHODS

    if tool != "TRL":
        return []
    kept = []
    if not {"assistant_only_loss", "completion_only_loss"} & keys.keys():
        kept.append(
            "assistant_only_loss true trains a conversation's assistant turns only, where TRL trains its every token: "
            "-o assistant_only_loss=false for TRL's"
        )
    if method in ADAPTER_METHODS and "learning_rate" not in keys:
        kept.append(
            f"learning_rate {METHOD_LEARNING_RATE[method]:g}, where TRL's SFTConfig trains at 2e-5: -o "
            "learning_rate=2e-5 for TRL's"
        )
    if not set(BATCH_KEYS) & keys.keys():
        kept.append(
            f"global_batch_size {GLOBAL_BATCH_SIZE} sequences a step over all GPUs, where TRL steps after 8 a GPU: -o "
            "per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for TRL's"
        )
    return kept


# flags of a command line that train adapters (FastChat's train_lora.py, TRL's use_peft, qlora.py's bits)
ADAPTER_FLAGS = {"q_lora", "use_peft", "load_in_4bit", "load_in_8bit", "bits", "method", "adapter"}


def _full_rate(keys: dict[str, str], argv: list[str], command: click.Command) -> str | None:
    """Where a pasted line trains at a full fine-tune's rate (FastChat's train.py, TRL's sft.py without --use_peft:
    learning_rate under 1e-4) and names no adapter, its method flag, or the method: why the line as ftctl takes it
    asks for --method fft (lora, the default, would train adapters at that rate: barely at all). None otherwise."""
    from ftctl.spec import LORA_KEYS, LORA_LEAST_LR

    try:
        rate = float(keys.get("learning_rate", "nan"))
    except ValueError:
        return None
    asked = {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    if not rate < LORA_LEAST_LR or asked & (ADAPTER_FLAGS | set(LORA_KEYS)) or not flag_for("method", command):
        return None
    return (
        f" (--method fft: learning_rate {rate:g} with no LoRA flag is FastChat's train.py, TRL without --use_peft: "
        "every weight trained; lora, ftctl's default, trains adapters at 1e-4 to 2e-4)"
    )


_LAUNCH = "`ftctl launch --model ORG/NAME --data FILE` trains (`ftctl launch --help`; `ftctl demo` to try it)"
# the verbs other fine-tuning tools are started with (axolotl, TRL, torchtune, litgpt, LLaMA-Factory, a project
# template's init), and the command that does it here
OTHER_VERBS = {
    "init": "ftctl sets nothing up first: `ftctl demo` tries it on a small model here; `ftctl launch --model ORG/NAME "
    "--data FILE` trains yours (`ftctl launch --help`)",
    "run": _LAUNCH,
    "finetune": _LAUNCH,
    "fine-tune": _LAUNCH,
    "sft": "`ftctl launch --model ORG/NAME --data FILE` is TRL's SFT (LoRA by default; --method sft here trains the top "
    "trainable_layers blocks only)",
    "start": _LAUNCH,
    "submit": _LAUNCH,
    "fit": _LAUNCH,
    "preprocess": "`ftctl data check FILE --model ORG/NAME` reads and tokenizes the rows; a run tokenizes them itself",
    "generate": "`ftctl chat RUN` talks to what a run trained (-p PROMPT for one answer)",
    "inference": "`ftctl chat RUN` talks to what a run trained (-p PROMPT for one answer)",
    "evaluate": "`ftctl eval RUN` scores what a run trained on held-out rows",
    "export": "`ftctl merge RUN` writes an adapter merged into its base, a standard model",
    "ls": "`ftctl jobs` lists the jobs launched from here",
    "list": "`ftctl jobs` lists the jobs launched from here",
    "ps": "`ftctl jobs` lists the jobs launched from here",
    "stop": "`ftctl cancel JOB` stops a launched job",
    "kill": "`ftctl cancel JOB` stops a launched job",
}


def other_verb(name: str) -> str | None:
    """What to run instead of ``name``, another tool's verb that ftctl has no command of; None for other names."""
    return OTHER_VERBS.get(name.lower())
