"""Every rendered SkyPilot task YAML of a matrix is loaded by the real SkyPilot library (offline).

One subprocess of SkyPilot's venv (``$FTCTL_SKY_PYTHON -m ftctl.sky.validate``) validates the whole
matrix plus files the validator must refuse, so the ~2 s ``import sky`` is paid once.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ftctl.errors import FtctlError
from ftctl.plan import PlanError
from ftctl.sky import render as sky_render
from ftctl.sky.inputs import run_key
from ftctl.spec import SECRETS, split_paths
from tests.render_fixtures import prepared, sky_python, sky_validate, write_model_config

METHODS = ("fft", "sft", "lora", "qlora")
GPUS = ("1xL4", "8xA100", "2x8xH100", "A100-80GB:8")
MODEL = "meta-llama/Llama-3.1-8B"
SECRET_VALUE = "hf_some-secret-value-1234"

# (flags, -o overrides) beyond the product: nodes from --nodes, containers, clouds, bucket mounts, secrets
EXTRA = [
    (dict(method="fft", gpus="8xA100", nodes=4, spot=True), ["max_requeues=2"]),
    (dict(method="lora", gpus="H100:4", container="docker:nvcr.io/nvidia/pytorch:24.07-py3"), []),
    (dict(method="qlora", gpus="1xT4", secrets=["MY_TOKEN"]), ["cloud=gcp", "region=us-central1"]),
    (dict(method="sft", gpus="2x8xH200", spot=True), ["disk_size=1024", "run_name=sft-h200"]),
    (dict(method="fft", gpus="8xH100", nodes=2, preflight_network=True), ["preflight_min_busbw_gbps=50"]),
    (dict(method="fft", gpus="1xH200"), []),  # zero2_offload: asks for an instance with the host RAM it needs
    (
        dict(method="lora", gpus="4xL40S"),
        ["setup=nvidia-smi", "env=WANDB_PROJECT=ftctl", "s3_endpoint_url=http://127.0.0.1:9000"],
    ),
]


def _render_matrix():
    cases, refused = [], []
    for method, gpus, spot in itertools.product(METHODS, GPUS, (False, True)):
        flags = dict(method=method, gpus=gpus, spot=spot)
        try:
            cases.append(
                (
                    flags,
                    prepared(
                        backend="sky",
                        model_name_or_path=MODEL,
                        data_path="s3://b/conv.json",
                        output_dir=f"s3://b/runs/{method}",
                        **flags,
                    ),
                )
            )
        except PlanError:
            refused.append(flags)
    for flags, overrides in EXTRA:
        cases.append(
            (
                flags,
                prepared(
                    overrides,
                    backend="sky",
                    model_name_or_path=MODEL,
                    data_path="gs://b/conv.jsonl",
                    output_dir="gs://b/runs/x",
                    **flags,
                ),
            )
        )
    return cases, refused


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Rendered with HF_TOKEN/WANDB_API_KEY set to values that must never reach a file; validated once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", SECRET_VALUE)
    mp.setenv("WANDB_API_KEY", SECRET_VALUE)
    try:
        cases, refused = _render_matrix()
    finally:
        mp.undo()
    d = tmp_path_factory.mktemp("sky")
    files = []
    for i, (flags, prep) in enumerate(cases):
        f = d / f"{i:02d}-{flags['method']}-{flags['gpus'].replace(':', '_')}.yaml"
        f.write_text(prep.text)
        files.append(f)
    bad = _broken(d, cases[0][1].text)
    results = sky_validate(files + list(bad.values()))
    return cases, refused, files, bad, results


def _broken(d, good: str) -> dict:
    """Variants of a good YAML that the validator must refuse, with a word of the expected reason."""
    acc = yaml.safe_load(good.split("\n", 1)[1])["resources"]["accelerators"]
    variants = {
        "field as a str should be": good.replace(acc, acc.split(":")[0] + ":x"),
        "not a GPU type ftctl knows": good.replace(acc, "8x" + acc.split(":")[0]),
        "carry a value": good.replace("HF_TOKEN: null", f"HF_TOKEN: {SECRET_VALUE}"),
        "num_nodes": good.replace("num_nodes: 1", "num_nodes: 3"),
        "not a valid jobs recovery strategy": good.replace(
            "resources:\n", "resources:\n  job_recovery:\n    strategy: BOGUS\n"
        ),
        "Invalid task YAML": good.replace("num_nodes:", "num_node:"),
    }
    out = {}
    for i, (reason, text) in enumerate(variants.items()):
        assert text != good, reason
        f = d / f"bad-{i}.yaml"
        f.write_text(text)
        out[reason] = f
    return out


def test_matrix_renders_enough(matrix):
    cases, refused, *_ = matrix
    assert len(cases) >= 20, f"only {len(cases)} task YAMLs rendered"
    # partial SFT of an 8B model cannot fit one 24 GB L4 (16 B per trained parameter); 8 GPUs always do. FFT
    # offloads its optimizer and weights to CPU RAM, which SkyPilot is asked for (memory:): no node RAM is assumed
    got = {(f["method"], f["gpus"]) for f in refused}
    assert ("sft", "1xL4") in got and ("fft", "1xL4") not in got
    assert all(g == "1xL4" for _, g in got), got
    fft_l4 = next(prep.plan for flags, prep in cases if (flags["method"], flags["gpus"]) == ("fft", "1xL4"))
    assert fft_l4.strategy == "zero3_offload" and fft_l4.host_memory_gb > 2 * 24


def test_every_rendered_task_is_accepted_by_skypilot(matrix):
    _, _, files, _, results = matrix
    failed = {str(f): results[str(f)]["error"] for f in files if not results[str(f)]["ok"]}
    assert not failed, failed


def test_tasks_ask_for_what_the_plan_says(matrix):
    cases, _, files, _, results = matrix
    for (flags, prep), f in zip(cases, files):
        s = results[str(f)]["summary"]
        plan = prep.plan
        assert s["num_nodes"] == plan.nodes, f
        assert s["accelerators"] == [{plan.tier: plan.gpus_per_node}], f
        assert s["use_spot"] == [bool(flags.get("spot"))], f
        if flags.get("spot"):  # restarts after the job's own failures: -o max_requeues, else one for several nodes
            assert s["job_recovery"][0]["strategy"] == "EAGER_NEXT_REGION"
            restarts = 2 if flags.get("nodes") == 4 else 1 if plan.nodes > 1 else 0
            assert s["job_recovery"][0]["max_restarts_on_errors"] == restarts, f
        else:
            assert not s["job_recovery"][0]
        # the disk holds what the run stages there (the model, checkpoints, the final model), at least 256 GB
        assert s["disk_size"] == [prep.spec.disk_size], f
        assert prep.spec.disk_size >= max(256, sky_render.disk_needed_gib(prep.spec, plan)), f
        assert s["name"] == run_key(prep.spec)  # the run's own key, as its cluster's and its directory's on the nodes
        need = plan.host_memory_gb  # offload plans only (plan.offload_host_gb)
        assert s["memory"] == [f"{math.ceil(need * 1e9 / 2**30)}+" if need else None], f  # GiB


def test_secrets_declared_by_name_never_by_value(matrix):
    cases, _, files, _, results = matrix
    for (flags, _prep), f in zip(cases, files):
        s = results[str(f)]["summary"]
        assert s["secrets"] == [*SECRETS, *flags.get("secrets", [])], f
        assert s["inline_secrets"] == []
        assert SECRET_VALUE not in f.read_text()
        for name in s["secrets"]:
            assert name not in s["envs"]


def test_extras_reach_the_task(matrix):
    cases, _, files, _, results = matrix
    by_gpus = {
        flags["gpus"]: results[str(f)]["summary"]
        for (flags, _), f in zip(cases, files)
        if flags in [e[0] for e in EXTRA]
    }
    assert by_gpus["8xA100"]["num_nodes"] == 4
    # SkyPilot keeps image_id per region; None (any region) becomes "null" in JSON
    assert [list(i.values()) for i in by_gpus["H100:4"]["image_id"]] == [["docker:nvcr.io/nvidia/pytorch:24.07-py3"]]
    assert by_gpus["2x8xH200"]["disk_size"] == [1024]
    # -o cloud and -o region: one infra, which SkyPilot takes (it refuses infra beside cloud or region)
    t4 = next(yaml.safe_load(Path(f).read_text()) for (flags, _), f in zip(cases, files) if flags["gpus"] == "1xT4")
    assert t4["resources"]["infra"] == "gcp/us-central1" and not {"cloud", "region"} & set(t4["resources"])
    assert by_gpus["4xL40S"]["envs"]["WANDB_PROJECT"] == "ftctl"
    assert by_gpus["4xL40S"]["envs"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    # --preflight: the probe in the training's torchrun shape runs first on every node, and stops the job
    run = next(
        yaml.safe_load(Path(f).read_text())["run"] for (flags, _), f in zip(cases, files) if flags["gpus"] == "8xH100"
    )
    probe, train = run.index("-m ftctl.trainer.netcheck --min-busbw-gbps 50"), run.index("-m ftctl.trainer --spec")
    assert probe < train and "--nnodes 2" in run[:probe].splitlines()[-1]
    assert subprocess.run(["bash", "-n", "-c", run]).returncode == 0


def test_validator_refuses_broken_tasks(matrix):
    *_, bad, results = matrix
    for reason, f in bad.items():
        rec = results[str(f)]
        assert not rec["ok"], f"{reason}: accepted"
        assert reason in rec["error"], (reason, rec["error"])


def test_the_nodes_install_what_the_run_uses_beyond_the_train_extra():
    """report_to=wandb and a gs:// or az:// path need wandb, gcsfs, adlfs: the train extra brings only s3fs."""

    def setup(*overrides, output="s3://b/runs/x"):
        prep = prepared(list(overrides), backend="sky", gpus="1xL4", model_params="1b", output_dir=output)
        return yaml.safe_load(prep.text)["setup"].splitlines()[-1]

    plain = setup()
    assert "'s3fs>=2024.1'" in plain and not any(p in plain for p in ("wandb", "gcsfs", "adlfs"))
    used = setup("report_to=wandb", "data_path=az://c/conv.jsonl", output="gs://b/runs/x")
    assert all(f"'{r}'" in used for r in ("wandb>=0.18", "gcsfs>=2024.1", "adlfs>=2024.1", "s3fs>=2024.1"))
    # the trainer reads a chat template from its store too (it was left out: gcsfs missing on the node)
    assert "gcsfs" in setup("chat_template_path=gs://b/t.jinja")


