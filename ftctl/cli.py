"""The ftctl command line. Wiring only: parse, call, print. Heavy imports live inside commands."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from ftctl import __version__, foreign_args
from ftctl.errors import FtctlError
from ftctl.foreign_args import FLAG_KEYS
from ftctl.spec import BACKENDS, METHODS


class _Group(click.Group):
    """User errors print one message and exit non-zero; FTCTL_DEBUG=1 shows the traceback. click's refusals are said
    in ftctl's style too (_refuse): `error: ...`, as FtctlError's."""

    def make_context(self, info_name, args, parent=None, **extra):
        """ftctl's own options are parsed here, before its command: a command's option given there (`ftctl --follow
        logs JOB`) is said with the line that works (_before_its_command). A group under ftctl (data, sync) leaves its
        refusals to ftctl's invoke, which says them."""
        argv = list(args)  # as given: click takes them off as it parses
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as e:
            if parent is not None:
                raise
            if isinstance(e, click.NoSuchOption) and not _before_its_command(e, argv):
                _where_it_goes(e, argv)
            if isinstance(e, click.UsageError):
                _unrepeated(e)
            _refuse(e)

    def invoke(self, ctx):
        # a call for help is answered whatever the config file holds (main checks it for every other command)
        ctx.meta["argv"] = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # click empties them as it parses
        ctx.meta["help"] = bool({"-h", "--help"} & set(ctx.meta["argv"]))
        try:
            return super().invoke(ctx)
        except FtctlError as e:
            if os.environ.get("FTCTL_DEBUG"):
                raise
            click.echo(f"{e.prefix}{_shown(str(e))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.NoSuchOption as e:
            _where_it_goes(e, ctx.meta["argv"])
            _unrepeated(e)
            _refuse(e)
        except click.UsageError as e:
            _unrepeated(e)
            _refuse(e)
        except click.ClickException as e:
            _refuse(e)

    def resolve_command(self, ctx, args):
        """Another tool's verb (`ftctl init`, `ftctl finetune`) names what runs here instead (foreign_args)."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            if ctx.parent is None and args and (instead := foreign_args.other_verb(args[0])):
                e.message = f"No such command {args[0]!r}: {instead}."
            raise


class _JobArgument(click.Argument):
    """JOB of status, logs, cancel and down: missing, it says what a job reference is and where to find one (click's
    "Missing argument 'JOB'." alone named none)."""

    def process_value(self, ctx, value):
        try:
            return _no_credential(ctx, self, super().process_value(ctx, value))
        except click.MissingParameter as e:
            e.message = (
                "Give a job's id, its run directory, or its object-store output (s3://bucket/run): `ftctl jobs` lists "
                f"the jobs launched from here.{_newest_job(ctx.command.name) if ctx.command.name == 'logs' else ''}"
            )
            raise


def _newest_job(command: str) -> str:
    """' The newest: `ftctl COMMAND JOB`.' of the jobs launched from here, for a JOB left out ('' where there is none):
    a first `ftctl status` after a launch was told only to look for the job's id in `ftctl jobs`."""
    import shlex

    from ftctl.backend import recorded_jobs

    try:
        newest = recorded_jobs()[:1]
    except OSError:  # the jobs record unreadable: `ftctl jobs` says why
        return ""
    return f" The newest: `ftctl {command} {shlex.quote(newest[0][0].job_id)}`." if newest else ""


class _RunFileCommand(click.Command):
    """A command that takes RUN_FILE (plan, render, launch, train): a second run file given as another argument
    (`ftctl plan a.yaml b.yaml`) is refused as `-c a.yaml -c b.yaml` is (_one_run_file: ftctl reads one, and how to
    combine them), where click said "Got unexpected extra argument (b.yaml)". Other extra arguments are click's."""

    def parse_args(self, ctx, args):
        ctx.allow_extra_args = True  # click's parse leaves them in ctx.args; refused below as click refuses them
        try:
            rest = super().parse_args(ctx, args)
        finally:
            ctx.allow_extra_args = False
        if run_files := [a for a in rest if a.lower().endswith((".yaml", ".yml"))]:
            _one_run_file(ctx.params.get("config") or (), ctx.params.get("run_file"), *run_files)
            rest = [a for a in rest if a not in run_files]  # the run file again: read once, as -c a.yaml -c a.yaml
        if rest and not ctx.resilient_parsing:
            s = "s" if len(rest) > 1 else ""
            ctx.fail(f"Got unexpected extra argument{s} ({' '.join(rest)})")
        ctx.args = rest
        return rest


def _refuse(e: click.ClickException) -> NoReturn:
    """click's refusal said as ftctl's own are: click's usage lines, then `error: MESSAGE` (FtctlError's prefix;
    click's own is `Error: MESSAGE`), and click's exit code (2 for a usage error). One style, so that a user (or a log
    search) sees one word for every refusal; the last line is still the message, as with click."""
    if type(e).show not in (click.ClickException.show, click.UsageError.show):  # `ftctl data` alone: its help
        e.show()
        sys.exit(e.exit_code)
    ctx = getattr(e, "ctx", None)
    color = ctx.color if ctx is not None else None
    if ctx is not None:
        hint = f"Try '{ctx.command_path} --help' for help.\n" if ctx.command.get_help_option(ctx) else ""
        click.echo(f"{ctx.get_usage()}\n{hint}", err=True, color=color)
    click.echo(f"{FtctlError.prefix}{_shown(e.format_message())}", err=True, color=color)
    sys.exit(e.exit_code)


def _shown(message: str) -> str:
    """An error line as the terminal gets it, ftctl's own and click's alike (click's repeat what was typed: an
    option's value, an extra argument): a credential that reached it by a way no check foresaw (a library's error, a
    value click repeats) masked (secret_checks.redacted), and a value's control characters (a run file's path
    holding ESC]0;...BEL) shown as \\xNN, not sent to the terminal."""
    from ftctl.secret_checks import redacted
    from ftctl.terminal import printable

    return printable(redacted(message))


def _before_its_command(e: click.NoSuchOption, argv: list[str]) -> bool:
    """`ftctl --follow logs JOB`: an option of the command after it, given before it (where ftctl's own go, so ftctl
    refused it), said with the line that works: "options of `ftctl logs` go after it: `ftctl logs --follow JOB`".
    False where no command after it takes the option (then _where_it_goes says who does)."""
    import shlex

    i, before = 0, []
    while i < len(argv) and argv[i] not in main.commands:  # the command: the first word that is no option's value
        word = argv[i]
        takes_value = word.startswith("-") and "=" not in word and _takes_value(word)
        before += argv[i : i + 1 + takes_value]
        i += 1 + takes_value
    if i >= len(argv):
        return False
    path, command = [argv[i]], main.commands[argv[i]]
    if isinstance(command, click.Group) and i + 1 < len(argv) and argv[i + 1] in command.commands:
        path.append(argv[i + 1])
        command = command.commands[argv[i + 1]]
    if not any(e.option_name in (*p.opts, *p.secondary_opts) for p in command.params if isinstance(p, click.Option)):
        return False
    own = [w for w in before if _is_root_option(w)]  # ftctl -v stays where it goes
    moved = [w for w in before if not _is_root_option(w)]
    line = shlex.join(["ftctl", *own, *path, *moved, *argv[i + len(path) :]])
    e.message = (
        f"No such option '{e.option_name}' for `ftctl`: options of `ftctl {' '.join(path)}` go after it: `{line}`."
    )
    e.possibilities = None
    return True


def _takes_value(option: str) -> bool:
    """Whether ``option`` takes a value in the commands that have it (-n 5, --tail 5; --follow: none)."""
    found = []

    def walk(group: click.Group) -> None:
        for command in group.commands.values():
            if isinstance(command, click.Group):
                walk(command)
            else:
                found.extend(
                    p for p in command.params if isinstance(p, click.Option) and option in (*p.opts, *p.secondary_opts)
                )

    walk(main)
    return any(not p.is_flag and not p.count for p in found)


def _no_credential(ctx, param, value):
    """click's callback for an argument that names a job, a run, a path or a URI (and --endpoint-url): FtctlError where
    it holds a credential (secret_checks.argument_problem), which the error of the command, or botocore's and
    huggingface_hub's tracebacks, would repeat; the value as it is otherwise."""
    from ftctl.secret_checks import argument_problem

    what = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, str) and (said := argument_problem(what, v)):
            raise FtctlError(said)
    return value


