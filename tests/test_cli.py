"""The command line: light imports, fast --help, one-line user errors, --dry-run == render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.render_fixtures import REPO, sky_python

HEAVY = ("torch", "transformers", "sky", "deepspeed", "trl", "peft", "accelerate", "datasets", "bitsandbytes")
FTCTL = Path(sys.executable).parent / "ftctl"

# Runs the CLI in-process like the console script, then reports which heavy packages got imported.
_PROBE = """
import json, sys
from ftctl.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    print("HEAVY=" + json.dumps(heavy), file=sys.stderr)
""".replace("set(HEAVY)", repr(set(HEAVY)))

COMMANDS = {
    "help": ["--help"],
    "plan": ["plan", "--method", "fft", "--gpus", "8xA100", "--model", "lmsys/vicuna-7b-v1.5"],
    "render-sky": [
        "render",
        "--backend",
        "sky",
        "--method",
        "fft",
        "--gpus",
        "2x8xH100",
        "--model",
        "meta-llama/Llama-3.1-8B",
        "--data",
        "s3://b/conv.json",
        "--output",
        "s3://b/runs/r1",
        "--spot",
    ],
    "render-slurm": [
        "render",
        "--backend",
        "slurm",
        "--method",
        "qlora",
        "--gpus",
        "1xA100",
        "--partition",
        "gpu",
        "--container",
        "apptainer:docker://ghcr.io/x/ftctl:cu124",
        "--output",
        "/fixed/out",
    ],
    "render-docker": ["render", "--backend", "docker", "--gpus", "1xL4", "--output", "/fixed/out"],
    "render-local": ["render", "--backend", "local", "--gpus", "cpu", "--output", "/fixed/out"],
}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "FTCTL_DEBUG"}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _probe(python: str, args: list[str], tmp_path) -> tuple[subprocess.CompletedProcess, list[str]]:
    r = subprocess.run(
        [python, "-c", _PROBE, *args], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=60
    )
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, r.stderr
    return r, json.loads(line[-1][len("HEAVY=") :])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_commands_import_nothing_heavy(name, tmp_path):
    """In the trainer's venv (torch, transformers, deepspeed installed) and SkyPilot's (sky installed)."""
    for python in (sys.executable, sky_python()):
        r, heavy = _probe(python, COMMANDS[name], tmp_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        assert heavy == [], f"{python} ftctl {' '.join(COMMANDS[name])} imported {heavy}"


def test_probe_sees_heavy_imports(tmp_path):
    """The probe itself can fail: a module named torch in sys.modules shows up (a stand-in: torch takes 9 s)."""
    r = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch.cuda'] = sys\n" + _PROBE, "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=60,
    )
    assert 'HEAVY=["torch"]' in r.stderr


def test_help_is_fast(tmp_path):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([str(FTCTL), "--help"], capture_output=True, text=True, cwd=tmp_path, env=_env())
        times.append(time.perf_counter() - t0)
        assert r.returncode == 0 and "render" in r.stdout and "launch" in r.stdout
    assert min(times) < 2.0, f"ftctl --help took {min(times):.2f} s (best of 3)"


USER_ERRORS = {
    "unknown gpu": (["plan", "--gpus", "9xZ100"], "Unknown GPU type 'Z100'"),
    "unknown key": (["render", "--gpus", "cpu", "-o", "learning_rat=1e-4", "-o", "lora_r=x"], "2 problems"),
    "does not fit": (
        ["plan", "--method", "fft", "--gpus", "1xT4", "--model", "meta-llama/Llama-3.1-70B"],
        "does not fit 1xT4",
    ),
    "missing run file": (["plan", "-c", "/nonexistent/run.yaml"], "does not exist"),
    "hostile partition": (
        ["render", "--backend", "slurm", "--gpus", "cpu", "--partition", "gpu;rm -rf /"],
        "Slurm reads #SBATCH values itself",
    ),
    "sky local output": (["render", "--backend", "sky", "--gpus", "1xL4", "--output", "/tmp/x"], "local path"),
}


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_user_errors_are_one_message_without_traceback(name, tmp_path):
    args, words = USER_ERRORS[name]
    r = subprocess.run([str(FTCTL), *args], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [r.stderr.splitlines()[0]]
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_env_shows_the_traceback(tmp_path):
    args, words = USER_ERRORS["unknown gpu"]
    r = subprocess.run([str(FTCTL), *args], capture_output=True, text=True, cwd=tmp_path, env=_env(FTCTL_DEBUG="1"))
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr
    assert "FtctlError" in r.stderr and words in r.stderr


@pytest.mark.parametrize(
    "backend, extra",
    [
        ("slurm", ["--gpus", "2x8xH100", "--partition", "gpu", "--time", "1:00:00"]),
        ("sky", ["--gpus", "2x8xH100", "--spot", "--data", "s3://b/d.json", "--output", "s3://b/runs/x"]),
        ("docker", ["--gpus", "1xL4"]),
        ("local", ["--gpus", "cpu"]),
    ],
)
def test_launch_dry_run_prints_the_bytes_render_prints(backend, extra, tmp_path):
    args = ["--backend", backend, "--method", "lora", *extra]
    if backend != "sky":
        args += ["--output", str(tmp_path / "out dir")]
    home = tmp_path.parent / f"{tmp_path.name}-home"  # SkyPilot's optimizer writes under ~/.sky
    env = _env(HF_TOKEN="hf_secret-value-never-printed", HOME=str(home))
    outs = [
        subprocess.run([str(FTCTL), cmd, *args, *dry], capture_output=True, cwd=tmp_path, env=env)
        for cmd, dry in (("render", []), ("launch", ["--dry-run"]))
    ]
    assert outs[0].returncode == 0, outs[0].stderr.decode()
    fails = {  # what this machine lacks: the dry run prints it all, then fails as the launch would
        "sky": b"error: --output s3://b/runs/x: ",  # credentials for s3://b
        "docker": b"error: --gpus 1xL4: this machine has no GPU",
    }
    if backend in fails:
        assert outs[1].returncode == 2 and fails[backend] in outs[1].stderr
        assert outs[1].stderr.splitlines()[-1].startswith(b"error: the launch would stop at the ")
    else:
        assert outs[1].returncode == 0, outs[1].stderr.decode()
    assert b"Traceback" not in outs[1].stderr and b"Exception" not in outs[1].stderr
    assert b"\nmethod         lora\n" in outs[1].stderr and b"\nmemory/device  " in outs[1].stderr  # the plan too
    assert outs[0].stdout == outs[1].stdout
    assert len(outs[0].stdout) > 100
    assert b"hf_secret-value-never-printed" not in outs[0].stdout
    # a dry run writes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_takes_what_to_train_not_where_to_send_it():
    """`ftctl train` runs here, in this process: its help lists no backend's flags, and it refuses one."""
    from click.testing import CliRunner

    from ftctl.cli import main

    runner = CliRunner()
    helped = runner.invoke(main, ["train", "--help"]).stdout
    assert "--data" in helped and "-o KEY=VALUE" in helped
    assert not any(flag in helped for flag in ("--backend", "--partition", "--spot", "--container", "--secret"))
    assert "--partition" in runner.invoke(main, ["launch", "--help"]).stdout
    refused = runner.invoke(main, ["train", "--partition", "gpu"])
    assert refused.exit_code == 2 and "No such option '--partition'" in refused.output