# ------------------------------------------------------------------------------------------ local inputs
# Run in SkyPilot's venv: the task as SkyPilot reads it (its file_mounts after its own env substitution and path
# checks), then each source through SkyPilot's own rsync line (LocalProcessCommandRunner: the quoting every runner's
# rsync shares) into a directory here, for the test to compare.
_SKY_SHIPS = """
import json, os, sys
from tests.sky_validate import _import_sky, validate_task_yaml
sky = _import_sky()
from sky.utils.command_runner import LocalProcessCommandRunner
text = open(sys.argv[1]).read()
validate_task_yaml(text)
task = sky.Task.from_yaml_str(text)
task.expand_and_validate_file_mounts()
copied = {}
os.makedirs(sys.argv[2])  # as SkyPilot's mkdir -p before its rsync
for i, (dst, src) in enumerate(sorted(task.file_mounts.items())):
    copied[dst] = os.path.join(sys.argv[2], str(i))
    LocalProcessCommandRunner().rsync(src, copied[dst], up=True, stream_logs=False)
print(json.dumps({"file_mounts": task.file_mounts, "copied": copied}))
"""


def _hostile_inputs(root: Path) -> dict[str, Path]:
    """A data file, a data directory, held-out data, a chat template and a model directory, each under a name of
    render_fixtures.HOSTILE that SkyPilot's rsync line carries (shipped() refuses the others)."""
    made = {
        "data": root / "$(touch PWNED)" / "a 0.jsonl",
        "data_dir": root / "x;touch PWNED;y",
        "eval": root / "a'; echo foo" / "held.jsonl",
        "template": root / 'a"=0"' / "t.jinja",
        "model": root / "`touch PWNED`" / "my model",
    }
    row = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    for key in ("data", "eval"):
        made[key].parent.mkdir(parents=True)
        made[key].write_text(row + "\n")
    made["data_dir"].mkdir()
    (made["data_dir"] / "part-0.jsonl").write_text(row + "\n")
    made["template"].parent.mkdir()
    made["template"].write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    write_model_config(made["model"])
    return made