def _a_registry(ctx, param, value):
    """build --push's callback: a user and password in it (https://user:PASS@ghcr.io/org or without the scheme) is
    refused with `docker login` (build.push_credentials), not with _no_credential's object-store keys; then as
    _no_credential (a token, a secret's value)."""
    from ftctl.docker.build import push_credentials

    if value and (said := push_credentials(value)):
        raise FtctlError(said)
    return _no_credential(ctx, param, value)


def _where_it_goes(e: click.NoSuchOption, argv: list[str]) -> None:
    """An option the command lacks, said where it goes: FastChat's --learning_rate 2e-5 (a run key: -o here),
    `launch --follow` (an option of `ftctl logs`), `train --backend` (launch's), `plan -v` (before the command)."""
    takes_keys = e.ctx is not None and any(p.name == "overrides" for p in e.ctx.command.params)
    takers = _taken_by(e.option_name, e.ctx)  # `ftctl launch --follow`: an option of another command
    sent = e.ctx is not None and e.ctx.command is train and any(t == "ftctl launch" for t in takers)
    if sent:  # `train --backend slurm` was told "-o backend=VALUE": train trains here whatever it says
        rest = [t for t in takers if t != "ftctl launch"]
        also = f" ({_listed(rest)} too)" if rest else ""
        e.message = (
            f"No such option '{e.option_name}' for `ftctl train`, which trains here, in this process: "
            f"`ftctl launch` takes it{also}."
        )
        e.possibilities = None
    elif e.ctx is not None and e.ctx.parent is not None and _is_root_option(e.option_name):
        # `ftctl plan -v`: as uv and gh take it; here ftctl's own options go before the command
        path = e.ctx.command_path.split(" ", 1)[1]
        there = "" if _is_root_option(e.option_name, eager=True) else f" {path} ..."  # --version: alone
        e.message = (
            f"No such option '{e.option_name}' for `{e.ctx.command_path}`: it is ftctl's own, "
            f"given before the command: `ftctl {e.option_name}{there}`."
        )
        e.possibilities = None
    elif takes_keys and (said := foreign_args.run_key_hint(e.option_name, e.ctx.command, argv)):
        if line := foreign_args.as_run_keys(argv, e.ctx.command):  # several: the whole line
            said = line if foreign_args.takes(e.option_name) else f"{said}\n{line}"
        e.message, e.possibilities = f"No such option: {e.option_name}. {said}", None
    elif own := _own_like(e):  # this command's own form of it (merge --output: --out), alone among click's guesses
        e.possibilities = own
    elif takers:  # the very option, elsewhere: not click's nearest of this command's (cancel --follow: --now)
        e.message = f"No such option '{e.option_name}' ({_listed(takers)} "
        e.message += f"takes it: `{takers[0]} --help`)." if len(takers) == 1 else "take it)."
        e.possibilities = None


def _own_like(e: click.NoSuchOption) -> list[str]:
    """click's guesses that are this command's own form of the option (merge --output: --out; launch --out:
    --output), one the start of the other: what the user meant, rather than the same option of another command."""
    return [p for p in e.possibilities or [] if p.startswith(e.option_name) or e.option_name.startswith(p)]


def _taken_by(option: str, ctx: click.Context | None) -> list[str]:
    """The commands that take ``option`` (-f: `ftctl logs`), the one it was given to left out."""
    here = ctx.command if ctx else None
    found: list[str] = []

    def walk(group: click.Group, path: str) -> None:
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, f"{path} {name}")
            elif command is not here and any(
                option in (*p.opts, *p.secondary_opts) for p in command.params if isinstance(p, click.Option)
            ):
                found.append(f"{path} {name}")

    walk(main, "ftctl")
    return found


def _is_root_option(option: str, eager: bool = False) -> bool:
    """-v, --verbose, --version: ftctl's own options, before the command (``eager``: one that acts alone)."""
    return any(
        option in (*p.opts, *p.secondary_opts) and (p.is_eager or not eager)
        for p in main.params
        if isinstance(p, click.Option)
    )


def _listed(commands: list[str]) -> str:
    """`a`, `b` and `c`."""
    named = [f"`{c}`" for c in commands]
    return " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)


def _unrepeated(e: click.UsageError) -> None:
    """click's own messages repeat the value they refuse ("Invalid value for '--method': 'hf_...' is not one of
    ..."): where it holds a credential (a secret pasted into the wrong place) the message says so instead, with the
    option and what it takes, and never repeats it. A choice or a number has no token's shape either."""
    from ftctl.secret_checks import holds_credential, looks_like_token

    param = getattr(e, "param", None)
    fixed = isinstance(
        getattr(param, "type", None), (click.Choice, click.types.IntParamType, click.types.FloatParamType)
    )
    said = f"{e.message} {getattr(e, 'option_name', '').lstrip('-')}"  # --hf_...: a token's shape has no '-' before
    if not (holds_credential(said) or (fixed and looks_like_token(said))):
        return
    usage = f"`{e.ctx.command_path if e.ctx else 'ftctl'} --help`"
    if isinstance(e, click.BadParameter):  # click adds "Invalid value for '--method': "
        choices = getattr(param, "type", None) and getattr(param.type, "choices", None)
        takes = f"choose one of {', '.join(map(str, choices))}" if choices else f"{usage} says what it takes"
        e.message = f"the value looks like a secret and is not repeated here: {takes}."
    else:  # an extra argument, an unknown command or option
        e.message = f"an argument looks like a secret and is not repeated here: {usage} says what goes where."
        e.possibilities = None  # NoSuchOption's "Did you mean"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ftctl")
@click.option("-v", "--verbose", is_flag=True, help="Show every third-party message (also FTCTL_VERBOSE=1).")
def main(verbose):
    """Fine-tune causal language models wherever the GPUs are: fft, sft, lora, qlora on a SkyPilot cloud,
    a Slurm cluster, a docker host or this machine. Start with `ftctl demo`."""
    from ftctl import quiet

    quiet.install(verbose)
    if not click.get_current_context().meta.get("help"):  # a config file's problem stops every other command
        from ftctl import envvars, userconfig

        if said := envvars.unknown_set(os.environ):  # a typo of FTCTL_CACHE ... changes nothing: said, not refused
            click.echo(said, err=True)
        os.environ[envvars.CHECKED_ENV] = "1"  # said here: not again by the trainer this command starts
        userconfig.load()


