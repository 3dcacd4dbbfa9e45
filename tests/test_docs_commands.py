"""The commands the user documentation shows still work. Every `ftctl ...` line of the shell code blocks of README.md
and docs/*.md (```bash, ```sh, ```console or unlabelled; `\\` continuations joined, `# comments` dropped, `;`/`&&`
chains split) is either run here, in-process through click's CliRunner, offline, in tmp_path, and must exit 0 (or,
listed in REFUSED, be refused in one line), or listed in NOT_RUN with the reason. A line that is neither fails
test_every_docs_line_is_run_or_listed, so a new docs line gets covered; a NOT_RUN entry the docs no longer show fails
too. Every line, run or not, names commands and options the CLI has (test_every_docs_line_names_real_options), so a
renamed flag shows even in a line with placeholders (JOB, RUN, `...`).

What runs by itself: plan, render, keys, jobs, data check, launch --dry-run. Stand-ins, where the docs assume what
this machine lacks: the data files the lines name are written in tmp_path (FILES); `data check --model HUB_ID` and
./my-model (a model dir of the reader's) check with the tiny chat model (no Hub tokenizer offline); a Slurm dry run
needs no cluster (its sinfo note only); a launch without --backend is the local backend's, here refused where it asks
for GPUs (this machine has none: give such a docs line its --backend); SkyPilot's optimizer (plan --backend sky's
`cheapest` line, a subprocess of .venv-sky) is not asked: tests/test_sky_cost.py prices plans. The sky renders are
validated by SkyPilot itself (one subprocess)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ftctl.cli import main
from tests.render_fixtures import REPO, sky_validate

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
CHAIN = {";", "&&", "||", "&"}

# Lines not run, by their text as collected (shlex.join of the line), with why. Keep it to what cannot run here.
_SUBMITS = "a launch that submits (or trains here); its options are checked by test_every_docs_line_names_real_options"
_NO_JOB = "needs a job or run dir that does not exist here (JOB/RUN/RUN_DIR placeholders)"
_NO_RUN = "needs a trained run dir (tests/test_chat.py, test_evaluation.py, test_merge*.py run these on a tiny run)"
NOT_RUN = {
    "ftctl launch ...": "`...`: the flags of the line above, without --dry-run: " + _SUBMITS,
    "ftctl launch --backend slurm --partition gpu --time 12:00:00 ...": "`...` placeholder; " + _SUBMITS,
    "ftctl launch --backend docker ...": "`...` placeholder; " + _SUBMITS,
    "ftctl launch --backend sky --gpus 8xA100 --data s3://b/conv.json --output s3://b/runs/r1 '[--infra' "
    "'aws|gcp/us-central1|k8s|slurm/NAME]'": "[--infra ...] placeholder; a SkyPilot launch: " + _SUBMITS,
    "ftctl launch --backend sky ... --cluster dev": "`...` placeholder; a SkyPilot launch: " + _SUBMITS,
    "ftctl launch --backend sky ... --down": "`...` placeholder; a SkyPilot launch: " + _SUBMITS,
    "ftctl launch --backend sky ... --spot": "`...` placeholder; a SkyPilot launch: " + _SUBMITS,
    "ftctl logs -f JOB": _NO_JOB,
    "ftctl status JOB": _NO_JOB,
    "ftctl cancel JOB": _NO_JOB,
    "ftctl down JOB": _NO_JOB,
    "ftctl logs '[-f]' JOB": _NO_JOB,
    "ftctl cancel '[--wait' SECONDS '|' '--now]' JOB": _NO_JOB,
    "ftctl logs '[-f]' RUN_DIR": _NO_JOB,
    "ftctl cancel RUN_DIR": _NO_JOB,
    "ftctl status RUN_DIR": _NO_JOB,
    "ftctl status RUN": _NO_JOB,
    "ftctl logs '[-f]' RUN": _NO_JOB,
    "ftctl cancel '[--wait' SECONDS '|' '--now]' RUN": _NO_JOB,
    "ftctl chat runs/ftctl-qlora-qwen2-5-7b-instruct -p ...": _NO_RUN,
    "ftctl eval runs/ftctl-qlora-qwen2-5-7b-instruct --data held-out.jsonl --compare": _NO_RUN,
    "ftctl eval runs/a runs/b --data held-out.jsonl": "runs/a, runs/b name no run here: tests/test_eval315.py scores two",
    "ftctl merge runs/ftctl-qlora-qwen2-5-7b-instruct": _NO_RUN,
    "ftctl chat runs/my-lora-run -p 'What is ...?' --compare": _NO_RUN,
    "ftctl merge runs/my-lora-run": _NO_RUN,
    "ftctl build --gpus H100 '[--cuda' 'cu126]' '[--tag' 'T]' '[--push' 'REGISTRY]' '[--apptainer]' '[--dry-run]'": (
        "[optional] flags notation; builds with a docker engine (none here): tests/test_image.py checks its dry run"
    ),
    "ftctl sync ls s3://b/runs/r1": "reads bucket s3://b (credentials, network); tests/test_storage.py lists an S3 server",
}

# Launches of the docs without --dry-run that run here with --dry-run added: what they would send, their keys checked.
AS_DRY_RUN = {
    "ftctl launch --backend slurm --gpus 2x8xH100 -c run.yaml --method fft -o learning_rate=1e-5",
    "ftctl launch --data conv.json --eval-data held-out.json",
}

# Lines the docs show being refused: the text the one-line refusal says.
REFUSED: dict[str, str] = {}

# Lines that fail because the docs or ftctl are wrong (the lead decides which): xfail(strict=True), with why.
XFAIL: dict[str, str] = {}


def _messages(i: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}"}]
    }


def _sharegpt(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"Name {i}?"}, {"from": "gpt", "value": f"It is {i}."}]}


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# The files the lines name, written in the directory they run in.
FILES = {
    "chats.jsonl": _jsonl(_messages(i) for i in range(40)),
    "held-out.jsonl": _jsonl(_messages(i) for i in range(100, 110)),
    "conv.json": json.dumps([_sharegpt(i) for i in range(40)]),
    "held-out.json": json.dumps([_sharegpt(i) for i in range(100, 110)]),
    "run.yaml": "data_path: conv.json\nnum_train_epochs: 1\n",  # the demo's 135M model: its fft fits any disk
}


@dataclass
class DocsLine:
    tokens: list[str]  # the command as shlex reads it, `ftctl` (or a path to it) included
    at: int  # index of ftctl in tokens: what comes before it (`FOO=1`, `sudo`) is not run here
    where: list[str] = field(default_factory=list)  # FILE:LINE of each place the docs show it

    @property
    def text(self) -> str:
        return shlex.join(self.tokens)

    @property
    def argv(self) -> list[str]:
        return self.tokens[self.at + 1 :]


def _block_lines(path: Path):
    """(line number, logical line) of path's shell code blocks: `\\` continuations joined, a console's `$ ` dropped."""
    lang, pending, start = None, "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if m := FENCE.match(raw):
            lang = m.group(2).lower() if lang is None else None
            continue
        if lang not in SHELL_BLOCKS:
            continue
        if not pending:
            start = n
        text = raw.rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        line, pending = (pending + text).strip(), ""
        if lang != "console":
            yield start, line
        elif line.startswith("$ "):  # a console's other lines are output
            yield start, line[2:]


def collect(docs=DOCS) -> dict[str, DocsLine]:
    """Every ftctl command of the docs' shell code blocks, by its text."""
    found: dict[str, DocsLine] = {}
    for path in docs:
        for n, line in _block_lines(path):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&")
            lexer.whitespace_split = True
            try:
                tokens = list(lexer)
            except ValueError as e:  # output shown in an unlabelled block (an apostrophe) is no command
                if line.startswith("ftctl "):
                    raise ValueError(f"{path.name}:{n}: {line!r} cannot be read as a shell line: {e}") from None
                continue
            segment: list[str] = []
            for tok in [*tokens, ";"]:
                if tok not in CHAIN:
                    segment.append(tok)
                    continue
                at = next((i for i, t in enumerate(segment) if Path(t).name == "ftctl"), None)
                if at is not None:
                    doc = found.setdefault(shlex.join(segment), DocsLine(segment, at))
                    doc.where.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{n}")
                segment = []
    return found