def test_local_inputs_ship_as_file_mounts_where_the_nodes_spec_names_them(tmp_path, monkeypatch, sky_tools):
    """--data (a file and a directory), --eval-data, chat_template_path and a --model directory here, under hostile
    names: each is a file_mounts source at its absolute path here, landing where the spec.json of the run section
    names it (from the run's directory, where the trainer runs); SkyPilot reads the task offline, and its own rsync
    line copies every source intact, running nothing of its name."""
    monkeypatch.chdir(tmp_path)
    made = _hostile_inputs(tmp_path / "in")
    prep = prepared(
        backend="sky",
        gpus="2x1xL4",
        model_name_or_path=str(made["model"]),
        data_path=[str(made["data"]), str(made["data_dir"])],
        eval_data_path=str(made["eval"]),
        chat_template_path=str(made["template"]),
        output_dir="s3://b/runs/x",
    )
    task = yaml.safe_load(prep.text)
    mounts = task["file_mounts"]
    assert sorted(mounts.values()) == sorted(str(p.resolve()) for p in made.values())
    # the preflight reads the paths here; the nodes read spec.json's, which the run section ships (the same bytes
    # as the run directory's spec.json)
    assert prep.spec.data_path == f"{made['data'].resolve()},{made['data_dir'].resolve()}"
    run = task["run"]
    shipped = json.loads(re.search(r"<<'(\w+)'\n(.*?)\n\1\n", run, re.S).group(2))
    assert shipped == json.loads(prep.files["spec.json"])
    node = shipped["spec"]
    named = {
        "data": split_paths(node["data_path"])[0],
        "data_dir": split_paths(node["data_path"])[1],
        "eval": node["eval_data_path"],
        "template": node["chat_template_path"],
        "model": node["model_name_or_path"],
    }
    run_dir = f"~/ftctl-run/{run_key(prep.spec)}"  # the run's own: runs share a cluster's home
    assert node["run_name"] == prep.spec.name == "ftctl-lora-my-model"  # not the shipped directory's name
    for key, path in named.items():
        assert path.startswith("./inputs/"), path
        assert mounts[f"{run_dir}/{path.removeprefix('./')}"] == str(made[key].resolve()), key
    assert f"\ncd {run_dir}  #" in "\n" + run.split("cat > ")[0]  # before the trainer starts
    assert "file_mounts: 5 local input(s)" in prep.text.splitlines()[1]
    # the adapter names its base as launched, not as the nodes load it (chat/eval/merge run here)
    assert task["envs"]["FTCTL_BASE_MODEL"] == str(made["model"].resolve())

    f = tmp_path / "task.yaml"
    f.write_text(prep.text)
    out = subprocess.run(
        [sky_python(), "-c", _SKY_SHIPS, str(f), str(tmp_path / "copied")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    sky = json.loads(out.stdout.splitlines()[-1])
    assert sky["file_mounts"] == mounts
    for dst, src in mounts.items():
        copy = Path(sky["copied"][dst])
        if Path(src).is_dir():
            assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in Path(src).iterdir()), src
        else:
            assert copy.read_bytes() == Path(src).read_bytes(), src
    assert not list(tmp_path.rglob("PWNED")) and not (Path(__file__).resolve().parents[1] / "PWNED").exists()


def test_the_setup_lines_hold_where_the_training_runs():
    """SkyPilot runs its setup section as a script of its own: `-o setup='module load ...'` or a venv's activation
    there was gone when the run section started the trainer, and a failing line was passed over. Both sections run
    them, each ending at the first that fails, as the Slurm script does."""

    def sections(lines):
        task = yaml.safe_load(prepared(list(lines), backend="sky", gpus="1xL4", output_dir="s3://b/o").text)
        run = task["run"].splitlines()
        head = run[: next(i for i, x in enumerate(run) if x.startswith("mkdir -p"))]  # up to the trainer's work
        return task["setup"], "\n".join([*head, 'echo "mark=${FTCTL_TEST_MARK:-unset}"'])

    # a line that reads an unset variable, as an activate script or `export PATH=...:$X` does: the run section's
    # set -u would end it unsaid
    setup, run = sections(["setup=export FTCTL_TEST_MARK=from-setup$FTCTL_NOT_SET"])
    assert "export FTCTL_TEST_MARK=from-setup$FTCTL_NOT_SET" in setup
    done = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "mark=from-setup" in done.stdout, done.stderr
    assert "set -u" in run.splitlines()[-2]  # and nounset is back for ftctl's own lines

    setup, run = sections(["setup=false", "setup=export FTCTL_TEST_MARK=never"])
    for script in (setup.split("python3 -m ftctl.sky.node_stack")[0], run):
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "mark=" not in done.stdout
        assert "error: a setup line failed: false (exit 1): not training; fix -o setup=..." in done.stdout


def test_multi_node_jobs_of_one_cluster_meet_apart(tmp_path):
    """Jobs of a reused cluster may run at once (each asks for some of its GPUs): every multi-node job met at
    "$HEAD_ADDR":29500, and a second one joined the first's store and failed when it ended. Each listens on
    rdzv_port + 1 + its SkyPilot job id % 1000 (the end of its task id), the same on all its nodes, under a rendezvous
    id of its own (tests/test_sky319.py has the ports). The head
    node's address is the first line of SKYPILOT_NODE_IPS without a reader that may exit early: `echo | head -n 1`
    under pipefail died of SIGPIPE where head had gone before echo's second line (a `head` here that reads nothing
    and prints nothing stands for it)."""
    early = tmp_path / "bin"
    early.mkdir()
    (early / "head").write_text("#!/bin/sh\nexit 0\n")
    (early / "head").chmod(0o755)
    task = yaml.safe_load(prepared([], backend="sky", gpus="2x8xH100", output_dir="s3://b/o").text)
    run = task["run"].splitlines()
    port_lines = run[next(i for i, x in enumerate(run) if x.startswith("HEAD_ADDR=")) :][:3]
    assert port_lines[-1] == "export RDZV_PORT"
    launch = next(x for x in run if "-m ftctl.trainer " in x)
    assert '--rdzv-endpoint "$HEAD_ADDR":"$RDZV_PORT"' in launch and '-"$SKYPILOT_TASK_ID" ' in launch

    def port(task_id):
        script = "set -euo pipefail\n" + "\n".join(port_lines) + '\necho "$HEAD_ADDR $RDZV_PORT"'
        env = {"PATH": f"{early}:/usr/bin:/bin", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8", "SKYPILOT_TASK_ID": task_id}
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0, done.stderr
        head, got = done.stdout.split()
        assert head == "10.0.0.7" and 29500 < int(got) <= 30500
        return int(got)

    first, second = (port(f"sky-2026-12-03-10-00-00-123456_mycluster_{n}") for n in (3, 4))
    assert first != second and port("sky-2026-12-03-10-00-00-123456_mycluster_3") == first  # every node agrees
    # the spread must stay below the last port: said before anything is rendered
    with pytest.raises(FtctlError, match=r"a SkyPilot job listens on .* use -o rdzv_port=64535 or less"):
        prepared(["rdzv_port=65000"], backend="sky", gpus="2x8xH100", output_dir="s3://b/o")


# ------------------------------------------------------------------------------------------ CPU tasks
# Run in SkyPilot's venv: the resources of a task as SkyPilot reads them (the matrix's validator asks for one GPU).
_SKY_RESOURCES = """
import json, sys
from tests.sky_validate import _import_sky
task = _import_sky().Task.from_yaml_str(sys.stdin.read())
print(json.dumps([{"cpus": r.cpus, "memory": r.memory, "accelerators": r.accelerators} for r in task.resources]))
"""


@pytest.mark.parametrize("infra", ["k8s", "slurm/c"])
def test_a_cpu_task_asks_for_the_memory_its_plan_needs(infra):
    """A CPU task asked `cpus: 1+` and no memory, though its plan keeps tens of GB a node in RAM: a small Kubernetes
    pod would be OOM-killed. It asks what Slurm's --mem asks for the same run (slurm.render.node_memory_gb), in GiB
    as SkyPilot counts memory:, and SkyPilot reads it so."""
    flags = dict(method="lora", gpus="cpu", nodes=2, model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    task = prepared(backend="sky", infra=infra, output_dir="s3://b/o", **flags)
    mem = re.search(r"^#SBATCH --mem=(\d+)G$", prepared(backend="slurm", **flags).text, re.M)[1]
    assert int(mem) >= 10  # this plan's processes' memory: one GiB would not hold it
    proc = subprocess.run(
        [sky_python(), "-c", _SKY_RESOURCES],
        input=task.text,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"cpus": "1+", "memory": f"{mem}+", "accelerators": None}]