def run_options(fn=None, placement: bool = True):
    """RUN FLAGS shared by plan / render / launch; `train`, which runs here in this process, takes all but the
    flags of where a run is sent (``placement``)."""
    if fn is None:
        return lambda f: run_options(f, placement)
    what = [
        click.argument("run_file", required=False, type=click.Path(dir_okay=False)),  # as -c, axolotl's way
        click.option(
            "-c",
            "--config",
            type=click.Path(dir_okay=False),
            multiple=True,  # a second is refused (_one_run_file), not dropped as click drops all but the last
            help="Run description YAML (or RUN_FILE).",
        ),
        click.option("--method", type=click.Choice(METHODS, case_sensitive=False), help="Default: lora."),
        click.option("--gpus", metavar="NxTYPE", help="8xA100, 2x8xH100, A100-80GB:8, H100 or cpu."),
        click.option("--nodes", type=int, help="Number of nodes (also 2x8xH100)."),
        click.option("--model", metavar="ID|DIR", help="Model id or local directory (model_name_or_path)."),
        click.option("--model-params", metavar="SIZE", help="Model size when its config cannot be read: 7b, 135m."),
        click.option(
            "--data",
            metavar="PATH|URI",
            multiple=True,
            help="Dataset path or URI (data_path); repeat it (or a,b) for several; builtin:demo is bundled.",
        ),
        click.option(
            "--eval-data",
            metavar="PATH|URI",
            multiple=True,
            help="Held-out dataset (eval_data_path), evaluated every eval_steps and at the end.",
        ),
        click.option("--output", metavar="DIR|URI", help="Output directory or s3:// gs:// az:// URI."),
    ]
    where = [
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            help="Where it runs. Default: FTCTL_BACKEND, the config file's backend:, else local where this machine can train.",
        ),
        click.option("--partition", metavar="NAME", help="Slurm partition."),
        click.option("--account", metavar="NAME", help="Slurm account."),
        click.option("--qos", metavar="NAME", help="Slurm QOS."),
        click.option("--time", metavar="[D-]HH:MM:SS", help="Slurm time limit, e.g. 12:00:00."),
        click.option(
            "--container",
            metavar="KIND:IMAGE",
            help="docker:IMAGE, apptainer:IMAGE, pyxis:IMAGE, or none. Default: image: in the user config, "
            "else what `ftctl build` recorded.",
        ),
        click.option(
            "--setup",
            metavar="LINE",
            multiple=True,
            help="Shell line the job runs before training (module load cuda/12.4); slurm and sky.",
        ),
        click.option(
            "--sbatch-arg", "sbatch_args", metavar="OPTION", multiple=True, help="Extra #SBATCH option, e.g. --mem=64G."
        ),
        click.option("--spot/--no-spot", default=None, help="SkyPilot managed job on spot (Slurm/SSH: its nodes)."),
        click.option("--managed/--no-managed", default=None, help="SkyPilot managed job on on-demand instances."),
        click.option(
            "--infra", metavar="CLOUD[/REGION]", help="SkyPilot infra: aws, gcp/us-central1, k8s, slurm/CLUSTER."
        ),
        click.option("--cluster", metavar="NAME", help="SkyPilot cluster to launch or reuse (default: the run name)."),
        click.option("--down/--no-down", default=None, help="Tear the SkyPilot cluster down when the job ends."),
        click.option(
            "--secret",
            "secrets",
            metavar="NAME",
            multiple=True,
            help="Env var NAME passed to the job (never its value).",
        ),
    ]
    overrides = click.option(
        "-o",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any run key, e.g. -o learning_rate=3e-4 -o max_steps=40.",
    )
    for opt in reversed([*what, *(where if placement else []), overrides]):
        fn = opt(fn)
    return fn


def _spec(kw: dict, backend: str | None = None):
    from ftctl import spec as spec_mod

    configs, run_file = kw.pop("config", ()), kw.pop("run_file", None)
    # '' is no value (`-c "$RUN"` with RUN unset): it was taken as not given, the defaults trained instead
    empty = ["-c" if "" in configs else "", "RUN_FILE" if run_file == "" else ""]
    empty += [
        f"--{name.replace('_', '-')}" for name in ("gpus", "model", "model_params", "output") if kw.get(name) == ""
    ]
    if empty := [e for e in empty if e]:
        raise FtctlError(
            f"{' and '.join(empty)} given as '' (an unset shell variable?): give a value, or leave "
            f"{'them' if len(empty) > 1 else 'it'} out for the default."
        )
    config = _one_run_file(configs, run_file)
    overrides = kw.pop("overrides", ())
    flags = {key: kw.pop(name, None) for name, key in FLAG_KEYS.items()} | kw
    if backend and not flags.get("backend"):
        flags["backend"] = backend
    for key in ("setup", "sbatch_args", "secrets"):
        flags[key] = list(flags.get(key) or [])
    notes: list[str] = []
    spec = spec_mod.build(config, flags, overrides, notes)
    for note in notes:
        click.echo(f"note: {note}.", err=True)
    return spec


def _one_run_file(configs: tuple[str, ...], *run_files: str | None) -> str | None:
    """The run file of -c and RUN_FILE (``run_files``: a second one given as an extra argument, _RunFileCommand),
    given once (the same file twice is once). Two are refused: click kept the last -c and dropped the others unsaid.
    Not merged either (Hydra's and compose's way): spec.build reads one run file layer, and spec.json, the run's
    record, holds the keys it resolved, not the files they came from."""
    given = {run_file: run_file for run_file in run_files if run_file}
    for config in filter(None, configs):
        given.setdefault(config, f"-c {config}")
    if len(given) > 1:
        raise FtctlError(
            f"{'Two' if len(given) == 2 else len(given)} run files, {' and '.join(given.values())}: ftctl reads one. "
            "Put their keys in one file, or keep one and set the others' keys with -o KEY=VALUE (flags and -o win "
            "over the run file)."
        )
    return next(iter(given), None)


# ------------------------------------------------------------------------------------------ plan
@main.command(
    cls=_RunFileCommand,
    short_help="What a run would be: precision, strategy, batch, memory.",
    epilog="""\b
Examples:
  ftctl plan --gpus 1xA100 --method qlora --model Qwen/Qwen2.5-7B-Instruct
  ftctl plan run.yaml --gpus 2x8xH100 --json
  ftctl plan --backend sky --gpus 8xH100 --method qlora --model meta-llama/Llama-3.1-70B-Instruct""",
)
@run_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(as_json, **kw):
    """Precision, attention, strategy, batch and memory per GPU for a run; exits 2 when nothing fits.
    With --backend sky: the cheapest cloud/region/instance, its hourly price and an estimated total."""
    from ftctl.backend import get, plan_for
    from ftctl.preflight import check_lora_targets

    spec, p = plan_for(_spec(kw))
    for typo in check_lora_targets(spec, p.model):  # launch's check: a typo planned no adapter of its own
        raise FtctlError(typo.text)
    estimate = get(spec.backend).estimate(spec, p) if spec.backend else None
    if as_json:
        import json

        click.echo(json.dumps({**p.to_dict(), **({"cost": estimate} if estimate else {})}, indent=2))
    else:
        click.echo(p.table(spec) + (f"\n{estimate}" if estimate else ""))