LINES = collect()


def runs_here(doc: DocsLine) -> bool:
    """Whether a line runs by itself here: plan, render, keys, jobs, data check, launch --dry-run."""
    argv = doc.argv
    verb = argv[0] if argv else ""
    return doc.at == 0 and (
        verb in ("plan", "render", "keys", "jobs")
        or argv[:2] == ["data", "check"]
        or (verb == "launch" and "--dry-run" in argv)
    )


RUN = {text: doc for text, doc in LINES.items() if text not in NOT_RUN and (text in AS_DRY_RUN or runs_here(doc))}


def _param(text: str):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[text])] if text in XFAIL else []
    return pytest.param(text, marks=marks, id=text.removeprefix("ftctl ")[:100])


def test_docs_show_ftctl_commands():
    """The collector reads the docs: the README's first steps are found (a change of fences would find nothing)."""
    assert len(LINES) >= 20 and len(RUN) >= 8, sorted(LINES)
    assert any(doc.argv[:1] == ["plan"] and doc.where[0].startswith("README.md") for doc in RUN.values())


def test_the_collector_reads_lines_as_a_shell_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Prose: `ftctl plan --not-collected`.\n"
        "```bash\n"
        "ftctl plan --gpus 1xA100 \\\n"
        "     --model m   # a comment; ftctl not-a-command\n"
        "ftctl jobs ; ftctl logs -f JOB && .venv/bin/ftctl keys 'a b'\n"
        "FTCTL_DEBUG=1 ftctl status JOB\n"
        "bash scripts/demo.sh\n"
        "```\n"
        "```yaml\nftctl: not a command\n```\n"
        "```console\n$ ftctl keys lora\nftctl: output, not a command\n```\n"
        "```\ntorchrun -m ftctl.trainer --spec spec.json\nerror: it's output\n```\n"
    )
    found = collect([page])
    assert list(found) == [
        "ftctl plan --gpus 1xA100 --model m",
        "ftctl jobs",
        "ftctl logs -f JOB",
        ".venv/bin/ftctl keys 'a b'",
        "FTCTL_DEBUG=1 ftctl status JOB",
        "ftctl keys lora",
    ]
    assert found["ftctl plan --gpus 1xA100 --model m"].where == ["page.md:3"]
    assert found[".venv/bin/ftctl keys 'a b'"].argv == ["keys", "a b"]
    assert not runs_here(found["FTCTL_DEBUG=1 ftctl status JOB"])  # what comes before ftctl is not run here


