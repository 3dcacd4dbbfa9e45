"""Every user value that reaches a shell arrives byte-exact at the program that uses it, and none runs (explore21).

A table of nasty strings (NASTY: quotes, $(), backticks, newlines, unicode, leading dashes, Slurm's % patterns,
#SBATCH inside a value, the heredoc's own delimiter ...) goes into every user-settable value each backend writes
into its artifact: run dir and output, model directory, several data files, held-out data, chat template, env
values (all of them at once), socket_ifname, s3_endpoint_url, container images; Slurm's partition, account, qos,
time and sbatch args. Setup lines are shell by design and left out. Each artifact is then run for real, with
recording stand-ins (small sh scripts, so the table stays fast) first on PATH: the sbatch script under bash as
sbatchd would start it, SkyPilot's YAML through SkyPilot's own validation (tests/sky_validate.py) and SkyPilot's own
job-script builder (log_lib.make_task_bash_script, its setup and run sections as a node runs them), docker's line
through sh and bash. What a backend cannot carry is refused with one line that says what to do.

Secrets: each secret variable set to a recognizable value, then every backend rendered, written and launched as far
as this machine goes (Slurm through a stand-in sbatch and the script run as the job, docker through a stand-in
docker, local for real: a tiny model trains two steps with checkpoints); no file written anywhere (run dirs, spec.json,
manifests, logs, ftctl's jobs record) and nothing printed holds a value.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftctl.backend import launch, prepare, write_files
from ftctl.docker import render as docker_render
from ftctl.errors import FtctlError
from ftctl.slurm import render as slurm_render
from tests.render_fixtures import HOSTILE, REPO, make_spec, sky_python, write_model_config

NASTY = [
    *HOSTILE,
    "-rf",
    "--help",
    "ünï©ødé ✓ 日本 🙂",
    "a\u2028b\x85c",
    "%j %x %% %A",
    "#SBATCH --wrap=touch_PWNED",
    "a\n#SBATCH --partition=evil",
    "tab\there",
    "cr\rhere",
    "${IFS}x",
    "!!",
    "a\\",
    "{a,b}",
    "*",
    "~root",
    "FTCTL_SPEC_EOF",
    "a\nFTCTL_SPEC_EOF\nb",
    "$HOME",
    "a,b",
    "a:b",
    " lead",
    "trail ",
    "<<EOF",
]
IDS = [str(i) for i in range(len(NASTY))]
ENV = {f"HOSTILE_{i}": h for i, h in enumerate(NASTY)}  # every value at once, in every run

# Stand-ins for srun, scontrol, apptainer, docker and the trainer's python3 / torchrun: each records its argv and
# environment (NUL-separated) and does the least its namesake would for the script to go on.
_FAKE = r"""#!/bin/sh
n=${0##*/}
f="$FAKE_DIR/$n.$$"
printf '%s\0' "$@" > "$f.argv"
env -0 > "$f.env"
case "$n" in
  scontrol) printf 'node1\nnode2\n' ;;
  srun) while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done; exec "$@" ;;
  docker) case "$1" in version) echo 27.0 ;; inspect) exit 1 ;; run) echo 0123abcd ;; esac ;;
  apptainer) while [ $# -gt 0 ] && [ "$1" != bash ]; do shift; done; exec "$@" ;;
  python3|torchrun)
    if [ "$1 $2 $3" = "-m ftctl.sky.node_stack --print-python" ]; then echo "$0"; exit 0; fi
    if [ -n "${FTCTL_STATUS_FILE:-}" ]; then echo complete > "$FTCTL_STATUS_FILE"; fi ;;
