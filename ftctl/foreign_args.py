"""What a command line written for another tool means here: FastChat's and TRL's --KEY VALUE flags are ftctl's run
keys (--learning_rate 2e-5 is -o learning_rate=2e-5, --model_name_or_path is --model), torchrun's flags are ftctl's to
choose. Said when click meets an option a command does not have."""

from __future__ import annotations

import click

# run flags named otherwise than their run key
FLAG_KEYS = {"model": "model_name_or_path", "data": "data_path", "eval_data": "eval_data_path", "output": "output_dir"}


def run_key_hint(option: str, command: click.Command) -> str | None:
    """What an unknown --OPTION that names a run key (or one ftctl decides) is here: the command's flag for it
    where it has one (--model_name_or_path: --model), else -o."""
    from ftctl.spec import FIELDS, canonical_key, not_a_key

    word = option.lstrip("-")
    key = canonical_key(word)
    if key not in FIELDS:
        return not_a_key(word)
    flag = flag_for(key, command)
    from ftctl.backend import backend_options

    if not flag and key in set().union(*backend_options().values()):  # `train --partition`: where it is not sent
        return None
    return f"{key} is a run key: {flag + ' VALUE, or ' if flag else ''}-o {key}=VALUE (or {key}: VALUE in a run file)."


def takes(option: str) -> bool:
    """Whether -o takes what --OPTION names: a run key, or one ftctl decides (torchrun's --nproc_per_node: neither)."""
    from ftctl.spec import DECIDED, FIELDS, canonical_key

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

    from ftctl.spec import canonical_key

    known = {o for p in command.params for o in p.opts}
    line, turned, dropped, args = ["ftctl"], 0, [], list(argv)
    while args:
        word = args.pop(0)
        name, eq, value = word.partition("=")
        if not name.startswith("--") or name in known or not run_key_hint(name, command):
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
    if turned < 2:
        return None
    left = f" (left out: {', '.join(dropped)}; `ftctl keys NAME` says what each is here)" if dropped else ""
    return f"FastChat's and TRL's --KEY VALUE flags are run keys here; as {command.name} takes them{left}:\n  " + (
        shlex.join(line)
    )