def test_every_docs_line_is_run_or_listed():
    new = [f"{d.text}  ({', '.join(d.where)})" for t, d in LINES.items() if t not in RUN and t not in NOT_RUN]
    assert not new, (
        "docs lines that are neither run by tests/test_docs_commands.py nor listed in its NOT_RUN (add each, with "
        "why, or make it runnable):\n" + "\n".join(new)
    )
    gone = sorted((set(NOT_RUN) | AS_DRY_RUN | set(REFUSED) | set(XFAIL)) - set(LINES))
    assert not gone, (
        "entries of tests/test_docs_commands.py's tables the docs no longer show (remove them):\n" + "\n".join(gone)
    )


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}


def test_every_docs_line_names_real_options():
    """Each line's command and its options (placeholders and [optional] brackets aside) are the CLI's own."""
    wrong = []
    for doc in LINES.values():
        command, argv = main, doc.argv
        while isinstance(command, click.Group) and argv and not argv[0].startswith("-"):
            sub = command.get_command(click.Context(command), argv[0])
            if sub is None:
                wrong.append(f"{doc.text}: no command {argv[0]!r} ({', '.join(doc.where)})")
                break
            command, argv = sub, argv[1:]
        known = _options(command)
        for word in argv:
            if word == "--":
                break
            flag = word.strip("[]").split("=", 1)[0]
            if flag.startswith("-") and flag not in ("-", "...") and flag not in known:
                wrong.append(f"{doc.text}: {command.name} has no option {flag} ({', '.join(doc.where)})")
    assert not wrong, "\n".join(wrong)


