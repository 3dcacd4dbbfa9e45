"""The commands and flags the docs' prose names are the CLI's own. tests/test_docs_commands.py runs the lines of the
docs' code blocks; the inline code spans of README.md and docs/*.md (`ftctl launch -c sft.yaml`, `--sbatch-arg`,
`-o eval_split=0.05`) are read here, without running anything:

- a span that starts with `ftctl ` (or with a command and a flag: `launch --dry-run`, `logs -f`) names a command the
  CLI has, and click's own parser of that command takes its options and its count of arguments. JOB, RUN_DIR, FILE
  ... stand for arguments and values; `...` for an option's value or more flags (left out); `[-f]` is read without its
  brackets, `ls|push|pull` in a command's place as each, `local|sky` as a choice option's value as each of its choices;
- a span that starts with a flag (`--sbatch-arg`, `--wait SECONDS`) is an option of some ftctl command, and the rest of
  the span parses as that command's; or another tool's flag: SkyPilot's (foreign_args.SKY_FLAGS, which ftctl answers
  with its own spelling) or one of OTHER_TOOLS (sbatch's, torchrun's, docker's ...);
- every `-o KEY=VALUE`, in either, names a run key (spec.FIELDS, through spec.canonical_key, which takes a key's other
  names: max_seq_length), or one of OTHER_KEYS, names ftctl reads to say something else.

The lines of the code blocks go through the same parser (test_docs_commands.py checks their option names only): a
line listed there as not run still has its arguments counted and its -o keys looked up. Last, what the prose says of
the code's defaults and lists is the code's: a `--flag` (N) default, the GPU types, the LoRA table, the FTCTL_*
variables, the status line shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from ftctl import spec
from ftctl.cli import main
from ftctl.foreign_args import OTHER_VERBS, SKY_FLAGS
from ftctl.tool_datasets import MIX_KEYS
from ftctl.tool_vocabulary import not_a_key
from tests.render_fixtures import REPO
from tests.test_docs_commands import DOCS, LINES
from tests.test_docs_links import FENCE

# Spans that start with a dash and are no option, by their text, with what they are.
NOT_OPTIONS = {
    "-": "an apptainer image name's first character (image.md)",
    "-Instruct": "a model id's suffix (plan.md)",
    "-chat": "a model id's suffix (plan.md)",
    "-it": "a model id's suffix (plan.md)",
    "-Base": "a model id's suffix (plan.md)",
    "-arm64": "an image tag's suffix (image.md)",
    "--KEY VALUE": "other tools' flags in general: foreign_args reads them as run keys",
}
# Other tools' flags the docs name, by name (without =VALUE), with the tool.
OTHER_TOOLS = {
    **dict.fromkeys(("--mem", "--mem-per-cpu", "--mem-per-gpu", "--gres", "--gpus*", "--signal"), "sbatch"),
    **dict.fromkeys(("--requeue", "--no-requeue", "--open-mode", "--array", "--chdir", "--export"), "sbatch"),
    **dict.fromkeys(("--nodelist", "--ar", "--ou"), "sbatch"),
    **dict.fromkeys(("--nproc_per_node", "--master_port"), "torchrun"),
    **dict.fromkeys(
        ("--user", "--device", "-e", "--ulimit", "--stop-timeout", "--security-opt", "--init", "--log-opt"),
        "docker / podman run",
    ),
    "-u": "bash's set -u",
}
# -o keys of the docs that are no run key: what ftctl does with each (checked below to be a name it reads).
OTHER_KEYS = {
    "hub_token": "refused, naming HF_TOKEN (tool_vocabulary.MEANT)",
    "wandb_api_key": "refused, naming WANDB_API_KEY (tool_vocabulary.MEANT)",
    "mix_strategy": "LLaMA-Factory's, read as data_weights (tool_datasets.MIX_KEYS)",
    "interleave_probs": "LLaMA-Factory's, read as data_weights (tool_datasets.MIX_KEYS)",
}
# `ftctl WORD` spans that show another tool's verb, which ftctl answers with the command that does it.
OTHER_VERB_SPANS = {"ftctl init": "preflight.md: other tools' verbs name ftctl's command (foreign_args.OTHER_VERBS)"}

SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|\$\w+|\$\{\w+\}|.*\.\.\..*|<\w+>")  # JOB, $HF_TOKEN, a.../b, <n>


def spans(page: Path) -> list[tuple[int, str]]:
    """(line, text) of the page's inline code spans outside code blocks; a span over two lines is joined by a space
    (CommonMark's)."""
    lines, inside = [], False
    for raw in page.read_text().splitlines():
        if FENCE.match(raw.lstrip()):
            inside = not inside
            raw = ""
        lines.append("" if inside else raw)
    text = "\n".join(lines)
    return [(text.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())) for m in SPAN.finditer(text)]


