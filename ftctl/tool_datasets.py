"""axolotl's and LLaMA-Factory's dataset entries as ftctl's data keys: an axolotl ``datasets`` entry's path, the
names it gives its rows' fields (axolotl_columns) and the keys of it that ask for other rows or tokens than ftctl
trains; LLaMA-Factory's dataset_info.json entries and their mix (data_path, data_weights). trainer.formats reads rows
by them; spec.build reads run files with them (its _axolotl, _axolotl_columns and _llama_factory_names, which take
RunSpec's fields, stay there)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.tool_vocabulary import canonical_key, config_text, config_word, named_format


def dataset_as_data_path(path: str) -> str:
    """axolotl's dataset path, TRL's dataset_name, as data_path: a file, a URI or a path as it is, ORG/NAME that is
    none of them a Hub dataset (hf://datasets/ORG/NAME)."""
    from ftctl.hub import HUB_ID

    file = Path(path).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow")
    here = "://" in path or file or Path(path).expanduser().exists() or storage.looks_like_path(path)
    return path if here or not HUB_ID.match(path) else f"hf://datasets/{path}"


# the fields a data row's turn says whether it trains in, true or false, beside OpenAI's weight (0 or 1), which the
# data reader (trainer.formats) honours: axolotl's message_field_training default, its other usual name, ms-swift's
TRAIN_FLAGS = ("training", "train", "loss")

# the keys of an axolotl dataset entry that choose which rows, or which of their tokens, are trained, with the
# values that ask for what ftctl does (an empty tuple: none does) and how to ask for what they want here
AXOLOTL_DATASET_KEYS = {
    "split": (
        ("train",),
        "a Hub dataset's train split is read; for another, name its files (hf://datasets/ORG/NAME/FILES)",
    ),
    "name": ((), "name the configuration's files instead (hf://datasets/ORG/NAME/CONFIG/*.parquet)"),
    "data_files": ((), "name the files in path (hf://datasets/ORG/NAME/FILES, or a local path)"),
    "field": ((), "give a file whose rows are the records themselves (JSON lines, or a JSON list)"),
    "revision": ((), "name it in the path: hf://datasets/ORG/NAME@REVISION/FILES"),
    "roles_to_train": (
        (("assistant",), ("gpt",)),
        "the assistant's turns are trained (train_on_inputs: true trains every token)",
    ),
    "train_on_eos": (("turn",), "each assistant turn is trained with the token that ends it, as axolotl's turn"),
    "message_field_training": (
        TRAIN_FLAGS,
        f"a turn says whether it trains in a field named {', '.join(TRAIN_FLAGS)} (true or false) or OpenAI's "
        "weight (0 or 1): rename the field in the data",
    ),
    "chat_template": (
        ("tokenizer_default",),
        "give the template as a file or a model: -o chat_template_path=FILE.jinja (or a model directory or id)",
    ),
}


def dataset_templates(items, source: str) -> tuple[list, list[tuple[str, str]]]:
    """A layer's axolotl ``datasets`` / ``test_datasets`` entries' own chat_template by name (chatml, llama3 ...), which
    axolotl formats that dataset's rows with: taken out of the entries, to be checked as the run's top-level
    chat_template is (named_template_problem: taken where the model's own template is that format). The layer's
    items so, and each (name as said, the name). tokenizer_default stays (it asks for what ftctl does), as does
    jinja and a value that is no name (AXOLOTL_DATASET_KEYS' refusal says what to write)."""
    items, named = list(items), []
    out = []
    for key, raw in items:
        if key.strip() in ("datasets", "test_datasets") and isinstance(raw, list):
            entries = []
            for d in raw:
                word = d.get("chat_template") if isinstance(d, dict) else None
                if isinstance(word, str) and config_word(word) not in ("tokenizer_default", "jinja", ""):
                    named.append(
                        (f"{key.strip()}: {d.get('path')}'s chat_template: {word.strip()} ({source})", word.strip())
                    )
                    d = {k: v for k, v in d.items() if k != "chat_template"}
                entries.append(d)
            raw = entries
        out.append((key, raw))
    return out, named


def templates_apart(named: list[tuple[str, str]]) -> str | None:
    """Why chat templates named in one run (its top-level chat_template, its datasets entries' own: as said, the
    name) cannot train together: ftctl formats every dataset with one template, and they are of different formats
    (CHAT_FORMATS; a name not known there is its own); None where they are one."""
    formats = {named_format(word) or word.lower() for _, word in named}
    if len(formats) < 2:
        return None
    return (
        f"{'; '.join(said for said, _ in named)}: these name chat templates of different formats, and ftctl formats "
        "every dataset with one template (the model's own, or chat_template_path's): give one chat_template for all "
        "of them (each entry's the same, or the top-level key alone), or chat_template_path: a Jinja file, with the "
        "entries' chat_template left out."
    )


# axolotl's dataset types (the part of type before any '.' or ':', lower case): the ones its loader handles itself,
# its prompt_strategies modules and those of their dpo, kto, orpo, bradley_terry and ebft packages (an RL config's
# chatml.intel). A type none of them is refused where one is near it (a misspelling, which axolotl refuses too);
# another is noted as unread (a module of the user's own: my_pkg.my_strategy).
AXOLOTL_TYPES = (
    *("alpaca", "explainchoice", "concisechoice", "summarizetldr", "jeopardy", "oasst", "gpteacher", "reflection"),
    *("alpaca_chat", "alpaca_instruct", "alpaca_w_system", "aptchat", "aptchat_v2", "bradley_terry", "chat"),
    *("chat_template", "completion", "context_qa", "conversational_lm", "creative_acr", "dpo", "ebft", "input_output"),
    *("instruct", "kto", "llama2_chat", "messages", "metharme", "multimodal_pretrain", "orcamini", "orpo"),
    *("preference_chat_template", "pretrain", "pygmalion", "sharegpt", "sharegpt_jokes", "sharegpt_simple"),
    *("stepwise", "stepwise_supervised", "summarization", "synthetic", "user_defined", "vicuna"),
    *("chatml", "llama3", "mistral", "passthrough", "zephyr", "ebft_chat_multiturn", "ebft_opencode", "ebft_pretrain"),
    *("ebft_reasoning", "ebft_strided_chat", "ebft_strided_structured"),
)


def axolotl_type_misspelt(kind) -> str | None:
    """Why an entry's ``type: kind`` is refused: a name near one of axolotl's types and none of them (``alpacka``,
    ``Alpaca``, ``alpacka:chatml``), with the one to write; None for a known type, a custom type (a mapping), a name
    near none, or a dotted one (``my_pkg.my_strategy``: axolotl imports a module of the user's own by it)."""
    import difflib

    if not isinstance(kind, str) or not kind.strip():
        return None
    base = kind.strip().split(":")[0]
    if base in AXOLOTL_TYPES or "." in base:
        return None
    near = difflib.get_close_matches(base.lower(), AXOLOTL_TYPES, n=1, cutoff=0.8)
    if not near:
        return None
    return (
        f"no type of axolotl's: write type: {near[0] + kind.strip()[len(base) :]} (the nearest; ftctl reads each "
        "row's format from its fields, axolotl refuses a type it does not know)"
    )


def axolotl_dataset_refuses(key: str, value, held_out: str = "") -> str | None:
    """Why an axolotl dataset entry's ``key: value`` asks for other rows or tokens than ftctl trains, or is a
    misspelt type (axolotl_type_misspelt), None where it is neither (or is one ftctl does not read: the note says
    which). ``held_out``: the entry's path, where it is one of test_datasets (eval_data_path here), whose split a Hub
    dataset's held-out data is (test or validation; a file's rows are its train split, which axolotl's examples
    name)."""
    if key == "type":
        return axolotl_type_misspelt(value)
    if key not in AXOLOTL_DATASET_KEYS:
        return None
    agrees, how = AXOLOTL_DATASET_KEYS[key]
    if key == "split" and held_out and dataset_as_data_path(held_out).startswith("hf://"):
        agrees = ("test", "validation")
        how = (
            "a Hub dataset's held-out data is read from its test (or validation) split; for another, name its files "
            "(hf://datasets/ORG/NAME/FILES)"
        )
    word = tuple(config_word(v) for v in value) if isinstance(value, list) else config_word(value)
    return None if value is None or word in agrees else how


# the keys of an axolotl dataset entry that name its rows' turns and their keys (field_messages: chat, and
# message_property_mappings: {role: speaker, content: text}, or the older message_field_role/_content)
TURN_KEYS = ("field_messages", "message_property_mappings", "message_field_role", "message_field_content")
# the turns' names ftctl reads (trainer.formats): a row's list of turns, and each turn's role and content keys
TURNS_READ, TURN_KEYS_READ = ("messages", "conversations"), (("role", "content"), ("from", "value"))


# the roles a chat template takes (trainer.formats' OPENAI_ROLES): what axolotl's roles map the data's roles to
TEMPLATE_ROLES = ("system", "user", "assistant", "tool")
# axolotl's roles where an entry gives none (its chat_template strategy's): the template's role -> the data's
AXOLOTL_ROLES = {"user": ["human", "user"], "assistant": ["gpt", "assistant"], "system": ["system"], "tool": ["tool"]}
# a custom type's (axolotl's user-defined Alpaca-like prompt) field_* keys: the Alpaca field each names
AXOLOTL_TYPE_FIELDS = {
    "field_instruction": "instruction",
    "field_input": "input",
    "field_output": "output",
    "field_system": "system",
}
# and its prompt strings, which ftctl's chat template writes instead: the values that ask for no more than it does
AXOLOTL_TYPE_FORMATS = {
    "format": ("{instruction}",),
    "no_input_format": ("{instruction}",),
    "system_format": ("{system}",),
}


# an axolotl dataset entry's keys (and its custom type's) whose value names a field of the data: a name is text
NAME_KEYS = (
    *AXOLOTL_TYPE_FIELDS,
    *("field_messages", "message_field_role", "message_field_content", "field_human", "field_model", "field"),
)


def _unnamed(entry: dict) -> str | None:
    """An entry's field name that is no text (``field_instruction: 5``; axolotl refuses it too), said with the fix:
    in its custom type, at the entry's level or in message_property_mappings. None where every one is text."""
    kind, mapped = entry.get("type"), entry.get("message_property_mappings")
    given = [(f"type's {k}", v) for k, v in kind.items() if k in NAME_KEYS] if isinstance(kind, dict) else []
    given += [(k, v) for k, v in entry.items() if k in NAME_KEYS]
    given += [(f"message_property_mappings' {k}", v) for k, v in mapped.items()] if isinstance(mapped, dict) else []
    for where, value in given:
        if value is not None and not isinstance(value, str):
            key = where.split()[-1]
            # a custom type's field names are read in type only (axolotl's UserDefinedPrompterType)
            write = f"type: {{{key}: prompt}}" if key in AXOLOTL_TYPE_FIELDS else f"{key}: NAME"
            quoted = f" ({str(value)!r}, quoted, for a field named so)" if isinstance(value, (int, float)) else ""
            return f"{where}: {value!r} is no field's name: write the name of the rows' field as text, {write}{quoted}"
    return None


def axolotl_columns(entry: dict) -> tuple[dict, str | None]:
    """(ftctl's own description of the fields an axolotl dataset entry names otherwise, as data_columns holds it: the
    field -> the data's name of it (messages, role, content; instruction, input, output, system), ``roles`` the data's
    role -> the template's, ``system_prompt`` a system prompt for rows without one; {} where there are none; why not,
    the rest of a sentence after the entry's path, where the entry asks what ftctl cannot do). From field_messages,
    message_property_mappings (role, content; or message_field_role/_content, axolotl's older keys), roles (replacing
    axolotl's defaults, as axolotl does) and a custom type's field_* and system_prompt."""
    if why := _unnamed(entry):
        return {}, why
    described: dict = {}
    kind = entry.get("type")
    if isinstance(kind, dict):
        unknown = sorted(set(kind) - {*AXOLOTL_TYPE_FIELDS, *AXOLOTL_TYPE_FORMATS, "system_prompt", "field"})
        asked = [f"{k}: {kind[k]!r}" for k, ok in AXOLOTL_TYPE_FORMATS.items() if kind.get(k) not in (None, "", *ok)]
        if unknown:
            return (
                {},
                f"type: {', '.join(unknown)} are no keys of axolotl's custom type ftctl reads (field_*, system_prompt)",
            )
        if asked:
            return {}, (
                f"type's {', '.join(asked)}: ftctl writes each prompt with the model's chat template (the one a chat "
                "or a server of the model writes too; chat_template_path names another), not a format string: drop "
                f"{', '.join(k for k in AXOLOTL_TYPE_FORMATS if k in kind)} from the type"
            )
        if kind.get("field"):
            return {}, f"type's field: {kind['field']!r}: {AXOLOTL_DATASET_KEYS['field'][1]}"
        described |= {ours: str(kind[k]) for k, ours in AXOLOTL_TYPE_FIELDS.items() if kind.get(k) and kind[k] != ours}
        if kind.get("system_prompt"):
            described["system_prompt"] = str(kind["system_prompt"])
    mapped = entry.get("message_property_mappings") or {}
    if not isinstance(mapped, dict):
        return {}, f"message_property_mappings: {mapped!r} is no mapping: give {{role: KEY, content: KEY}}"
    if other := sorted(k for k, v in mapped.items() if k not in ("role", "content") and v != k):
        return {}, (
            f"message_property_mappings' {', '.join(other)}: ftctl renames a turn's role and content only: rename "
            f"{', '.join(f'{mapped[k]!r} to {k!r}' for k in other)} in the data"
        )
    turns = entry.get("field_messages")
    role = mapped.get("role") or entry.get("message_field_role")
    content = mapped.get("content") or entry.get("message_field_content")
    roles = entry.get("roles")
    if roles is not None:
        if not isinstance(roles, dict) or not all(isinstance(v, (list, str)) for v in roles.values()):
            return {}, f"roles: {roles!r}: give the template's roles' names in the data, roles: {{user: [human]}}"
        if wrong := sorted(set(roles) - set(TEMPLATE_ROLES)):
            return {}, f"roles: {', '.join(wrong)}: a chat template's roles are {', '.join(TEMPLATE_ROLES)}"
    native = (
        str(turns or "messages") in TURNS_READ and (str(role or "role"), str(content or "content")) in TURN_KEYS_READ
    )
    if not native or roles is not None:  # a conversation named its own way: messages, the template's roles
        described |= {"messages": str(turns or "messages"), "role": str(role or "role")}
        described["content"] = str(content or "content")
        given = {r: [v] if isinstance(v, str) else v for r, v in (roles or AXOLOTL_ROLES).items()}
        described["roles"] = {str(name): r for r, names in given.items() for name in names if str(name) != r}
    return described, None


# the fields a data_columns description renames (ftctl's -> the data's; trainer.formats.described reads them), beside
# roles (the data's role -> the template's) and system_prompt (the system of a row without one)
COLUMN_FIELDS = ("messages", "role", "content", "instruction", "input", "output", "system")


def data_columns_problems(columns: dict, datasets: list[str]) -> list[str]:
    """What is wrong with a run's data_columns (a dataset's path in ``datasets``, data_path's and eval_data_path's ->
    JSON of ftctl's field -> the data's, as axolotl_columns writes it), each a sentence saying what to write: a path
    that is none of the datasets (its description would be read for no rows), a description that is no JSON object,
    a field ftctl does not rename, a name that is no string, roles that are no template's."""
    from ftctl.errors import did_you_mean

    example = 'e.g. -o \'data_columns=data/qa.jsonl={"instruction": "prompt", "output": "answer"}\''

    def same(p: str) -> str:  # a local path as any working directory names it (data/a.jsonl and /home/u/data/a.jsonl)
        return p if "://" in p or p.startswith("builtin:") else os.path.abspath(os.path.expanduser(p))

    problems = []
    for path, description in columns.items():
        if same(path) not in {same(d) for d in datasets}:
            problems.append(
                f"data_columns names {path!r}, which is no dataset of data_path or eval_data_path "
                f"({', '.join(datasets) or 'none given'}): key each description by its dataset's path as given "
                f"there, {example}; where --data replaced a run file's axolotl datasets, whose entries named their "
                "fields, give the new data as an entry of datasets there instead"
            )
            continue
        try:
            names = json.loads(description) if isinstance(description, str) else description
        except ValueError:
            names = None
        if not isinstance(names, dict):
            problems.append(
                f"data_columns' {path}: {description!r} is no JSON object of ftctl's field -> the data's name of it: "
                f"{example}"
            )
            continue
        fields = (*COLUMN_FIELDS, "roles", "system_prompt")
        for field in sorted(set(names) - set(fields)):
            problems.append(
                f"data_columns' {path}: {field!r} is no field ftctl renames.{did_you_mean(str(field), fields)} "
                f"The fields: {', '.join(fields)}"
            )
        for field, name in names.items():
            if field == "roles":
                if not isinstance(name, dict) or not all(isinstance(v, str) for v in name.values()):
                    problems.append(
                        f"data_columns' {path}: roles {name!r}: give the data's role -> the template's, "
                        '{"human": "user", "gpt": "assistant"}'
                    )
                elif wrong := sorted({str(v) for v in name.values()} - set(TEMPLATE_ROLES)):
                    problems.append(
                        f"data_columns' {path}: roles map to {', '.join(wrong)}: a chat template's roles are "
                        f"{', '.join(TEMPLATE_ROLES)}"
                    )
            elif field in fields and (not isinstance(name, str) or not name.strip()):
                problems.append(
                    f"data_columns' {path}: {field} {name!r}: give the name of the data's field, a non-empty string"
                )
    return problems


LF_INFO = "dataset_info.json"  # LLaMA-Factory's: its datasets by name (trainer.formats reads an entry's columns)
LF_NAMED = {"dataset": "data_path", "eval_dataset": "eval_data_path"}  # its keys naming entries of it
# the split of a Hub dataset ftctl reads, by the key naming its entry (trainer.splits: train; held-out data test)
LF_SPLIT = {"dataset": "train", "eval_dataset": "test"}
# LLaMA-Factory's mix_strategy values: how interleave_datasets stops (first_exhausted, all_exhausted), or concat
LF_MIXES = {"concat": None, "interleave_under": min, "interleave_over": max}


def llama_factory_unread(entry: dict, split: str) -> str | None:
    """What of a dataset_info.json entry ftctl would not read as LLaMA-Factory does (the rest of the sentence that
    names it), None where it reads it all: a Hub dataset's subset (a configuration, not files) or a split other than
    the one ftctl reads (train; test for held-out data) given; LLaMA-Factory reads a file's rows as its train split
    only."""
    asked = str(entry.get("split") or "train")
    if isinstance(entry.get("file_name"), str):
        if asked == "train":
            return None
        return (
            f"asks file {entry['file_name']}'s split {asked!r}, which LLaMA-Factory does not have either (a file's "
            "rows are its train split): drop split from the entry"
        )
    if not isinstance(hub := entry.get("hf_hub_url"), str):
        return None
    subset, folder = entry.get("subset"), entry.get("folder")
    at = f"hf://datasets/{hub}/{str(folder).strip('/') + '/' if folder else ''}"
    if subset:
        return (
            f"names subset {subset!r} of {hub}, a configuration of the Hub dataset, which ftctl does not read by name "
            f"(nothing is downloaded to learn its files): give its files as data_path, {at}{subset}/ where the "
            "dataset keeps each subset in a folder of its name (the dataset's Files tab shows which), and drop the "
            "dataset key"
        )
    if entry.get("split") and asked != split:  # none given: the split ftctl reads for the role
        return (
            f"asks {hub}'s split {asked!r}, and ftctl reads a Hub dataset's {split} split "
            f"({'held-out data' if split != 'train' else 'training data'}; by its files' names): give the {asked} "
            f"split's files as data_path ({at}FILES, e.g. {at}data/{asked}-*.parquet), and drop the dataset key"
        )
    return None


def _records_in(path: str) -> int | None:
    """How many records a local .json or .jsonl file (gzipped too) holds, as LLaMA-Factory's JSON loader counts
    them: a JSON list's items, else its non-blank lines; None for any other (a directory, Parquet, a URI)."""
    name = path.lower().removesuffix(".gz")
    if storage.scheme(path) or not name.endswith((".json", ".jsonl")) or not Path(path).is_file():
        return None
    import gzip

    try:
        raw = (gzip.open if path.lower().endswith(".gz") else open)(path, "rb").read()
        try:
            whole = json.loads(raw)
        except ValueError:
            whole = None
        return len(whole) if isinstance(whole, list) else sum(1 for line in raw.splitlines() if line.strip())
    except (OSError, ValueError):
        return None


MIX_KEYS = ("mix_strategy", "interleave_probs")  # LLaMA-Factory's keys of how its datasets mix


def llama_factory_mix(items: list, paths: list[str], source: str, notes=None, samples=None) -> list:
    """A layer's LLaMA-Factory mix_strategy and interleave_probs (with its ``dataset`` names, read as ``paths``) and
    its entries' num_samples (``samples``, one a path, None where an entry gives none) as data_weights.
    num_samples draws that many of a dataset's rows (all of them and more at random where it is more), before the
    datasets mix: the dataset of n_i rows then gives m_i = num_samples (else n_i). interleave_datasets draws each
    dataset's share of the rows until the first dataset is used up (interleave_under) or the last one is
    (interleave_over), so dataset i of share p_i gives p_i * T rows, T = min (max) of m_j / p_j: its weight here, each
    one's rows that many times an epoch, is p_i * T / n_i (concat: m_i / n_i). Without probs, equal shares
    (interleave_datasets' round robin); concat (LLaMA-Factory's default) without num_samples is ftctl's without
    data_weights. FtctlError for a mix ftctl cannot count here."""
    given = {k.strip(): v for k, v in items}
    samples = list(samples or [None] * len(paths))
    sampled = any(n is not None for n in samples)
    if "mix_strategy" not in given and "interleave_probs" not in given and not sampled:
        return items
    keep = [(k, v) for k, v in items if k.strip() not in MIX_KEYS]
    strategy, probs = str(given.get("mix_strategy") or "concat").strip(), given.get("interleave_probs")
    said = ", ".join(
        [f"mix_strategy: {strategy}"] * ("mix_strategy" in given or not sampled)
        + [f"interleave_probs: {config_text(probs)}"] * (probs is not None)
        + ["num_samples: " + ", ".join(f"{p} {n}" for p, n in zip(paths, samples) if n is not None)] * sampled
    )
    if strategy not in LF_MIXES:
        raise FtctlError(f"mix_strategy: {strategy} ({source}) is none of LLaMA-Factory's: {', '.join(LF_MIXES)}.")
    for path, n in zip(paths, samples):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise FtctlError(
                f"num_samples: {config_text(n)} ({source}, {path}'s entry of {LF_INFO}) is no number of rows: give "
                "a whole number above 0, or drop it to read the file's rows once."
            )
    concat = LF_MIXES[strategy] is None
    if concat and probs is not None:
        raise FtctlError(
            f"interleave_probs ({source}) mixes by shares with mix_strategy interleave_under or interleave_over, "
            f"not {strategy} (LLaMA-Factory refuses it so too): add mix_strategy: interleave_under, or drop "
            "interleave_probs to read each dataset once."
        )
    if concat and not sampled:
        notes is None or notes.append(
            f"mix_strategy: concat ({source}): each dataset's rows once, as ftctl reads datasets without data_weights"
        )
        return keep
    if not concat and len(paths) < 2 and not sampled:
        notes is None or notes.append(f"{said} ({source}): one dataset, nothing to mix")
        return keep
    if any(canonical_key(k) == "data_weights" for k, _ in items):
        raise FtctlError(f"{said} ({source}) and data_weights both mix the datasets: keep one.")
    try:
        shares = (
            [1 / len(paths)] * len(paths)
            if probs is None
            else [float(p) for p in (probs if isinstance(probs, list) else str(probs).split(","))]
        )
    except (TypeError, ValueError):
        raise FtctlError(
            f"interleave_probs: {config_text(probs)} ({source}): give one number a dataset, 0.7,0.3"
        ) from None
    if len(shares) != len(paths) or abs(sum(shares) - 1) > 1e-6 or min(shares) <= 0:
        raise FtctlError(
            f"interleave_probs: {config_text(probs)} ({source}) are no shares of the {len(paths)} datasets of dataset: give "
            "one above 0 each, in its order, summing to 1 (a dataset of none: drop it from dataset)."
        )
    # concat: only the sampled datasets' rows matter (the others' weight is 1)
    rows = [_records_in(p) if not concat or n is not None else None for p, n in zip(paths, samples)]
    if uncounted := [p for p, n, m in zip(paths, rows, samples) if not n and (not concat or m is not None)]:
        how = (
            "num_samples / the dataset's rows"
            if concat
            else "shares p over n rows (num_samples where given: m): p * T / n, T the smallest m / p for "
            "interleave_under, the largest for interleave_over"
        )
        raise FtctlError(
            f"{said} ({source}) mixes by the datasets' sizes, and {', '.join(uncounted)} is no local JSON file whose "
            f"rows ftctl counts here: give data_weights instead, each dataset's rows that many times an epoch "
            f"({how}; `ftctl data check -c run.yaml` counts the rows)."
        )
    if concat:
        weights = [1.0 if m is None else m / n for n, m in zip(rows, samples)]
    else:
        drawn = [n if m is None else m for n, m in zip(rows, samples)]
        total = LF_MIXES[strategy](m / p for m, p in zip(drawn, shares))
        weights = [p * total / n for n, p in zip(rows, shares)]
    mixed = ", ".join(f"{path} {n:,} rows x {w:.4g}" for path, n, w in zip(paths, rows, weights) if n)
    how = (
        "LLaMA-Factory's num_samples: that many rows drawn, more than the file's repeat it"
        if concat
        else f"LLaMA-Factory's interleaving {'stops at the first dataset used up' if strategy.endswith('under') else 'goes on until the last is'}"
    )
    notes is None or notes.append(
        f"{said} ({source}) are data_weights {','.join(f'{w:.6g}' for w in weights)} here: {mixed} ({how})"
    )
    return keep + [("data_weights", ",".join(f"{w:.6g}" for w in weights))]


def dataset_mixer_as_weights(items):
    """A run file's ``data_path: {PATH: WEIGHT, ...}`` (the alignment handbook's dataset_mixer) as data_path and
    data_weights."""
    weighted = [k for k, v in items if canonical_key(k) == "data_path" and isinstance(v, dict)]
    if weighted and (named := [k for k, _ in items if canonical_key(k) == "data_weights"]):
        raise FtctlError(
            f"{weighted[0]!r} is a mapping of datasets to weights, and {named[0]!r} gives weights too: keep one."
        )
    for key, value in items:
        if canonical_key(key) == "data_path" and isinstance(value, dict):
            yield key, list(value)
            yield "data_weights", list(value.values())
        else:
            yield key, value


def llama_factory_max_samples(cap, paths: list[str], samples: list, source: str, notes=None, held_out=False) -> list:
    """LLaMA-Factory's max_samples (each dataset cut to its first ``cap`` rows, after its entry's num_samples) over
    the datasets of its ``dataset`` names (``paths``, ``samples``: their entries' num_samples): where every one holds
    that many rows or fewer it asks for nothing (noted); a larger one gives ``cap`` of its rows, drawn with the run's
    seed (num_samples here: llama_factory_mix's data_weights). The num_samples so; FtctlError where it is no number
    above 0, or a dataset's rows are not counted here. ``held_out``: ``paths`` are eval_dataset's, which
    LLaMA-Factory cuts too and ftctl evaluates whole: a larger one is refused, saying to give its first rows."""
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise FtctlError(
            f"max_samples: {config_text(cap)} ({source}) is no number of rows: give a whole number above 0, or drop "
            "it to train on every row."
        )
    rows = [_records_in(p) for p in paths]
    which = "eval_dataset's datasets too (as LLaMA-Factory does)" if held_out else "each dataset"
    if uncounted := [p for p, n in zip(paths, rows) if n is None]:
        raise FtctlError(
            f"max_samples: {cap} ({source}) cuts {which} at {cap:,} rows, and {', '.join(uncounted)} is no "
            f"local JSON file whose rows ftctl counts here: drop max_samples (every row "
            f"{'trains and is evaluated' if held_out else 'trains'}), or give a file of those rows (head -n {cap} data.jsonl > "
            "part.jsonl)."
        )
    drawn = [n if m is None else m for n, m in zip(rows, samples)]
    cut = [p for p, m in zip(paths, drawn) if m > cap]
    counted = ", ".join(f"{p} {m:,}" for p, m in zip(paths, drawn))
    if held_out and cut:
        raise FtctlError(
            f"max_samples: {cap} ({source}) cuts eval_dataset's datasets too, as LLaMA-Factory does, to their first "
            f"{cap:,} rows ({counted}), and ftctl evaluates every held-out row: give eval_dataset's entry a file of "
            f"those rows (head -n {cap} {cut[0]} > {Path(cut[0]).stem}-{cap}.jsonl, as its file_name), or drop "
            "max_samples (every row trains and is evaluated)."
        )
    if not cut:
        notes is None or notes.append(
            f"max_samples: {cap} ({source}): every {'held-out ' if held_out else ''}dataset has that many rows or "
            f"fewer ({counted}), so all of them {'are evaluated' if held_out else 'train'}, as in LLaMA-Factory"
        )
        return samples
    notes is None or notes.append(
        f"max_samples: {cap} ({source}): {', '.join(cut)} give {cap:,} of their rows ({counted}): LLaMA-Factory takes "
        "the first ones, ftctl draws them with the run's seed (data_weights below)"
    )
    return [cap if m > cap else s for s, m in zip(samples, drawn)]