esac
exit 0
"""
_PROGS = ("srun", "scontrol", "apptainer", "docker", "python3", "torchrun")


def _fakes(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in _PROGS:
        (bin_dir / name).write_text(_FAKE)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _calls(log: Path) -> dict[str, list[dict]]:
    """{program: [{"argv": [...], "env": {...}}, ...]} of what the stand-ins recorded."""
    out: dict[str, list[dict]] = {}
    for argv in sorted(log.glob("*.argv"), key=lambda p: p.stat().st_mtime_ns):
        prog = argv.name.split(".")[0]
        env = dict(e.split("=", 1) for e in argv.with_suffix(".env").read_bytes().decode().split("\0") if "=" in e)
        out.setdefault(prog, []).append({"argv": argv.read_bytes().decode().split("\0")[:-1], "env": env})
    return out


def _run(argv: list[str], tmp: Path, cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``argv`` with the stand-ins first on PATH and a clean environment; (result, recorded calls)."""
    log = tmp / "calls"
    log.mkdir(exist_ok=True)
    full = {"PATH": f"{_fakes(tmp)}:/usr/bin:/bin", "FAKE_DIR": str(log), "HOME": str(cwd), "LANG": "C.UTF-8", **env}
    r = subprocess.run(argv, cwd=cwd, env=full, capture_output=True, timeout=60)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()  # as written: text mode reads '\r' as '\n'
    return r, _calls(log)


def _ran_nothing(tmp: Path, r: subprocess.CompletedProcess) -> None:
    assert not list(tmp.rglob("PWNED")), "a value was executed"
    assert "foo" not in r.stdout.splitlines(), "a value was executed"


def _bash_n(text: str) -> None:
    r = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _one_line(e: FtctlError) -> str:
    said = str(e)
    assert "\n" not in said and "Traceback" not in said, said
    return said


def _inputs(tmp: Path, h: str) -> dict:
    """A model directory, two data files (as data_path names several), held-out data and a chat template, whose
    names hold ``h``."""
    model = write_model_config(tmp / f"m{h}")
    data = tmp / f"d{h}"
    data.mkdir()
    files = [data / "a.json", data / f"b{h}.json", data / f"e{h}.json"]
    for f in files:
        f.write_text("[]")
    template = tmp / f"t{h}.jinja"
    template.write_text("{{ messages }}")
    # a path with a comma is one dataset where it exists alone (spec.split_paths); beside another it would be split
    data_files = files[1:2] if "," in h else files[:2]
    return dict(
        model=model, data_path=",".join(map(str, data_files)), data=data_files, eval=files[2], template=template
    )


# ------------------------------------------------------------------------------------------ slurm
SLURM_CONTAINERS = ("none", "apptainer", "pyxis")