_preflight_option = click.option(
    "--preflight/--no-preflight",
    "preflight_network",
    default=None,
    help="Run a short all-reduce across the job's processes first and stop below "
    "-o preflight_min_busbw_gbps (default 1 GB/s with GPUs, none on CPU): local, slurm and sky.",
)


@main.command(cls=_RunFileCommand, short_help="Print what launch would submit, without submitting it.")
@run_options
@_preflight_option
def render(**kw):
    """Print what `launch` would submit: sbatch, SkyPilot task YAML, docker or local command."""
    from ftctl.backend import prepare

    rendered = prepare(_spec(kw))
    if rendered.image:
        click.echo(rendered.image.line, err=True)
    click.echo(rendered.text, nl=False)


@main.command(
    cls=_RunFileCommand,
    short_help="Submit a run to Slurm, SkyPilot, docker or this machine.",
    epilog="""\b
Examples:
  ftctl launch --gpus 1xA100 --method qlora --model Qwen/Qwen2.5-7B-Instruct --data chats.jsonl
  ftctl launch run.yaml --backend slurm --partition gpu --time 12:00:00 --dry-run
  ftctl launch --backend sky --gpus 8xA100 --data s3://b/chats.jsonl --output s3://b/runs/r1
Then: ftctl jobs, ftctl logs -f JOB, ftctl status JOB.""",
)
@run_options
@_preflight_option
@click.option("--dry-run", is_flag=True, help="Print what would be submitted and stop.")
def launch(dry_run, **kw):
    """Render and submit a run; prints the job id and where its logs and checkpoints go.

    Without --backend: FTCTL_BACKEND or `backend:` in ~/.config/ftctl/config.yaml; else local when this
    machine has the GPUs asked for; else sky when SkyPilot has a cloud enabled; else a refusal."""
    from ftctl import backend

    bare = _names_no_run(kw)
    spec = _spec(kw)
    if bare:
        _say_if_demo(spec, "launch")
    backend.launch(spec, dry_run=dry_run)


def _names_no_run(kw: dict) -> bool:
    """No --model, --data or run file given (before _spec takes them out of ``kw``)."""
    return not any(kw.get(name) for name in ("model", "data", "config", "run_file"))


def _say_if_demo(spec, command: str) -> None:
    """A launch given no model, data or run file (a newcomer's first probe: a bare `ftctl launch`) trains the demo
    model on the demo data: said first, with how to run one's own (it trained here silently). Not where it is sent
    to a cluster or a cloud (--backend, FTCTL_BACKEND, the config's backend:, --partition/--infra): the preflight warns
    of each there (check_demo_defaults: a queue wait, money)."""
    from ftctl.backend import configured_backend, implied_backend
    from ftctl.spec import DEMO_DATA, is_demo_model

    if not (spec.data_path == DEMO_DATA and is_demo_model(spec.model_name_or_path)):
        return
    named = spec.backend or (configured_backend() or implied_backend(spec) or (None,))[0]
    if named in (None, "local", "docker"):  # None: the launch picks one, this machine where it can
        click.echo(
            f"note: this is the demo: {spec.model_name_or_path} on bundled conversations, --model's and --data's "
            f"defaults; yours: ftctl {command} --model ORG/NAME --data FILE.jsonl",
            err=True,
        )


@main.command(short_help="List the jobs launched from here and their state.")
@click.option(
    "-n", "--last", type=click.IntRange(min=1), default=20, show_default=True, help="How many of the newest jobs."
)
@click.option(
    "--prune",
    is_flag=True,
    help="Drop the records of jobs whose run directory and output are both gone from here (never one in object "
    "storage), and a job's older records; say what was dropped.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list (keys below).")
def jobs(last, prune, as_json):
    """The jobs launched from here, newest first, with the state each backend reports now.

    \b
    With --json, a list, newest first, of objects with these keys (notes go to stderr):
      job, backend, name, output, run_dir  as launched (run_dir: its run directory here)
      launched    when, in UTC (2026-12-07T14:02:05Z); null where its record says not
      state       PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, PREEMPTED or UNKNOWN
      state_line  the backend's words, as the table's STATE says them
    """
    from ftctl.backend import job_records, jobs_table, prune_jobs

    if not as_json:
        click.echo(prune_jobs() if prune else jobs_table(last))
        return
    import json

    if prune:
        click.echo(prune_jobs(), err=True)
    records, every = job_records(last)
    if every > len(records):
        click.echo(
            f"note: the newest {len(records)} of {every} jobs: `ftctl jobs --json -n {every}` lists them all.", err=True
        )
    click.echo(json.dumps([r.to_dict() for r in records], indent=2))


@main.command(short_help="List every run key (-o KEY=VALUE) with its default.")
@click.argument("word", required=False)
def keys(word):
    """Every run key (-o KEY=VALUE, or a run file's KEY: VALUE) with its default and what it does; WORD: only the
    keys whose name, section or text holds it."""
    import textwrap

    from ftctl.spec import described_keys
    from ftctl.tool_vocabulary import not_a_key

    rows = [r for r in described_keys() if not word or word.lower() in f"{r[0]} {r[1]} {r[3]}".lower()]
    if word and (said := not_a_key(word)):
        click.echo(said + "\n" * bool(rows))
        if not rows:
            return
    if not rows:
        raise FtctlError(f"No run key mentions {word!r}: `ftctl keys` lists them all.")
    section = None
    for where, key, default, said in rows:
        if where != section:
            click.echo(("\n" if section is not None else "") + where)
            section = where
        click.echo(
            textwrap.fill(
                f"{key} = {default}" + (f"  {said}" if said else ""),
                118,
                initial_indent="  ",
                subsequent_indent="      ",
            )
        )