def test_a_finished_run_says_what_to_do_with_it():
    from ftctl.spec import build
    from ftctl.trainer.__main__ import next_steps

    said = next_steps(build({"method": "qlora", "output_dir": "runs/my run"}))
    assert said == (
        "next:\n  ftctl chat 'runs/my run' -p 'A question'\n  ftctl eval 'runs/my run' --data HELD_OUT.jsonl --compare\n"
        "  ftctl merge 'runs/my run'"
    )
    assert "merge" not in next_steps(build({"method": "fft", "output_dir": "s3://b/r"}))


def test_a_run_trained_on_over_its_merge_says_to_remove_it_first(tmp_path):
    """The run's next: lines offered `ftctl merge RUN`, which is refused while RUN/merged holds the earlier merge."""
    from ftctl.spec import build
    from ftctl.trainer.__main__ import next_steps

    (tmp_path / "merged").mkdir()
    said = next_steps(build({"method": "lora", "output_dir": str(tmp_path)}))
    assert said.endswith(f"\n  rm -r {tmp_path / 'merged'} && ftctl merge {tmp_path}")


def test_a_run_shorter_than_logging_steps_ends_with_its_mean_loss(tiny_model_dir, tiny_data, tmp_path):
    """explore16: a TRL file's logging_steps: 10, smoke-run with -o max_steps=2, ended 'complete: step 2, final loss
    none' though the trainer had the run's mean loss."""
    from ftctl.trainer.__main__ import loss_said
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "lora", max_steps=2, logging_steps=10)
    done = train(spec, plan, echo=lambda *_: None)
    assert done.status == "complete" and done.final_loss is None
    said = loss_said(done, spec)
    assert said.startswith("mean loss ") and said.endswith(" (no step logged one at logging_steps=10)")
    assert 0 < float(said.split()[2]) < 20