@pytest.fixture
def docs_machine(tmp_path, monkeypatch):
    """The directory the docs' lines run in, with the files they name; offline; no cluster, no SkyPilot asked."""
    from ftctl.slurm import scheduler

    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("FTCTL_BACKEND", "FTCTL_DEBUG", "SLURM_CONF", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(scheduler, "_ANSWERS", {})  # no Slurm answers kept from another test's fake sinfo

    def bridge(op, **kwargs):
        assert op == "optimize", f"a docs line asked SkyPilot for {op!r} in-process: list it in NOT_RUN"
        return {"unavailable": "SkyPilot not asked (tests/test_docs_commands.py)"}

    monkeypatch.setattr("ftctl.sky.bridge.call", bridge)
    return tmp_path


def _standing_in(doc: DocsLine, request) -> list[str]:
    """The line's arguments as run here (see the module's docstring)."""
    argv = list(doc.argv)
    if argv[:2] == ["data", "check"] and "--model" in argv[:-1]:
        i = argv.index("--model") + 1
        if not Path(argv[i]).exists():  # a Hub id (no tokenizer offline), ./my-model: the tiny chat model's
            argv[i] = str(request.getfixturevalue("tiny_model_dir"))
    if doc.text in AS_DRY_RUN:
        argv.append("--dry-run")
    return argv


def run_line(doc: DocsLine, request):
    return CliRunner().invoke(main, _standing_in(doc, request))


@pytest.mark.parametrize("text", [_param(t) for t in RUN])
def test_docs_line_runs(text, docs_machine, request):
    doc = RUN[text]
    got = run_line(doc, request)
    out = got.output
    assert "Traceback" not in out and (got.exception is None or isinstance(got.exception, SystemExit)), out
    if text in REFUSED:
        assert got.exit_code != 0 and REFUSED[text] in out, out
        assert len(out.strip().splitlines()) == 1 and out.startswith("error: "), out
        return
    assert got.exit_code == 0, f"{text} ({', '.join(doc.where)}) exited {got.exit_code}:\n{out}"
    if doc.argv[0] in ("render", "keys", "jobs") or "--dry-run" in doc.argv or text in AS_DRY_RUN:
        assert got.stdout.strip() or doc.argv[0] == "jobs", out
    # nothing written beside the files the lines read (a dry run, a plan, a render write nothing)
    assert sorted(p.name for p in docs_machine.iterdir()) == sorted(FILES)


def test_docs_sky_renders_are_tasks_skypilot_takes(docs_machine, request):
    """The SkyPilot task YAML the docs' `render --backend sky` lines print, read by SkyPilot's own Task (.venv-sky)."""
    lines = [d for t, d in RUN.items() if d.argv[0] == "render" and "sky" in d.argv and t not in XFAIL]
    if not lines:
        pytest.skip("the docs show no `ftctl render --backend sky` line")
    files = []
    for i, doc in enumerate(lines):
        got = run_line(doc, request)
        assert got.exit_code == 0, got.output
        files.append(docs_machine / "home" / f"task{i}.yaml")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_text(got.stdout)
    said = sky_validate(files)
    assert all(r["ok"] for r in said.values()), said