@main.command(short_help="Show a job's state, step, loss and time left.")
@click.argument("job", required=False, metavar="JOB", callback=_no_credential)
@click.option("--exit-code", "exit_code", is_flag=True, help="Exit with the job's state as its code (below).")
@click.option("--json", "as_json", is_flag=True, help="Print what it says as one JSON object (keys below).")
def status(job, exit_code, as_json):
    """State of a launched job (a failed one: the trainer's error), its last logged step of its total and its loss;
    while it trains, the time a step takes, the time left and its newest checkpoint.

    \b
    With --exit-code (as git diff's), the code says the state, for scripts:
      0  pending, training or complete
      1  failed (the same launch would fail the same way: `ftctl logs JOB`)
      2  no such job, or its backend cannot be asked now (also without --exit-code)
      3  stopped before its end (cancelled, preempted, killed): the same `ftctl launch` resumes it
         (a run started with `ftctl train`: the same `ftctl train`)
      4  its state is not known (its backend no longer knows the job)

    \b
    With --json, one object (null where it says nothing; an error: on stderr, nothing on stdout, exit 2):
      job, backend, output  the job (backend null: an object-store output no job here was launched into)
      state, exit_code      its state (as `ftctl jobs --json`'s) and the code --exit-code exits with
      state_line, error     the backend's line; a failed job's error as its trainer said it
      notes                 the lines more it says of how it ended, as a list
      step, total_steps, loss, tokens_per_s, held_out_loss, held_out_step   numbers (a loss: "nan" too)
      step_time, time_left  as the text says them ("0.80 s", "12 min"); time_left only while it trains
      checkpoint            while it trains: its newest checkpoint, the line as said
      wandb_run_id, wandb_url, wandb_dir, wandb_sync, tensorboard_dir   where its metrics go (report_to): its W&B
                            run, its page (online), W&B's folder and the `wandb sync` line (offline); TensorBoard's
      lines                 the lines `ftctl status JOB` prints
    """
    from ftctl.backend import status_record

    if job is None:  # click's "Missing argument 'JOB'." alone named no way to find one
        raise click.UsageError(
            "Missing argument 'JOB': a job's id, its run directory, or its object-store output (s3://bucket/run, "
            f"from any machine). `ftctl jobs` lists the jobs launched from here.{_newest_job('status')}"
        )
    said = status_record(job)
    if as_json:
        import json

        click.echo(json.dumps(said.to_dict(), indent=2))
    else:
        click.echo("\n".join(said.lines))
    if exit_code and said.exit_code:
        sys.exit(said.exit_code)


@main.command(short_help="Print a launched job's log.")
@click.argument("job", cls=_JobArgument)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@click.option(
    "-n",
    "--tail",
    "lines",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only the log's last N lines (read from its end), then with -f what follows. Default: all of it, -f too.",
)
def logs(job, follow, lines):
    """Print a launched job's log."""
    from ftctl.backend import find_job

    b, ref = find_job(job)
    b.logs(ref, follow, lines)


@main.command(short_help="Cancel jobs (each one's trainer saves a checkpoint first).")
@click.argument("jobs", metavar="JOB...", nargs=-1, required=True, cls=_JobArgument)
@click.option(
    "--now",
    is_flag=True,
    help="Slurm, docker and SkyPilot: cancel at once, without asking the trainer for a checkpoint first (on Slurm it "
    "saves one only where its step ends within Slurm's KillWait; docker kills the container, SkyPilot the job).",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.IntRange(min=0),
    metavar="SECONDS",
    help="Slurm, docker and SkyPilot: how long to wait for the trainer's checkpoint before cancelling all the same "
    "(default: the run's signal_lead_s; docker's grace before it kills the container; SkyPilot's: for the store to "
    "commit it).",
)
def cancel(jobs, now, wait_s):
    """Cancel launched jobs, one after another, as scancel takes several (on Slurm, docker and SkyPilot each one's
    trainer saves a checkpoint first, and a Slurm job is not requeued; a local run stops at its next step, with a
    checkpoint). A job that cannot be cancelled is said, and the others still are; the exit status is then 2."""
    from ftctl.backend import find_job

    if now and wait_s is not None:
        raise click.UsageError("--now cancels without waiting for a checkpoint: pass --now or --wait, not both.")
    given = {name: value for name, value in (("now", now), ("wait_s", wait_s)) if value not in (False, None)}
    failed = 0
    for job in dict.fromkeys(jobs):  # `ftctl cancel 6 7 8` was "Got unexpected extra arguments (7 8)"
        try:
            b, ref = find_job(job)
            if refused := sorted(given.keys() - b.cancel_options):
                flags = ", ".join("--" + name.removesuffix("_s") for name in refused)
                raise click.UsageError(
                    f"{flags}: job {ref.job_id} runs on {b.name}, whose cancel takes no such option."
                )
            click.echo(b.cancel(ref, **given))
        except (FtctlError, click.UsageError) as e:
            if len(jobs) == 1:
                raise
            failed = max(failed, getattr(e, "exit_code", 2))
            click.echo(
                f"{getattr(e, 'prefix', 'error: ')}{_shown(e.format_message() if isinstance(e, click.UsageError) else str(e))}",
                err=True,
            )
    if failed:
        sys.exit(failed)


# ------------------------------------------------------------------------------------------ training
@main.command(cls=_RunFileCommand, short_help="Run the trainer here, in this process.")
@run_options(placement=False)
def train(**kw):
    """Run the trainer here, in this process (what torchrun runs on every node)."""
    from ftctl.backend import launching, prepare, write_files

    bare = _names_no_run(kw)
    spec = _spec(kw, backend="local")
    if bare:
        _say_if_demo(spec, "train")
    rendered = prepare(spec)
    with launching(rendered, "ftctl train"):  # a launch into the run meanwhile is refused, as one into a launch's
        write_files(rendered)
        from ftctl.local.backend import train_here

        sys.exit(train_here(rendered))


@main.command(short_help="Fine-tune a 135M model on bundled data, here.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the demo's own).")
def demo(steps):
    """Fine-tune SmolLM2-135M-Instruct on a bundled dataset on this machine; answers before and after."""
    from ftctl.trainer.demo import run_demo

    run_demo(**({"steps": steps} if steps is not None else {}))


@main.command(short_help="Merge a LoRA/QLoRA adapter into its base model.")
@click.argument("run", callback=lambda ctx, param, value: _a_place(value, "RUN"))
@click.option(
    "--out",
    metavar="DIR|URI",
    callback=_no_credential,
    help="Where to write the merged model (default: RUN/merged; of RUN/checkpoint-N: RUN/merged-checkpoint-N).",
)
@click.option(
    "--base",
    metavar="ID|DIR",
    callback=_no_credential,
    help="Merge into this model instead of the adapter's base: the unquantized model a pre-quantized base "
    "(a GPTQ or AWQ model; a *-bnb-4bit one, whose 4-bit weights a QLoRA merge dequantizes, with --original-base) "
    "was made from.",
)
@click.option(
    "--dequantized-base/--original-base",
    "dequantize",
    default=None,
    help="A QLoRA adapter goes into its base as the run trained over it: quantized to 4-bit NF4, then dequantized "
    "(the default: the merged model answers as the run did); --original-base: into the unquantized base instead.",
)
def merge(run, out, base, dequantize):
    """Merge a LoRA/QLoRA adapter into its base: a standard safetensors model directory."""
    import shlex

    from ftctl import storage
    from ftctl.trainer.merge import default_out, merged_into
    from ftctl.trainer.merge import merge as do_merge

    target = out or default_out(run)
    merged = do_merge(run, target, echo=_progress, base=base, dequantize=dequantize)
    where = target if storage.is_remote(target) else str(merged)  # a URI stays one (a Path folds its //)
    weights = sum(size for rel, size in storage.file_sizes(where).items() if rel.endswith(".safetensors"))
    into = merged_into(where)
    click.echo(
        f"merged into {where} ({storage.size_text(weights)} of weights{', ' + into if into else ''}): a plain "
        "transformers model, no PEFT needed"
    )
    click.echo(f"next:\n  ftctl chat {shlex.quote(where)} -p 'A question'")