@pytest.mark.parametrize("h", NASTY, ids=IDS)
def test_slurm_values_arrive_intact(h, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for container in SLURM_CONTAINERS:
        tmp = tmp_path / container
        tmp.mkdir()
        _slurm_run(h, container, tmp, tmp_path / "hf")


def _slurm_run(h: str, container: str, tmp: Path, hf_home: Path) -> None:
    i = _inputs(tmp, h)
    out = tmp / f"o{h}"
    image = {"none": None, "apptainer": f"{tmp}/img{h}.sif", "pyxis": f"ghcr.io/x/img{h}"}[container]
    spec = make_spec(
        [f"socket_ifname={h}", f"s3_endpoint_url=http://s3/{h}", f"chat_template_path={i['template']}"],
        {"env": ENV},
        backend="slurm",
        method="lora",
        gpus="2x4xA100",
        model_name_or_path=str(i["model"]),
        data_path=i["data_path"],
        eval_data_path=str(i["eval"]),
        output_dir=str(out),
        container=f"{container}:{image}" if image else None,
    )
    try:
        prep = prepare(spec)
    except FtctlError as e:  # a bind path holding ',' or ':' (apptainer, pyxis): their separators
        assert container != "none" and (":" in h or "," in h), e
        assert "cannot be bound into the container" in _one_line(e)
        return
    assert container == "none" or not (":" in h or "," in h)
    write_files(prep)
    _bash_n(prep.text)
    # Slurm reads #SBATCH lines up to the first command: only ftctl's own directives are there
    head = prep.text.split("\nset -uo pipefail\n")[0].splitlines()
    said = [line for line in head[1:] if line.startswith("# ")]  # the header, and why --mem is what it is
    assert [line for line in head[1:] if line not in said] == [
        f"#SBATCH {d}" for d in slurm_render.sbatch_directives(prep.spec, prep.plan)
    ]
    assert head[0] == "#!/bin/bash" and head[1:3] == said[:2]

    run_dir = prep.run_dir
    job = {"SLURM_SUBMIT_DIR": str(run_dir), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]"}
    r, calls = _run(["bash", str(run_dir / "job.sbatch")], tmp, run_dir, job)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "status complete" in r.stdout
    _ran_nothing(tmp, r)

    (trainer,) = calls["python3"]
    assert trainer["argv"][-4:] == ["-m", "ftctl.trainer", "--spec", f"{run_dir}/spec.json"]
    env = trainer["env"]
    assert {k: env.get(k) for k in ENV} == ENV
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == h
    assert env["AWS_ENDPOINT_URL"] == f"http://s3/{h}"
    assert env["FTCTL_RUN_DIR"] == str(run_dir)
    shipped = json.loads((run_dir / "spec.json").read_text())["spec"]
    assert (shipped["model_name_or_path"], shipped["output_dir"], shipped["chat_template_path"]) == (
        str(i["model"]),
        str(out),
        str(i["template"]),
    )
    assert (shipped["data_path"], shipped["eval_data_path"]) == (i["data_path"], str(i["eval"]))

    binds = sorted(
        {str(i["model"]), str(i["model"].parent / f"d{h}"), str(i["template"].parent), str(out), str(hf_home)}
    )
    if container == "apptainer":
        (ap,) = calls["apptainer"]
        argv = ap["argv"][: ap["argv"].index("bash")]
        assert argv[-1] == image
        assert [argv[k + 1] for k, a in enumerate(argv) if a == "--bind"] == [str(run_dir), *binds]
    if container == "pyxis":
        (srun,) = calls["srun"]
        opts = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in srun["argv"] if a.startswith("--") and "=" in a}
        assert opts["--container-image"] == slurm_render.pyxis_image(image)
        assert opts["--container-mounts"].split(",") == [f"{run_dir}:{run_dir}", *(f"{b}:{b}" for b in binds)]


@functools.cache
def _a100_plan():
    return prepare(make_spec(backend="slurm", gpus="1xA100", output_dir="/fixed/o")).plan


def _sbatch(**flags) -> str:
    """The sbatch script of a run on one A100 with ``flags`` (the spec built and checked as the CLI does)."""
    return slurm_render.render(make_spec(backend="slurm", gpus="1xA100", output_dir="/fixed/o", **flags), _a100_plan())


def test_slurm_directive_values_are_carried_or_refused_in_one_line():
    """#SBATCH values are read by Slurm, not a shell: a value it would misread (a space ends it, '#' starts
    nothing) is refused in one line; a value taken is written as given."""
    for key in ("partition", "account", "qos", "time"):
        for h in NASTY:
            try:
                text = _sbatch(**{key: h})
            except FtctlError as e:
                _one_line(e)
                continue
            assert f"#SBATCH --{key}={h}\n" in text and slurm_render._SBATCH_SAFE.fullmatch(h), (key, h)


def test_sbatch_args_are_carried_or_refused_in_one_line():
    for h in NASTY:
        for arg in (h, f"--comment={h}", f"--{h}", f"--mem=64G {h}"):
            try:
                text = _sbatch(sbatch_args=[arg])
            except FtctlError as e:
                _one_line(e)
                continue
            assert f"#SBATCH {arg}\n" in text and "\n" not in arg and " " not in arg.strip(), arg
    for other in ("--mem=64G", "--exclusive", "--nodelist=node1", "--no-kill", "--tmp=10G", "--time-min=10"):
        assert f"#SBATCH {other}\n" in _sbatch(sbatch_args=[other])  # no abbreviation of ftctl's own options