def words(text: str) -> list[str]:
    """A span's words as a shell reads them, `[optional]` brackets, a lone `|` and a trailing `&` left out."""
    try:
        tokens = shlex.split(text)
    except ValueError:  # an apostrophe in prose
        tokens = text.split()
    tokens = [t.removeprefix("[").removesuffix("]") for t in tokens]
    return [t for t in tokens if t not in ("", "|")][: -1 if tokens[-1:] == ["&"] else None]


def _key_problem(pair: str) -> str | None:
    key = pair.split("=", 1)[0]
    if key == "key" or PLACEHOLDER.fullmatch(key) or spec.canonical_key(key) in spec.FIELDS or key in OTHER_KEYS:
        return None
    return f"-o {key}: no run key {key!r} (`ftctl keys {key}`; spec.FIELDS)"


def _choice_problems(command: click.Command, opts: dict) -> list[str]:
    said = []
    for p in command.params:
        if not isinstance(p.type, click.Choice) or opts.get(p.name) is None:
            continue
        for value in opts[p.name] if isinstance(opts[p.name], (list, tuple)) else [opts[p.name]]:
            if PLACEHOLDER.fullmatch(value):
                continue
            said += [
                f"{p.opts[0]} {alt}: not one of {', '.join(p.type.choices)}"
                for alt in value.split("|")
                if alt not in p.type.choices
            ]
    return said


