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


def run_key_hint(option: str, command: click.Command) -> str | None:
    """What an unknown --OPTION that names a run key (or one ftctl decides) is here: the command's flag for it
    where it has one (--model_name_or_path: --model), else -o."""
    from ftctl.spec import FIELDS
    from ftctl.tool_vocabulary import canonical_key, not_a_key

    if option in SKY_FLAGS:
        return f"{option} is SkyPilot's (sky launch); here: {SKY_FLAGS[option]}."
    word = option.lstrip("-")
    key = canonical_key(word)
    if key not in FIELDS:
        return not_a_key(word)
    flag = flag_for(key, command)
    from ftctl.backend import backend_options

    if not flag and key in set().union(*backend_options().values()):  # `train --partition`: where it is not sent
        return None
    if flag and _is_flag(flag, command):  # --spot takes no value: `--spot VALUE` read VALUE as the run file
        return f"{key} is a run key: {flag}, or -o {key}=true (or {key}: true in a run file)."
    return f"{key} is a run key: {flag + ' VALUE, or ' if flag else ''}-o {key}=VALUE (or {key}: VALUE in a run file)."


def _is_flag(flag: str, command: click.Command) -> bool:
    return any(isinstance(p, click.Option) and p.is_flag and flag in p.opts for p in command.params)


def takes(option: str) -> bool:
    """Whether -o takes what --OPTION names: a run key, or one ftctl decides (torchrun's --nproc_per_node: neither)."""
    from ftctl.spec import FIELDS
    from ftctl.tool_vocabulary import DECIDED, canonical_key

    return canonical_key(option.lstrip("-")) in FIELDS or option.lstrip("-").replace("-", "_") in DECIDED


def flag_for(key: str, command: click.Command) -> str | None:
    """The command's flag for a run key (--model for model_name_or_path), None where it has none."""
    options = (p for p in command.params if isinstance(p, click.Option))
    return next((p.opts[0] for p in options if FLAG_KEYS.get(p.name, p.name) == key), None)


def as_run_keys(argv: list[str], command: click.Command) -> str | None:
    """A FastChat or TRL command line's --KEY VALUE flags as this command takes them (said one at a time, each cost
    a retry): its flag for the key where it has one, else -o KEY=VALUE; a flag that names no run key but is explained
    (torchrun's --nproc_per_node) left out, and named. None where fewer than two name run keys."""
    import re
    import shlex

    from ftctl.tool_vocabulary import canonical_key

    known = {o for p in command.params for o in p.opts}
    line, turned, dropped, args, keys = ["ftctl"], 0, [], list(argv), {}
    while args:
        word = args.pop(0)
        name, eq, value = word.partition("=")
        if not name.startswith("--") or name in known or name in SKY_FLAGS or not run_key_hint(name, command):
            line.append(word)
            continue
        if not eq:  # HF's argparse: a bare --bf16 is true; a value never starts with a dash but a number's
            has_value = args and (not args[0].startswith("-") or re.fullmatch(r"-[\d.]+(e-?\d+)?", args[0]))
            value = args.pop(0) if has_value else "true"
        if not takes(name):
            dropped.append(name)
            continue
        key = canonical_key(name.lstrip("-"))
        flag = flag_for(key, command)
        line += [flag, value] if flag else ["-o", f"{key}={value}"]
        turned += 1
        keys[key] = value
    if turned < 2:
        return None
    left = f" (left out: {', '.join(dropped)}; `ftctl keys NAME` says what each is here)" if dropped else ""
    if method := _full_rate(keys, argv, command):
        line += ["--method", "fft"]
        left += method
    return f"FastChat's and TRL's --KEY VALUE flags are run keys here; as {command.name} takes them{left}:\n  " + (
        shlex.join(line)
    )


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