def test_train_of_a_gpu_plan_where_torch_sees_no_gpu_says_that_first():
    """explore16: `ftctl train run.yml --gpus 8xA100` on this CPU machine said to start 8 processes with torchrun."""
    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.distributed import Processes, check_world

    plan = make_plan(build({"gpus": "8xA100", "model_params": "1b"}))
    with pytest.raises(FtctlError, match=r"^The plan is for 8xA100 but torch sees no CUDA GPU here: "):
        check_world(plan, Processes(rank=0, local_rank=0, world_size=1, on_cpu=True))


def test_a_fastchat_flag_says_how_its_key_is_given_here():
    """`--learning_rate 2e-5`, pasted from a FastChat train command, was "No such option" and nothing more."""
    from click.testing import CliRunner

    from ftctl.cli import main

    def said(*args):
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == 2 and "Traceback" not in r.output
        return r.output.strip().splitlines()[-1]

    assert said("plan", "--learning_rate", "2e-5").endswith(
        "No such option: --learning_rate. learning_rate is a run key: -o learning_rate=2e-5 (or learning_rate: 2e-5 "
        "in a run file)."  # the value given, repeated (explore60 #10; was -o learning_rate=VALUE)
    )
    assert "model_name_or_path is a run key: --model x, or -o model_name_or_path=x" in said(
        "launch", "--model_name_or_path", "x"
    )
    assert "tf32 is not a run key: ftctl decides it" in said("render", "--tf32", "True")
    assert said("plan", "--bogus").startswith("error: No such option '--bogus'")  # click's words, ftctl's style
    assert "run key" not in said("chat", "RUN", "--learning_rate", "1")  # chat takes no run keys