@pytest.mark.parametrize(
    "arg, option",
    [
        ("--ou=x.txt", "output"),  # sbatch took each of these two-letter abbreviations (Slurm 22.05, test cluster)
        ("--er=e.txt", "error"),
        ("--op=truncate", "open-mode"),
        ("--ar=1-2", "array"),
        ("--si=B:USR1@10", "signal"),
        ("--qo=high", "qos"),
        ("--chdir=/elsewhere", "chdir"),  # the job's log went to /elsewhere/slurm-JOB.out, not the run dir's
        ("--ch=/elsewhere", "chdir"),
    ],
)
def test_sbatch_args_abbreviating_or_moving_ftctls_own_options_are_refused(arg, option):
    with pytest.raises(FtctlError, match=f"--sbatch-arg={arg}.*--{option}"):
        _sbatch(sbatch_args=[arg])


@pytest.mark.parametrize("container", ["apptainer:-x.sif", "apptainer:--writable", "singularity:-x.sif"])
def test_an_apptainer_image_read_as_an_option_is_refused(container):
    """apptainer exec [options] IMAGE: an image starting with '-' was its option, and `bash` its image."""
    with pytest.raises(FtctlError, match=r"read an image starting with '-' as an option: give a path to it"):
        _sbatch(container=container)


# ------------------------------------------------------------------------------------------ docker
@pytest.mark.parametrize("h", NASTY, ids=IDS)
def test_docker_values_arrive_intact(h, tmp_path):
    i = _inputs(tmp_path, h)
    out = tmp_path / f"o{h}"
    spec = make_spec(
        [f"socket_ifname={h}", f"chat_template_path={i['template']}"],
        {"env": ENV},
        backend="docker",
        method="qlora",
        gpus="1xA100",
        model_name_or_path=str(i["model"]),
        data_path=i["data_path"],
        eval_data_path=str(i["eval"]),
        output_dir=str(out),
        container="docker:ghcr.io/x/img:1",
    )
    try:
        prep = prepare(spec)
    except FtctlError as e:  # docker reads ':' in a volume as its separator
        assert ":" in h and "docker reads ':'" in _one_line(e)
        return
    write_files(prep)
    want = docker_render.argv(prep.spec, prep.plan, str(prep.run_dir))
    for argv in (["sh", str(prep.run_dir / "docker-run.sh")], ["bash", "-c", prep.text]):  # launch's; render's
        r, calls = _run(argv, tmp_path, tmp_path, {})
        assert r.returncode == 0, r.stderr
        _ran_nothing(tmp_path, r)
        assert calls["docker"][-1]["argv"] == want[1:]
    assert want[want.index("-w") + 2 :][:1] == ["ghcr.io/x/img:1"]
    for host in (out, i["model"], i["template"], i["eval"], *i["data"]):
        assert any(a in (f"{host}:{host}", f"{host}:{host}:ro") for a in want), host
    assert all(f"{k}={v}" in want for k, v in ENV.items()) and f"NCCL_SOCKET_IFNAME={h}" in want


def test_docker_images_are_references_or_refused_in_one_line(tmp_path):
    """docker run reads its first word that is no option as the image: --container --privileged ran an image named
    python3 with --privileged."""
    for h in [*NASTY, "ghcr.io/x/img:1", "ubuntu", "localhost:5000/a/b@sha256:" + "0" * 64]:
        spec = make_spec(backend="docker", gpus="1xA100", output_dir=str(tmp_path / "o"), container=f"docker:{h}")
        try:
            argv = docker_render.argv(spec, prepare(spec).plan, str(tmp_path / "o"))
        except FtctlError as e:
            assert "is no image reference docker takes" in _one_line(e)
            continue
        assert argv[argv.index("-w") + 2] == h and not h.startswith("-") and shlex.quote(h) == h, h


# ------------------------------------------------------------------------------------------ sky
# On a node: SkyPilot's job script (log_lib.make_task_bash_script: the task's envs exported, then the section), and
# its docker start line (docker_utils.docker_start_cmds, the image unquoted as in its `docker pull IMAGE`).
_SKY_SIDE = r"""
import json, sys
from tests.sky_validate import TaskInvalid, validate_task_yaml
from sky.skylet import log_lib
from sky.provision import docker_utils
out = []
for text in json.load(sys.stdin):
    task = __import__("yaml").safe_load(text)
    try:
        validate_task_yaml(text)
        ok = None
    except TaskInvalid as e:
        ok = str(e)
    image = task["resources"].get("image_id", "")
    out.append({
        "invalid": ok,
        "setup": log_lib.make_task_bash_script(task["setup"], task["envs"]),
        "run": log_lib.make_task_bash_script(task["run"], task["envs"]),
        "docker": docker_utils.docker_start_cmds(image.removeprefix("docker:"), "c", [], "docker") if image else None,
    })
print(json.dumps(out))
"""