def _a_place(value: str, what: str) -> str:
    """RUN as given; where no such path is, the output of the job launched from here that `ftctl status` finds by
    that reference (backend.find_job, the one lookup: a job's id, the run directory it was launched into): `ftctl chat
    12345`, the id `ftctl launch` printed, was "no such directory, and not a hub id". FtctlError where it names no
    place to look in (a typo'd scheme, ~nouser: storage)."""
    from ftctl.secret_checks import argument_problem
    from ftctl.storage import is_remote, local_path, place_problem

    if value and (said := argument_problem(what, value)):
        raise FtctlError(said)
    if value and not is_remote(value) and not os.path.lexists(os.path.expanduser(value)):
        from ftctl.backend import find_job

        try:
            ref = find_job(value)[1]
        except FtctlError:  # no job of that reference either: said below as a place, or by the command
            ref = None
        typed = os.path.abspath(os.path.expanduser(value))
        if ref and ref.output and (is_remote(ref.output) or os.path.abspath(local_path(ref.output)) != typed):
            click.echo(f"{what} {value}: the output of job {ref.job_id}, {ref.output}", err=True)
            return _with_endpoint(ref.output, ref) if is_remote(ref.output) else ref.output
        if ref is None and (found := _in_a_store_run(value)):  # runs/NAME/checkpoint-5: the checkpoint in the store
            uri, run_dir, ref = found
            click.echo(f"loading {uri} ({value}: the run directory {run_dir}'s output is in the store)", err=True)
            return _with_endpoint(uri, ref)
    elif value and not is_remote(value) and os.path.isdir(os.path.expanduser(value)):
        from ftctl.trainer.trained import holds_trained

        # a run's directory here whose output is in object storage (runs/NAME, as `ftctl jobs` and `status` name it)
        if (ref := _job_of(value)) and (output := _store_output(ref)) and not holds_trained(value):
            click.echo(f"loading {output} (the output of {value})", err=True)
            return _with_endpoint(output, ref)
    if said := place_problem(value, what):
        raise FtctlError(said)
    return _with_endpoint(value) if is_remote(value) else value


def _in_a_store_run(value: str):
    """(the URI, the run directory, its job) where ``value``, a path that is not here, lies inside a run directory
    here whose output is in object storage (runs/NAME/checkpoint-5: that run's checkpoint-5 is in the store, not on
    this disk); None otherwise."""
    from pathlib import Path

    from ftctl.runpaths import RunPaths
    from ftctl.storage import join

    path = os.path.abspath(os.path.expanduser(value))
    parent = os.path.dirname(path)
    while parent != os.path.dirname(parent) and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    while parent != os.path.dirname(parent):
        if RunPaths(Path(parent)).spec.is_file():
            if (ref := _job_of(parent)) and (output := _store_output(ref)):
                rest = os.path.relpath(path, parent).replace(os.sep, "/")
                return join(output, rest), os.path.relpath(parent), ref
            return None  # a local run's directory: the path is not in it
        parent = os.path.dirname(parent)
    return None


def _job_of(place: str):
    """The job `ftctl status` finds for ``place`` (backend.find_job: a job's id, a run directory, an object-store
    output, a local run's directory that no record names), None where none."""
    from ftctl.backend import find_job

    try:
        return find_job(place)[1]
    except FtctlError:
        return None


def _store_output(ref) -> str | None:
    """The job's output where it is in object storage (its record's, else its run directory's spec.json's), else
    None."""
    from ftctl.backend import run_spec
    from ftctl.storage import is_remote

    output = ref.output if is_remote(ref.output) else run_spec(ref).output
    return output if is_remote(output) else None


def _with_endpoint(uri: str, ref=None) -> str:
    """``uri`` (a run's output in an S3 store, or a checkpoint or merge in it), the S3 endpoint its launch recorded
    taken where the environment names none (trained.take_endpoint, said), as `ftctl status` reads the store with it
    (backend.run_spec: the run directory's spec.json). The job: ``ref``, else the one launched into ``uri`` or into
    the run above it."""
    from ftctl.backend import run_spec
    from ftctl.storage import scheme
    from ftctl.trainer.trained import take_endpoint

    if scheme(uri) != "s3":
        return uri
    if ref is None:  # the run's, else (a checkpoint, a merge) the run's above it
        run = uri.rstrip("/")
        ref = _job_of(run) or (_job_of(run.rsplit("/", 1)[0]) if "/" in run.split("://", 1)[1] else None)
    if ref is not None and (said := take_endpoint(run_spec(ref).s3_endpoint_url, uri)):
        click.echo(said, err=True)
    return uri


def _progress(line: str) -> None:
    """What a slow step is doing, on stderr (stdout holds the answers, the numbers, the merged model's path)."""
    click.echo(line, err=True)


@main.command(short_help="Talk to what a run trained.")
@click.argument("run", callback=lambda ctx, param, value: _a_place(value, "RUN"))
@click.option("-p", "--prompt", "prompts", multiple=True, help="Ask this and print the answer (repeatable).")
@click.option("--system", help="A system message before each conversation.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="The longest answer, in tokens.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy.")
@click.option(
    "--top-p",
    type=float,
    help="With --temperature: sample from the likeliest tokens of this much probability [default: the model's "
    "generation_config.json's, else 1.0].",
)
@click.option("--compare", is_flag=True, help="With -p: the base model's answers too, beside the run's.")
@click.option(
    "--plain-text/--chat-template",
    default=None,
    help="Continue each prompt as written, or wrap it in the chat template [default: as the run trained].",
)
def chat(run, prompts, system, max_new_tokens, temperature, top_p, compare, plain_text):
    """Talk to what a run trained: RUN is its output directory or its job's id (or a checkpoint, or a model id).
    Without -p, a conversation on stdin."""
    from ftctl.trainer import chat as chat_mod

    decoding = chat_mod.Decoding(max_new_tokens, temperature, top_p, system)
    decoding.check()
    if compare and not prompts:
        raise FtctlError("--compare asks the base and the run the same questions: give them with -p.")
    loaded = chat_mod.load(run, plain_text, echo=_progress)
    if prompts:
        chat_mod.ask(loaded, list(prompts), decoding, echo=click.echo, compare=compare)
    else:
        chat_mod.converse(loaded, decoding, echo=click.echo, interactive=sys.stdin.isatty())


@main.command("eval", short_help="Held-out loss and perplexity of what a run (or several) trained.")
@click.argument(
    "runs",
    metavar="RUN...",
    nargs=-1,
    required=True,
    callback=lambda ctx, param, value: [_a_place(v, "RUN") for v in value],
)
@click.option(
    "--data",
    "paths",
    metavar="PATH|URI",
    multiple=True,
    required=True,
    callback=_no_credential,
    help="Dataset(s), as --data of a run takes them.",
)
@click.option("--max-length", type=click.IntRange(min=2), help="Truncation (default: the run's model_max_length).")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Rows scored at once (lower it for memory).",
)
@click.option(
    "--compare", is_flag=True, help="The base model's numbers too, above the run's (once for runs sharing it)."
)
def eval_(runs, paths, max_length, batch_size, compare):
    """Held-out loss, perplexity and token accuracy of what a run trained on a dataset (RUN as for chat); of each of
    several datasets, then of all together. Several RUNs: a row each, scored on the same rows."""
    from ftctl.spec import join_paths, split_paths
    from ftctl.trainer.heldout import evaluate

    try:
        names = split_paths(join_paths(paths))
    except ValueError as e:
        raise FtctlError(f"{e}.") from None
    if not names:  # --data '': nothing was scored, and it exited 0
        raise FtctlError(f"--data {' '.join(paths)!r} names no data: give the held-out file(s), a directory or a URI.")
    for line in evaluate(runs, names, max_length, batch_size, compare, echo=_progress):
        click.echo(line)