def test_a_fastchat_command_lines_flags_are_said_together_as_ftctl_takes_them(tmp_path):
    """FastChat's train line pasted whole was refused one flag at a time (ten retries); now the first refusal gives
    the whole line as ftctl takes it, and that line plans."""
    from click.testing import CliRunner

    from ftctl.cli import main

    fastchat = "--model_name_or_path lmsys/vicuna-7b-v1.5 --bf16 True --output_dir out --num_train_epochs 3"
    fastchat += " --per_device_train_batch_size 2 --lazy_preprocess True --tf32 --max_steps -1 --learning_rate 2e-5"
    r = CliRunner().invoke(main, ["plan", *fastchat.split(), "--gpus", "8xA100"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = r.output.strip().splitlines()[-1].strip()
    assert line == (
        "ftctl plan --model lmsys/vicuna-7b-v1.5 -o bf16=True --output out -o num_train_epochs=3 -o "
        "per_device_train_batch_size=2 -o lazy_preprocess=True -o tf32=true -o max_steps=-1 -o learning_rate=2e-5 "
        "--gpus 8xA100 --method fft"  # FastChat's train.py rate: a full fine-tune (test_explore32)
    )
    planned = CliRunner().invoke(main, [*line.split()[1:], "--json"])
    assert planned.exit_code == 0, planned.output
    assert '"per_device_train_batch_size": 2' in planned.stdout
    # torchrun's flags before them: said for what they are (--master_port was "Did you mean '--spot'?"), left out
    torchrun = ["--nproc_per_node", "8", "--master_port=20001", "--model_name_or_path", "m/x", "--bf16", "True"]
    said = CliRunner().invoke(main, ["launch", *torchrun]).output.strip().splitlines()
    assert said[-3].endswith(
        "nproc_per_node is not a run key here. torchrun's: ftctl runs torchrun itself, one process "
        "a GPU of --gpus (--gpus 8xA100: 8 a node)."
    )
    assert "(left out: --nproc_per_node, --master_port; `ftctl keys NAME` says what each is here):" in said[-2]
    assert said[-1].strip() == "ftctl launch --model m/x -o bf16=True"


def test_the_run_file_may_be_the_first_argument(tmp_path):
    """`ftctl plan run.yaml` (axolotl's `axolotl train config.yml`) reads it as -c does; two different ones are one
    error, not a guess."""
    from click.testing import CliRunner

    from ftctl.cli import main

    run = tmp_path / "run.yaml"
    run.write_text("method: fft\nlr: 3e-5\n")
    args = ["--gpus", "1xA100", "--model-params", "1b", "--model", "x/y", "--json"]
    by_flag = CliRunner().invoke(main, ["plan", "-c", str(run), *args])
    positional = CliRunner().invoke(main, ["plan", str(run), *args])
    assert by_flag.exit_code == 0 and positional.stdout == by_flag.stdout and '"method": "fft"' in by_flag.stdout
    other = tmp_path / "other.yaml"
    other.write_text("method: lora\n")
    two = CliRunner().invoke(main, ["plan", str(run), "-c", str(other), *args])
    assert two.exit_code == 2 and "Two run files" in two.output and "Traceback" not in two.output


def test_keys_lists_every_run_key_with_its_default_and_text():
    """`ftctl keys`: what an unknown key's error points to; read from RunSpec's own lines, so none is missing."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.spec import FIELDS, described_keys

    assert sorted(k for _, k, _, _ in described_keys()) == sorted(FIELDS)
    listed = CliRunner().invoke(main, ["keys"])
    assert listed.exit_code == 0 and "\n  lora_r = 16  (also: r, lora_rank)\n" in listed.stdout
    assert "  method = lora  (also: adapter) fft | sft | lora | qlora\n" in listed.stdout
    assert "\nslurm\n  partition = (unset)\n" in listed.stdout  # a backend's keys under its name
    one = CliRunner().invoke(main, ["keys", "dora"])
    assert one.exit_code == 0 and one.stdout.splitlines()[1].startswith(
        "  use_dora = false  (also: peft_use_dora) PEFT's DoRA"
    )
    assert CliRunner().invoke(main, ["keys", "zzz"]).exit_code == 2
    # a FastChat or TRL key ftctl decides itself is explained, not "no run key mentions it"
    tf32 = CliRunner().invoke(main, ["keys", "tf32"])
    assert tf32.exit_code == 0 and tf32.stdout.startswith("tf32 is not a run key: ftctl decides it; matmuls run in")
    assert "may stay" in tf32.stdout
    fsdp = CliRunner().invoke(main, ["keys", "fsdp"]).stdout
    assert "'full_shard auto_wrap' is read as strategy=fsdp" in fsdp and "\n  strategy = (unset)" in fsdp
    unknown = CliRunner().invoke(main, ["plan", "-o", "foo_bar=1"])
    assert unknown.exit_code == 2 and "Unknown key 'foo_bar' (-o). `ftctl keys` lists them." in unknown.output


def test_eval_says_a_missing_data_path_before_it_loads_the_model(tmp_path):
    """The model loaded first (minutes for a 7B on CPU), then the typo in --data was said; now the data path is read
    first: here the run does not even exist, and the data's message is what comes back."""
    from click.testing import CliRunner

    from ftctl.cli import main

    got = CliRunner().invoke(main, ["eval", str(tmp_path / "no-run"), "--data", str(tmp_path / "nothere.jsonl")])
    assert got.exit_code == 2 and f"No data at {tmp_path / 'nothere.jsonl'}" in got.output
    # rows that are no conversation (explore16: said once the model had loaded), as the launch's preflight says them
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    got = CliRunner().invoke(main, ["eval", str(tmp_path / "no-run"), "--data", str(tmp_path / "qa.jsonl")])
    assert got.exit_code == 2 and "qa.jsonl line 1: not a conversation: keys 'question', 'answer'" in got.output


@pytest.mark.parametrize("command", [["eval", "RUN", "--data", "d.jsonl"], ["data", "check", "d.jsonl"]])
def test_a_max_length_of_0_is_refused_not_taken_as_the_default(command):
    from click.testing import CliRunner

    from ftctl.cli import main

    got = CliRunner().invoke(main, [*command, "--max-length", "0"])
    assert got.exit_code == 2 and "'--max-length': 0 is not in the range x>=2" in got.output


def test_doctor_checks_the_backend_launch_would_use(tmp_path):
    """Without --backend, doctor checked this machine while launch went to FTCTL_BACKEND's (or the config file's)
    backend; and a misspelt FTCTL_BACKEND was an 'Unknown backend' that did not say where the name came from."""
    env = _env(FTCTL_BACKEND="slurm", PATH=f"{Path(sys.executable).parent}:{tmp_path}", XDG_CONFIG_HOME=str(tmp_path))
    r = subprocess.run([str(FTCTL), "doctor"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.stdout.startswith("backend: slurm (FTCTL_BACKEND; --backend checks another)"), r.stdout
    assert "sbatch" in r.stdout + r.stderr and "python:" not in r.stdout  # the Slurm check, not this machine's
    env["FTCTL_BACKEND"] = "slrum"
    for args in (["doctor"], ["launch", "--model-params", "10m", "--dry-run"]):
        r = subprocess.run([str(FTCTL), *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.startswith("error: FTCTL_BACKEND=slrum is not a backend: set it to one of local, slurm, sky")
        assert "Did you mean 'slurm'?" in r.stderr