def _on_sky_nodes(texts: list[str]) -> list[dict]:
    proc = subprocess.run(
        [sky_python(), "-c", _SKY_SIDE], input=json.dumps(texts), capture_output=True, text=True, cwd=REPO, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


_NODE = {
    "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
    "SKYPILOT_NODE_RANK": "1",
    "SKYPILOT_NUM_NODES": "2",
    "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    "SKYPILOT_TASK_ID": "sky-2026-12-03-10-00-00-123456_c_3",
}
# SkyPilot writes a file_mounts source into its rsync line as Python's repr quotes it (sky/inputs.py refuses those)
_NOT_SHIPPED = "SkyPilot writes a file_mounts source into a shell line as Python quotes it"


def _python_quotes(path: str) -> bool:
    """Whether Python's repr of ``path`` is a shell word of it: in single quotes as it is, or in double quotes
    without $ or `."""
    quoted = repr(path)
    return quoted[1:-1] == path and not (quoted[0] == '"' and set("$`") & set(path))


def _sky_values(tmp_path: Path) -> tuple[list, list]:
    """(rendered, refused): each NASTY value in every string a SkyPilot task of two nodes carries."""
    cases, refused = [], []
    for n, h in enumerate(NASTY):
        tmp = tmp_path / str(n)
        tmp.mkdir()
        data = tmp / f"d{h}"
        data.mkdir()
        (data / "a.json").write_text("[]")
        # a path with a comma is one dataset only alone, and only where it exists here (spec.split_paths)
        remote, held_out = ("", None) if "," in h else (f",s3://b/d{h}.json", f"s3://b/e{h}.json")
        spec = make_spec(
            ["model_params=1b", f"socket_ifname={h}", f"s3_endpoint_url=http://s3/{h}"],
            {"env": ENV},
            backend="sky",
            method="lora",
            gpus="2x8xH100",
            model_name_or_path=f"org/m{h}",
            data_path=f"{data / 'a.json'}{remote}",
            eval_data_path=held_out,
            output_dir=f"s3://b/o{h}",
            container="docker:ghcr.io/x/img:1",
        )
        try:
            cases.append((h, tmp, prepare(spec), remote, held_out))
        except FtctlError as e:
            refused.append((str(data / "a.json"), e))
    return cases, refused


_IMAGES = [*NASTY, "ghcr.io/x/img:1", "nvcr.io/nvidia/pytorch:24.07-py3"]


def _sky_images() -> tuple[list, list]:
    """(rendered, refused) of a SkyPilot task with each of _IMAGES as its --container."""
    taken, refused = [], []
    for h in _IMAGES:
        spec = make_spec(
            ["model_params=1b"], backend="sky", gpus="1xL4", model_name_or_path="org/m", output_dir="s3://b/o",
            container=f"docker:{h}", data_path="s3://b/d.json",
        )  # fmt: skip
        try:
            taken.append((h, prepare(spec)))
        except FtctlError as e:
            refused.append((h, e))
    return taken, refused


@pytest.fixture(scope="module")
def sky_tasks(tmp_path_factory):
    """Both tests' tasks and what SkyPilot made of each, in one SkyPilot process (``import sky`` takes seconds)."""
    values, values_refused = _sky_values(tmp_path_factory.mktemp("sky-values"))
    images, images_refused = _sky_images()
    nodes = _on_sky_nodes([p.text for _, _, p, _, _ in values] + [p.text for _, p in images])
    return {
        "values": list(zip(values, nodes)),
        "values_refused": values_refused,
        "images": list(zip(images, nodes[len(values) :])),
        "images_refused": images_refused,
    }


def test_sky_values_arrive_intact_on_the_nodes(sky_tasks):
    for path, e in sky_tasks["values_refused"]:  # the shipped data file's path: SkyPilot's rsync line cannot carry it
        assert _NOT_SHIPPED in _one_line(e) and not _python_quotes(path), (path, e)
    for (h, tmp, prep, remote, held_out), node in sky_tasks["values"]:
        assert node["invalid"] is None, (h, node["invalid"])
        _bash_n(node["setup"])
        _bash_n(node["run"])
        home = tmp / "home"
        (home / "sky_workdir").mkdir(parents=True)
        r, calls = _run(["bash", "-c", node["setup"]], tmp, home, _NODE)
        assert r.returncode == 0, (h, r.stderr)
        r, calls = _run(["bash", "-c", node["run"]], tmp, home, _NODE)
        assert r.returncode == 0, (h, r.stderr)
        _ran_nothing(tmp, r)
        trainer = calls["python3"][-1]
        assert trainer["argv"][-4:-1] == ["-m", "ftctl.trainer", "--spec"], h
        env = trainer["env"]
        assert {k: env.get(k) for k in ENV} == ENV
        assert (env["NCCL_SOCKET_IFNAME"], env["AWS_ENDPOINT_URL"]) == (h, f"http://s3/{h}")
        shipped = json.loads(Path(trainer["argv"][-1]).read_text())
        assert shipped == json.loads(prep.files["spec.json"])  # the heredoc's, byte for byte as JSON
        s = shipped["spec"]
        assert (s["model_name_or_path"], s["output_dir"], s["eval_data_path"]) == (
            f"org/m{h}",
            f"s3://b/o{h}",
            held_out,
        )
        assert s["data_path"].startswith("./inputs/") and s["data_path"].endswith(f"-a.json{remote}")
        r, calls = _run(["bash", "-c", node["docker"]], tmp, home, {})
        assert calls["docker"][-1]["argv"][-1] == "ghcr.io/x/img:1"
    assert len(sky_tasks["values"]) + len(sky_tasks["values_refused"]) == len(NASTY)


def test_sky_images_are_references_or_refused_in_one_line(sky_tasks, tmp_path):
    """SkyPilot runs `docker pull IMAGE` and `docker run ... IMAGE` on the node unquoted: --container
    'docker:ubuntu;touch /tmp/x' passed its validation and ran `touch` there. Each image taken reaches SkyPilot's
    docker line whole."""
    for h, e in sky_tasks["images_refused"]:
        assert "is no image reference docker takes" in _one_line(e), h
    taken = [h for (h, _), _ in sky_tasks["images"]]
    assert taken == ["a:b", "ghcr.io/x/img:1", "nvcr.io/nvidia/pytorch:24.07-py3"]  # a:b is image a, tag b
    for (h, _), node in sky_tasks["images"]:
        assert node["invalid"] is None
        r, calls = _run(["bash", "-c", node["docker"]], tmp_path, tmp_path, {})
        _ran_nothing(tmp_path, r)
        assert calls["docker"][-1]["argv"][-1] == h


# ------------------------------------------------------------------------------------------ local
@pytest.mark.parametrize("h", NASTY, ids=IDS)
def test_local_launch_line_carries_the_values(h, tmp_path):
    """The local backend runs its argv without a shell; the line it prints (and keeps) is that argv, quoted."""
    out = tmp_path / f"o{h}"
    prep = prepare(make_spec(backend="local", gpus="cpu", output_dir=str(out), method="lora"))
    r, _ = _run(["bash", "-c", f"printf '%s\\0' {prep.text.strip()}"], tmp_path, tmp_path, {})
    assert r.stdout.split("\0")[:-1] == [sys.executable, "-m", "ftctl.trainer", "--spec", f"{out}/spec.json"]
    _ran_nothing(tmp_path, r)


# ------------------------------------------------------------------------------------------ secrets
SECRETS = {
    "HF_TOKEN": "hf_SecretValueOne7f3a9cHF",
    "WANDB_API_KEY": "SecretValueTwo-wandb-0c41",
    "MY_SECRET": "SecretValueThree $(touch PWNED) '\n",
    "AWS_ACCESS_KEY_ID": "AKIASECRETVALUEFOUR1",
    "AWS_SECRET_ACCESS_KEY": "SecretValueFive/aws+key=",
}


def _no_secret_anywhere(root: Path, *texts: str, besides: Path) -> None:
    """No value in a file under ``root`` (but the stand-ins' records under ``besides``: the environment a process
    had, where secrets belong) nor in ``texts``."""
    leaks = []
    for path in [p for p in root.rglob("*") if p.is_file() and besides not in p.parents]:
        data = path.read_bytes()
        leaks += [f"{name} in {path}" for name, v in SECRETS.items() if v.encode() in data]
    leaks += [f"{name} printed" for text in texts for name, v in SECRETS.items() if v in text]
    assert not leaks


@pytest.mark.slow  # a real local run: ~20 s
def test_secret_values_are_never_written_or_printed(tmp_path, monkeypatch, capsys, tiny_model_dir, tiny_data):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("FTCTL_HOME", str(home))
    bin_dir = _fakes(tmp_path)
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 4242\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(tmp_path / "calls"))
    (tmp_path / "calls").mkdir()
    common = dict(model_name_or_path=str(tiny_model_dir), data_path=str(tiny_data), secrets=["HF_TOKEN", "MY_SECRET"])
    o = ["max_steps=2", "save_steps=1", "global_batch_size=2", "model_max_length=64", "report_to=tensorboard"]

    # sky: what launch writes and hands SkyPilot (the task YAML), every store's credentials among its secrets
    sky = prepare(make_spec(["model_params=1b"], backend="sky", gpus="1xL4", output_dir="s3://b/o", **common))
    write_files(sky)
    declared = yaml.safe_load(sky.text)["secrets"]
    assert {"HF_TOKEN", "MY_SECRET"} <= set(declared) and set(declared.values()) == {None}
    # a dry run of each backend that runs here or on a cluster, then the launch itself as far as this machine goes
    for backend, gpus in (("slurm", "cpu"), ("docker", "cpu"), ("local", "cpu")):
        out = tmp_path / backend
        spec = make_spec(o, backend=backend, gpus=gpus, output_dir=str(out), **common)
        launch(spec, dry_run=True)
        if backend == "slurm":
            launch(spec)
            job = {"SLURM_SUBMIT_DIR": str(out), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node1"}
            with open(out / "slurm-4242.out", "w") as log:  # as sbatchd runs it (--export=ALL: the secrets too)
                subprocess.run(["bash", str(out / "job.sbatch")], cwd=out, env={**os.environ, **job}, stdout=log)
            assert "status complete" in (out / "slurm-4242.out").read_text()
        elif backend == "docker":
            launch(spec)  # the stand-in docker records argv and environment: the values travel in the latter
            (run,) = [c for c in _calls(tmp_path / "calls")["docker"] if c["argv"][:1] == ["run"]]
            assert (
                run["argv"][run["argv"].index("HF_TOKEN") - 1] == "-e" and run["env"]["HF_TOKEN"] == SECRETS["HF_TOKEN"]
            )
    # local: a real run (two steps, a checkpoint each: manifests, logs, metrics, TensorBoard events, trainer state)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from ftctl.cli import main

    rc = main.main(
        ["launch", "--backend", "local", "--gpus", "cpu", "--method", "lora", "--model", str(tiny_model_dir),
         "--data", str(tiny_data), "--output", str(tmp_path / "local-run"), "--secret", "MY_SECRET",
         *[a for kv in o for a in ("-o", kv)]],
        standalone_mode=False,
    )  # fmt: skip
    assert rc in (0, None)
    assert (tmp_path / "local-run" / "checkpoint-1" / "ftctl-manifest.json").is_file()
    captured = capsys.readouterr()
    _no_secret_anywhere(tmp_path, captured.out, captured.err, besides=tmp_path / "calls")