@main.group(cls=_Group)
def data():
    """Check datasets before launching."""


@data.command("check", short_help="Check a dataset's rows and count its tokens.")
@click.argument("paths", nargs=-1, callback=_no_credential)
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    multiple=True,  # a second is refused, not dropped
    help="A run file: its data (and weights), model, chat template, max length and loss, as the run reads them.",
)
@click.option(
    "--model",
    metavar="ID|DIR",
    help="Model whose tokenizer and chat template to use (default: the run file's, else launch's default).",
)
@click.option(
    "--max-length", type=click.IntRange(min=2), default=None, help="model_max_length (default: the run default)."
)
@click.option(
    "--chat-template-path", metavar="FILE|ID", help="A Jinja file, or a tokenizer whose chat template to use instead."
)
@click.option(
    "--text-field",
    metavar="FIELD",
    help="The field of plain-text rows (dataset_text_field; default: the run file's, else text).",
)
@click.option(
    "--held-out",
    is_flag=True,
    help="Read PATHS as --eval-data: a directory of splits gives its test split; with -c, its rows that are the run "
    "file's training rows said.",
)
@click.option(
    "--eval-data",
    "eval_paths",
    metavar="PATH|URI",
    multiple=True,
    callback=_no_credential,
    help="Held-out data to check too, as a launch's --eval-data reads it, and its rows that are training rows (of "
    "PATHS, else of the run file's data) said.",
)
@click.option(
    "--show", type=click.IntRange(min=0), default=0, help="Print the first N rows as trained, the loss's tokens marked."
)
@click.option("--every-token", is_flag=True, help="The loss on every token, as -o assistant_only_loss=false trains.")
@click.option(
    "--write-valid",
    metavar="OUT",
    help="Write the rows without errors of the data file to the new file OUT, as they are, in order.",
)
@click.option(
    "--all", "every_row", is_flag=True, help="Also list every row's problem, one a line (else each kind once)."
)
def data_check(
    paths,
    config,
    model,
    max_length,
    chat_template_path,
    text_field,
    held_out,
    eval_paths,
    show,
    every_token,
    write_valid,
    every_row,
):
    """Per-row errors with file and row number, then token statistics (of all PATHS as one dataset, else of the
    run file's data)."""
    from ftctl import preflight
    from ftctl.spec import RunSpec, build, join_paths, split_paths

    config = _one_run_file(config)
    run = build(config) if config else None  # flags win over the run file
    if not paths and run is None:
        raise FtctlError("Give the data to check (PATHS), or a run file with -c run.yaml.")
    try:
        path = join_paths(paths) if paths else run.data_path
    except ValueError as e:
        raise FtctlError(f"{e}.") from None
    if paths and not split_paths(path):  # '': was checked as a file of no rows
        raise FtctlError(f"PATHS {' '.join(paths)!r} name no data: give a file, a directory, a pattern or a URI.")
    if eval_paths and (held_out or write_valid):
        said = "--held-out reads PATHS as held-out data" if held_out else "--write-valid writes one dataset's rows"
        raise FtctlError(
            f"{said}; --eval-data checks held-out data beside the training data: give one of them (`ftctl data check "
            "EVAL --held-out` checks held-out data alone)."
        )
    try:  # the held-out data to check beside the training data (then its rows that are training rows too are said)
        held_path = join_paths(eval_paths) if eval_paths else (run.eval_data_path if run and not paths else "")
    except ValueError as e:
        raise FtctlError(f"{e}.") from None
    if eval_paths and not split_paths(held_path):
        raise FtctlError(f"--eval-data {' '.join(eval_paths)!r} names no data: give a file, a directory or a URI.")
    # HELD --held-out -c run.yaml: HELD is that run's held-out data, its rows that are the run's training rows said
    trained_path = run.data_path if run and paths and held_out and not write_valid else ""
    if not model and not run:  # launch's default model, as a launch without --model would train
        model = RunSpec().model_name_or_path
        click.echo(f"checking with the tokenizer and chat template of {model} (launch's default; --model for yours)")
    model = model or run.model_name_or_path
    endpoint = run.s3_endpoint_url if run else None
    if run:
        max_length = max_length or run.model_max_length
        chat_template_path = chat_template_path or run.chat_template_path
        every_token = every_token or not run.assistant_only_loss
    text_field = text_field or (run.dataset_text_field if run else "text")
    # a missing file or model directory is said at once, before the tokenizer loads (seconds)
    flag = "" if paths else ("--eval-data" if held_out else "--data")  # as the user gave them
    preflight.raise_if_errors(
        [f for p in split_paths(path) for f in preflight.check_data(p, endpoint, flag, held_out, rows=False)]
        + [
            f
            for p in (split_paths(held_path) if eval_paths else [])
            for f in preflight.check_data(p, endpoint, "--eval-data", True, rows=False)
        ]
        + [f for p in split_paths(trained_path) for f in preflight.check_data(p, endpoint, "data_path", rows=False)]
        + preflight.check_model(model)
        + preflight.check_chat_template(chat_template_path)
    )
    if write_valid:
        from ftctl.trainer.valid_rows import out_problem

        if problem := out_problem(path, write_valid, endpoint):
            raise FtctlError(problem + ".")

    from ftctl.trainer.data import check_data, show_rows
    from ftctl.trainer.masks import use_chat_template
    from ftctl.trainer.model import load_tokenizer

    tokenizer = use_chat_template(load_tokenizer(model), chat_template_path)
    length = max_length or RunSpec.model_max_length
    read = {"every_token": every_token, "text_field": text_field}
    read |= {"columns": run.data_columns} if run and run.data_columns else {}  # a dataset's own names of its fields
    trained = check_data(trained_path, tokenizer, length, endpoint, **read) if trained_path else None
    report = check_data(path, tokenizer, length, endpoint, training=trained, held_out=held_out, show=show, **read)
    if write_valid:
        flags = ["-c", config] if config else ["--model", model]
        launch_length = run.model_max_length if run else RunSpec.model_max_length  # what the launch would take
        flags += ["-o", f"model_max_length={length}"] * (length != launch_length)
        _write_valid(report, path, write_valid, endpoint, flags, held_out)
        return
    if run and run.data_mix and not paths and not held_out:
        report.weights = [w for _, w in run.data_mix]
    if run and not paths and not held_out and not report.errors:  # what the run makes of these rows
        from ftctl.trainer.data import eval_split_leaves_none, weights_leave_out

        if not held_path and (problem := eval_split_leaves_none(run.eval_split, report.stats.rows, path)):
            report.errors.append(problem)
        if run.data_mix:
            report.errors += weights_leave_out([(p, n) for p, n, _ in report.stats.datasets], run.data_mix)
    if report.samples:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        mark = (lambda t: click.style(t, fg="green", bold=True)) if color else (lambda t: f"[[{t}]]")
        how = "in bold green" if color else "between [[ and ]]"
        click.echo(f"The first {len(report.samples)} row(s) as trained; the tokens the loss covers {how}:")
        click.echo(show_rows(report, tokenizer, mark) + "\n")
    click.echo(report.render(every_row=every_row))
    reports = [report]
    if held_path and not held_out:  # the held-out data (--eval-data, else the run's), as the run reads it
        # its rows that are training rows too: "also in training" (data.held_out_overlap)
        held = check_data(held_path, tokenizer, length, endpoint, training=report, held_out=True, **read)
        reports.append(held)
        named = "--eval-data" if eval_paths else "eval_data_path"
        click.echo(f"\nHeld-out data ({named}):\n" + reports[-1].render(every_row=every_row))
    if any(r.errors for r in reports):
        sys.exit(1)