def parse(command: click.Command, name: str, argv: list[str]) -> list[str]:
    """What click's parser of ``command`` finds wrong in ``argv`` (unknown options, extra arguments, a choice it does
    not have), and the -o keys that are no run key."""
    ctx = click.Context(command, info_name=name)  # (resilient parsing would drop an unknown option)
    takes = {o for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
    # `...`: an option's value after one that takes it (`-p ...`), else more of the line (left out)
    argv = [w for i, w in enumerate(argv) if w != "..." or (i and argv[i - 1] in takes)]
    argv += ["VALUE"] * bool(argv and argv[-1] in takes)  # an option named last, its value left out: `data check -c`
    try:
        opts, extra, _ = command.make_parser(ctx).parse_args(argv)
    except click.UsageError as e:
        return [e.format_message()]
    said = [f"unexpected argument {a!r}" for a in extra]
    said += _choice_problems(command, opts)
    overrides = next((p.name for p in command.params if "-o" in p.opts), None)
    said += [p for pair in opts.get(overrides) or () if (p := _key_problem(pair))]
    return said


def command_problems(argv: list[str], path: tuple[str, ...] = ("ftctl",)) -> list[str]:
    """What is wrong with ``ftctl ARGV`` as the CLI reads it: the command path, then its options and arguments."""
    command = main
    for name in path[1:]:
        command = command.get_command(click.Context(command), name)
    if not isinstance(command, click.Group):
        return parse(command, path[-1], argv)
    ctx = click.Context(command, info_name=path[-1])
    try:  # the group's own options (ftctl -v), up to its command
        _, rest, _ = command.make_parser(ctx).parse_args(list(argv))
    except click.UsageError as e:
        return [e.format_message()]
    if not rest:
        return []
    said = []
    for alt in rest[0].split("|"):  # ftctl sync ls|push|pull
        if command.get_command(ctx, alt) is None:
            said.append(f"no command {' '.join((*path[1:], alt))!r}")
        else:
            said += command_problems(rest[1:], (*path, alt))
    return said


def _commands(group: click.Group = main, path: tuple[str, ...] = ("ftctl",)):
    for name in group.list_commands(click.Context(group)):
        sub = group.get_command(click.Context(group), name)
        yield from _commands(sub, (*path, name)) if isinstance(sub, click.Group) else [((*path, name), sub)]


COMMANDS = dict(_commands())


def flag_problems(argv: list[str]) -> list[str]:
    """What is wrong with a span that starts with a flag: no ftctl command has it, or none takes the rest of it."""
    flag = argv[0].split("=", 1)[0]
    having = [
        (path, c) for path, c in COMMANDS.items() if flag in {o for p in c.params for o in (*p.opts, *p.secondary_opts)}
    ]
    if not having:
        return [] if flag in SKY_FLAGS or flag in OTHER_TOOLS or flag == "--help" else [f"no ftctl command has {flag}"]
    tries = [parse(c, path[-1], argv) for path, c in having]
    return [] if any(not t for t in tries) else [f"{' '.join(having[0][0])}: {'; '.join(tries[0])}"]


def _names_a_command(text: str) -> bool:
    """`launch --dry-run`, `logs -f`, `data check -c`: a command of ftctl's, then a flag or (of a group) a command;
    not `eval at step N loss ...` (output)."""
    first, _, rest = text.partition(" ")
    command = main.get_command(click.Context(main), first)
    return bool(command and rest) and (rest.startswith("-") or isinstance(command, click.Group))


def prose_problems(docs=DOCS) -> list[str]:
    said = []
    for page in docs:
        for n, text in spans(page):
            if text.startswith("ftctl ") and text not in OTHER_VERB_SPANS:
                found = command_problems(words(text)[1:])
            elif _names_a_command(text):  # `launch --dry-run`, `sync ls`: ftctl's, its name left out
                found = command_problems(words(text))
            elif text.startswith("-") and text not in NOT_OPTIONS:
                found = flag_problems(words(text))
            else:
                continue
            said += [f"{page.name}:{n}: `{text}`: {p}" for p in found]
    return said


def test_the_reader_finds_what_went_stale(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `ftctl launch -c sft.yaml --gpus 8xA100 -o eval_split=0.05` or `ftctl logs [-f] JOB`, `ftctl sync ls|push|pull`\n"
        "and `--sbatch-arg=--mem=1G`, `--wait SECONDS`, `-o max_seq_length=512` (another name), `--mem` (sbatch's),\n"
        "`--cloud` (SkyPilot's), `ftctl launch --backend local|sky ...`, `ftctl data\ncheck A B`, ``ftctl jobs -n 3``,\n"
        "`launch --dry-run`, `data check -c`, `eval at step 3 loss 2.1` (output).\n"
        "```bash\n`ftctl launch --not-read`\n```\n"
        "Stale: `ftctl lauch`, `ftctl launch --gpu 8xA100`, `ftctl sync ls|list`, `--sbatch-args`, `-o eval_splitt=0.1`,\n"
        "`ftctl status JOB RUN`, `ftctl launch --backend slurmm`, `ftctl -x`, `--wait SECONDS --later`, `ftctl\n"
        "launch -o lrr=1`, `logs --follow-on`.\n"
    )
    assert [p.split(": ", 1)[1] for p in prose_problems([page])] == [
        "`ftctl lauch`: no command 'lauch'",
        "`ftctl launch --gpu 8xA100`: No such option '--gpu'. (Did you mean one of: '--gpus', '--output'?)",
        "`ftctl sync ls|list`: no command 'sync list'",
        "`--sbatch-args`: no ftctl command has --sbatch-args",
        "`-o eval_splitt=0.1`: ftctl launch: -o eval_splitt: no run key 'eval_splitt' (`ftctl keys eval_splitt`; "
        "spec.FIELDS)",
        "`ftctl status JOB RUN`: unexpected argument 'RUN'",
        "`ftctl launch --backend slurmm`: --backend slurmm: not one of local, slurm, sky, docker",
        "`ftctl -x`: No such option '-x'.",
        "`--wait SECONDS --later`: ftctl cancel: No such option '--later'. Did you mean '--wait'?",
        "`ftctl launch -o lrr=1`: -o lrr: no run key 'lrr' (`ftctl keys lrr`; spec.FIELDS)",
        "`logs --follow-on`: No such option '--follow-on'. Did you mean '--follow'?",
    ]


def test_docs_prose_names_real_commands_options_and_keys():
    said = prose_problems()
    assert not said, "spans of the docs' prose the CLI does not have (fix the docs, or list another tool's here):\n" + (
        "\n".join(said)
    )


def test_docs_code_lines_parse_and_name_real_keys():
    """The code blocks' lines, run or not (NOT_RUN's placeholders too), through the same parser."""
    said = [
        f"{', '.join(doc.where)}: {doc.text}: {p}"
        for doc in LINES.values()
        if doc.at == 0
        for p in command_problems(words(doc.text)[1:])
    ]
    assert not said, "\n".join(said)


def test_tables_hold_only_what_the_docs_show():
    shown = {text for page in DOCS for _, text in spans(page)}
    named = {words(t)[0].split("=", 1)[0] for t in shown if t.startswith("-")}
    keys = {w[i + 1].split("=", 1)[0] for t in shown for w in [words(t)] for i in range(len(w) - 1) if w[i] == "-o"}
    gone = [*(set(NOT_OPTIONS) | set(OTHER_VERB_SPANS)) - shown, *set(OTHER_TOOLS) - named, *set(OTHER_KEYS) - keys]
    assert not gone, f"entries of {Path(__file__).name}'s tables the docs no longer show (remove them): {gone}"
    assert all(not_a_key(k) or k in MIX_KEYS for k in OTHER_KEYS), "an OTHER_KEYS entry ftctl does not read"
    assert all(t.split()[1] in OTHER_VERBS for t in OTHER_VERB_SPANS)
    ours = {o for c in COMMANDS.values() for p in c.params for o in (*p.opts, *p.secondary_opts)}
    assert not set(OTHER_TOOLS) & ours, "a flag listed as another tool's is ftctl's: check it as ftctl's"


@pytest.mark.parametrize("text", ["ftctl keys lora", "ftctl sync", "ftctl -v", "ftctl demo --steps 3"])
def test_commands_that_read_right(text):
    assert command_problems(words(text)[1:]) == []


# ---------------------------------------------------------------- what the prose says of defaults and lists


def test_a_default_in_parentheses_is_the_options():
    """`--max-new-tokens` (256), `--batch-size` (4): the default of that option, in the command that has it."""
    said, seen = [], 0
    for page in DOCS:
        for m in re.finditer(r"`(--[\w-]+)` \((\d[\d.,]*)\)", page.read_text()):
            flag, value = m.group(1), m.group(2).replace(",", "")
            defaults = {str(p.default) for c in COMMANDS.values() for p in c.params if flag in p.opts}
            seen += 1
            if value not in defaults:
                said.append(f"{page.name}: `{flag}` ({m.group(2)}): its default is {' or '.join(defaults) or 'none'}")
    assert seen >= 2 and not said, said


def test_the_gpu_types_listed_are_the_planners():
    from ftctl.gpus import TIERS

    text = (REPO / "docs" / "plan.md").read_text()
    listed = re.search(r"^GPU types: (.*?)\.\n\n", text, re.S | re.M).group(1)
    assert [re.sub(r" \(.*?\)", "", n).strip() for n in " ".join(listed.split()).split(",")] == list(TIERS)


def test_the_lora_table_says_specs_defaults():
    rows = re.findall(r"^\| `(\w+)` \| `?([^|`]+?)`? \|", (REPO / "docs" / "methods.md").read_text(), re.M)
    shown = {key: value for key, value in rows if key in spec.LORA_KEYS}
    assert set(shown) == set(spec.LORA_KEYS)
    for key, value in shown.items():
        default = spec.FIELDS[key].default
        assert value == (str(default).lower() if isinstance(default, bool) else str(default)), (key, value, default)


def test_the_docs_name_the_variables_a_user_sets():
    """Every FTCTL_* the docs name is one ftctl reads from its user (envvars.SETTINGS), and each of those is named."""
    from ftctl.envvars import SETTINGS

    named = {m for page in DOCS for m in re.findall(r"\bFTCTL_[A-Z_]*[A-Z]\b", page.read_text())}
    assert named == set(SETTINGS), (sorted(named - set(SETTINGS)), sorted(set(SETTINGS) - named))


def test_the_status_line_shown_is_the_one_status_prints():
    """backends.md's progress line, as progress.summary writes it for those numbers (it showed one space before
    `loss`, where there are two, and `0.8 s` a step, which it writes `0.80 s`)."""
    from ftctl.progress import summary

    rows = [
        {"step": s, "loss": 1.2345, "tokens_per_s": 7234, "max_steps": 1000, "time": 0.8 * s} for s in (100, 110, 120)
    ]
    rows.insert(1, {"event": "eval", "step": 100, "eval_loss": 1.3012})
    line = summary(rows, lambda record: True, running=True, now=96.0)
    assert line.startswith("step 120/1000 (12%)") and f"  {line}\n" in (REPO / "docs" / "backends.md").read_text()