def _write_valid(report, path: str, out: str, endpoint: str | None, flags: list[str], held_out: bool) -> None:
    """`data check --write-valid OUT`: the check, the rows written, how many were left out, by error, and how to
    launch; where none can be written, the check and why."""
    import shlex

    from ftctl.trainer.valid_rows import write_valid

    try:
        kept, left = write_valid(report, path, out, endpoint)
    except FtctlError:
        click.echo(report.render())
        raise
    click.echo(report.render(written=True))
    said = [f"Wrote {kept:,} of {kept + left:,} rows of {path} to {out}, as they were read"]
    if left:
        said[0] += f"; left out {left:,} row{'s' * (left != 1)} with errors:"
        said += [f"  {line}" for line in report.errors]
    else:
        said[0] += "; no row has errors"
    data = "--eval-data" if held_out else "--data"
    said.append(f"Launch with it: {shlex.join(['ftctl', 'launch', *flags, data, out])} (and your other flags)")
    click.echo("\n".join(said))


# ------------------------------------------------------------------------------------------ storage
@main.group(cls=_Group)
def sync():
    """Checkpoints in object storage: ls, push, pull, clean."""


_endpoint = click.option(
    "--endpoint-url",
    metavar="URL",
    callback=_no_credential,
    help="The S3 endpoint (MinIO, Ceph, a cloud's S3 API), as a run's -o s3_endpoint_url; default: AWS_ENDPOINT_URL, else AWS.",
)


@sync.command("ls")
@click.argument("uri", callback=_no_credential)
@_endpoint
def sync_ls(uri, endpoint_url):
    """List checkpoints at URI (complete or not)."""
    from ftctl.checkpoints import ls

    ls(uri, endpoint_url=endpoint_url)


@sync.command("push", short_help="Upload a run's complete checkpoints and final model.")
@click.argument("local_dir", callback=_no_credential)
@click.argument("uri", callback=_no_credential)
@_endpoint
def sync_push(local_dir, uri, endpoint_url):
    """Upload a run's complete checkpoints, and its final model where it has one."""
    from ftctl.checkpoints import push

    push(local_dir, uri, endpoint_url=endpoint_url)


@sync.command("pull")
@click.argument("uri", callback=_no_credential)
@click.argument("local_dir", callback=_no_credential)
@_endpoint
def sync_pull(uri, local_dir, endpoint_url):
    """Download complete checkpoints."""
    from ftctl.checkpoints import pull

    pull(uri, local_dir, endpoint_url=endpoint_url)


@sync.command("clean", short_help="Remove finished runs' staged copies from this disk.")
def sync_clean():
    """Remove what finished runs into object storage left staged on this disk (FTCTL_CACHE/runs), where the store holds it."""
    from ftctl.checkpoints.staging import clean
    from ftctl.trainer.model import cache_dir

    clean(cache_dir() / "runs", echo=click.echo)


@main.command(short_help="Tear down the SkyPilot cluster a job ran on.")
@click.argument("job", cls=_JobArgument)
def down(job):
    """Tear down the SkyPilot cluster a job ran on."""
    from ftctl.backend import find_job

    b, ref = find_job(job)
    click.echo(b.down(ref))


@main.command(short_help="Check what a launch needs, before an expensive one.")
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="What to check: this machine (local), the Slurm cluster, SkyPilot's clouds or the docker host. Default: "
    "FTCTL_BACKEND, the config file's backend:, else local.",
)
@click.option("--partition", metavar="NAME", help="Slurm partition to check.")
@click.option("--gpus", metavar="NxTYPE", help="GPU request to check against the cluster.")
@click.option(
    "--network",
    is_flag=True,
    help="All-reduce across the processes --gpus/--nodes make, on this machine (torchrun): bus bandwidth and "
    "NCCL's transport. On a cluster: ftctl launch --preflight runs it as a step of the job.",
)
@click.option("--nodes", type=int, help="With --network: nodes of the run (on CPU one process each).")
@click.option("--min-busbw-gbps", type=float, default=0.0, help="With --network: exit 3 below this bus bandwidth.")
def doctor(backend, partition, gpus, network, nodes, min_busbw_gbps):
    """What is reachable and what would fail, before an expensive launch."""
    if network:
        from ftctl.local.backend import local_gpus, network_check

        sys.exit(network_check(gpus or local_gpus(), nodes, min_busbw_gbps))
    from ftctl.backend import configured_backend, get

    if not backend and (configured := configured_backend()):
        backend, where = configured
        click.echo(f"backend: {backend} ({where}; --backend checks another)")
    sys.exit(0 if get(backend or "local").doctor(gpus, partition) else 1)


# ------------------------------------------------------------------------------------------ image
@main.command(short_help="Build the CUDA image, flash-attn compiled for your GPUs.")
@click.option(
    "--gpus", metavar="TYPE[,TYPE]", required=True, help="Tier(s) to compile flash-attn for: H100, or A100,H100."
)
@click.option("--tag", metavar="TAG", help="Image tag (default: ftctl, CUDA, torch, flash-attn versions and archs).")
@click.option(
    "--push",
    "registry",
    metavar="REGISTRY",
    callback=_a_registry,
    help="Push to REGISTRY/ftctl:TAG, e.g. ghcr.io/my-org.",
)
@click.option("--apptainer", is_flag=True, help="Also write a .sif for clusters without docker.")
@click.option("--max-jobs", type=int, help="Parallel compile jobs (default: cores, ~5 GB of memory each).")
@click.option(
    "--cuda",
    metavar="BUILD",
    help="torch's build: cu130 (default; NVIDIA driver 580+), or cu126 for drivers of CUDA 12 (535, 550, 570) "
    "and V100, which it picks for V100 itself.",
)
@click.option("--dry-run", is_flag=True, help="Print the commands and stop.")
def build(gpus, tag, registry, apptainer, max_jobs, cuda, dry_run):
    """Build the CUDA image with flash-attn compiled for these GPUs (docker buildx). A build that
    succeeds is recorded in ~/.config/ftctl/config.yaml: later runs use it without --container."""
    from ftctl.docker import build as image_build

    plan = image_build.commands(gpus, tag=tag, push=registry, apptainer=apptainer, max_jobs=max_jobs, cuda=cuda)
    if dry_run:
        if plan.note:  # an image for another CPU than this machine's: QEMU, hours
            click.echo(plan.note, err=True)
        click.echo(plan.text(), nl=False)
        return
    image_build.build(plan)


if __name__ == "__main__":  # pragma: no cover
    main()
