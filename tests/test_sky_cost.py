"""`ftctl plan --backend sky` / `launch --dry-run`: SkyPilot's optimizer and catalog price the run, in
the launcher environment, offline: the catalog is the checked-in fixture tests/sky/catalog (hand-placed
CSVs under $HOME/.sky/catalogs/v8 are never re-fetched) and the enabled clouds are set to GCP by the
test's sitecustomize (a cloud account cannot exist here: the one thing replaced, at SkyPilot's own
`get_cached_enabled_clouds_or_refresh`). The two A100:8 GPU price rows of the fixture are made up, and so is its
H100:1 row (its host, a3-highgpu-1g with 234 GiB, is SkyPilot's catalog's).

Each `ftctl` here runs in the trainer environment and asks SkyPilot through ftctl.sky.bridge, as a user's does. Of the
~2.5 s that bridge's `python -m ftctl.sky.sdk optimize` takes cold, ~2 s is `import sky` and ~0.3 s the catalog's first
read (the optimizer itself: ~0.01 s); so the `optimize` calls are answered by a SkyPilot python that imported sky and
read the catalog once (WARM_SERVER), forked per call: the fork runs sdk.main with the call's argv, stdin, stdout,
stderr, say fd, environment and cwd, so the bridge's side is unchanged. Other operations start SkyPilot's python cold.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET
from tests.sky_fixtures import HERE, sky_bin

FTCTL = str(Path(sys.executable).parent / "ftctl")
RUN = ["--model-params", "7b", "--output", "s3://b/o"]


@pytest.fixture(scope="module")
def cost_env(tmp_path_factory):
    if not (sky_bin() / "python").exists():
        pytest.fail(f"no SkyPilot venv at {sky_bin().parent}: run scripts/setup.sh (or set FTCTL_SKY_PYTHON)")
    home = tmp_path_factory.mktemp("sky-cost-home")
    shutil.copytree(HERE / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "FTCTL_"))}
    env.update(
        HOME=str(home),
        SKYPILOT_DISABLE_USAGE_COLLECTION="1",
        FTCTL_SKY_PYTHON=str(sky_bin() / "python"),
        FTCTL_TEST_SKY_CLOUDS="gcp",
        PYTHONPATH=str(HERE / "site"),
        FTCTL_HOME=str(home / "ftctl"),
    )
    warm = tmp_path_factory.mktemp("warm")
    sock, python = warm / "s", warm / "python"
    (warm / "server.py").write_text(WARM_SERVER)
    python.write_text(WARM_CLIENT.format(python=sys.executable, real=sky_bin() / "python", sock=sock))
    python.chmod(0o755)
    source = str(Path(__file__).resolve().parents[1])
    with open(warm / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(sky_bin() / "python"), str(warm / "server.py"), str(sock)],
            env={**env, "PYTHONPATH": os.pathsep.join([source, env["PYTHONPATH"]])},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not sock.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not sock.exists():
        server.kill()
        pytest.fail(f"the warm SkyPilot python did not start: {(warm / 'server.log').read_text()[-3000:]}")
    yield {**env, "FTCTL_SKY_PYTHON": str(python)}
    server.terminate()
    server.wait(timeout=30)


# SkyPilot's python, sky imported and the catalog read: one fork per `python -m ftctl.sky.sdk optimize`, its fds,
# environment and cwd the caller's (WARM_CLIENT sends them), its exit code sent back.
WARM_SERVER = """
import fcntl, json, os, socket, sys
from ftctl.sky import sdk
sdk.optimize({"accelerators": "A100:8", "use_spot": False}, 1)
sys.stdout.flush(); sys.stderr.flush()
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path + ".new")
srv.listen(8)
os.rename(path + ".new", path)
parent = os.getppid()
srv.settimeout(5)
while True:
    try:
        conn, _ = srv.accept()
    except TimeoutError:  # pytest gone without its teardown: so is this
        if os.getppid() != parent:
            sys.exit(0)
        continue
    conn.settimeout(None)
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 8)
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        srv.close()
        conn.close()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        for fd in fds:
            os.close(fd)
        for num, fd in zip(req["fds"], high):
            os.dup2(fd, num)
            os.close(fd)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        try:
            rc = sdk.main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            rc = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(rc)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
    conn.close()
"""

WARM_CLIENT = """#!{python} -S
import json, os, socket, sys
argv = sys.argv[1:]
if argv[:3] != ["-m", "ftctl.sky.sdk", "optimize"]:
    os.execv("{real}", ["{real}", *argv])
say = os.environ.get("FTCTL_SKY_SAY_FD")
fds = [0, 1, 2] + ([int(say)] if say else [])
req = {{"argv": argv[2:], "env": dict(os.environ), "cwd": os.getcwd(), "fds": fds}}
with socket.socket(socket.AF_UNIX) as s:
    s.connect("{sock}")
    socket.send_fds(s, [json.dumps(req).encode()], fds)
    sys.exit(int(s.recv(64) or b"1"))
"""


def ftctl(env, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    "gpus,flags,expected",
    [
        ("8xA100", [], "GCP us-central1 a2-highgpu-8g: $29.39/h per node, $29.39/h for 1 node"),
        ("8xA100", ["--spot"], "GCP us-central1 a2-highgpu-8g (spot): $12.35/h per node, $12.35/h for 1 node"),
        ("2x8xA100", [], "GCP us-central1 a2-highgpu-8g: $29.39/h per node, $58.77/h for 2 nodes"),
    ],
)
def test_plan_prices_the_cheapest_instance(cost_env, gpus, flags, expected):
    proc = ftctl(cost_env, "plan", "--backend", "sky", "--gpus", gpus, *flags, *RUN, "-o", "max_steps=100")
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout, proc.stdout
    total = next(line for line in proc.stdout.splitlines() if line.startswith("est. total"))
    assert "$" in total and "tokens/s" in total, total


def test_the_estimate_takes_the_batch_the_plan_makes():
    """TRL's and FastChat's way to the batch (per_device_train_batch_size x gradient_accumulation_steps x GPUs) is
    what the estimate counts, not global_batch_size's default of 32."""
    from ftctl.plan import make_plan
    from ftctl.sky.cost import train_tokens
    from ftctl.spec import build

    values = {"gpus": "8xA100", "model_params": "7b", "max_steps": 1000, "model_max_length": 2048}
    spec = build({**values, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8})
    plan = make_plan(spec)
    assert plan.global_batch_size == 256
    assert train_tokens(spec, plan) == 1000 * 256 * 2048


def test_unknown_accelerator_gets_skypilots_own_message(cost_env):
    proc = ftctl(cost_env, "plan", "--backend", "sky", "--gpus", "8xH100", *RUN)
    assert proc.returncode != 0
    assert "error: SkyPilot: Catalog does not contain any instances satisfying the request" in proc.stderr
    assert "H100" in proc.stderr and "Traceback" not in proc.stderr and "sky-payload" not in proc.stderr


def test_a_desktop_card_no_enabled_cloud_offers_says_where_it_trains(cost_env):
    """`--backend sky --gpus RTX3060` (GCP alone enabled) said only SkyPilot's "Catalog does not contain any instances
    satisfying the request: 1x <Cloud>({'RTX3060': 1})" (task 309)."""
    proc = ftctl(cost_env, "plan", "--backend", "sky", "--gpus", "RTX3060", "--method", "qlora", *RUN)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "error: --gpus 1xRTX3060: no cloud enabled here offers the RTX3060, a desktop card (GeForce or RTX "
        "workstation): RunPod and Vast.ai rent some"
    ), proc.stderr
    assert "--backend local or --backend slurm. SkyPilot: Catalog does not contain" in proc.stderr


def test_dry_run_says_which_backend_and_why_and_what_it_costs(cost_env, tmp_path):
    proc = ftctl(cost_env, "launch", "--dry-run", "--backend", "sky", "--gpus", "8xA100", *RUN, cwd=tmp_path)
    # everything is printed; no credentials for the output's bucket here, so it exits as the launch would
    assert proc.returncode == 2 and "error: --output s3://b/o: No credentials" in proc.stderr, proc.stderr
    assert proc.stderr.startswith("backend: sky (--backend)")
    assert "a2-highgpu-8g" in proc.stderr and "accelerators: A100:8" in proc.stdout
    # without --backend, on a machine without those GPUs and no SkyPilot API server: a refusal naming the choices
    proc = ftctl(
        {**cost_env, "SKYPILOT_API_SERVER_ENDPOINT": "http://127.0.0.1:9"},
        "launch",
        "--dry-run",
        "--gpus",
        "8xA100",
        *RUN,
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--backend slurm" in proc.stderr and "no SkyPilot API server answers" in proc.stderr, proc.stderr


def test_without_skypilot_one_line_says_how_to_install(cost_env):
    proc = ftctl(
        {**cost_env, "FTCTL_SKY_PYTHON": "/nonexistent/python"}, "plan", "--backend", "sky", "--gpus", "8xA100", *RUN
    )
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "pip install 'ftctl[sky]'" in err and "/nonexistent/python" in err, err


def test_render_and_help_never_import_skypilot_even_where_it_is_installed(cost_env, tmp_path):
    """In the launcher environment, where `import sky` works (1-3 s, writes ~/.sky), only the commands
    that talk to SkyPilot import it."""
    probe = (
        "import sys\nfrom ftctl.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('SKY-IMPORTED' if 'sky' in sys.modules else 'SKY-ABSENT', file=sys.stderr)\n"
    )
    for args in (
        ["--help"],
        ["render", "--backend", "sky", "--gpus", "8xA100", *RUN],
        ["plan", "--gpus", "8xA100", *RUN],
    ):
        proc = subprocess.run(
            [str(sky_bin() / "python"), "-c", probe, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=cost_env,
        )
        assert proc.stderr.strip().endswith("SKY-ABSENT"), (args, proc.stderr)


def test_ftctls_tables_of_skypilot_words_match_the_installed_skypilot(cost_env):
    """Every job state maps onto an ftctl state; the clouds render checks --infra / -o cloud against are
    SkyPilot's (render imports no SkyPilot: the list is a constant)."""
    code = (
        "import sky\nfrom sky.utils import registry\nfrom ftctl.sky.backend import SKY_STATES\n"
        "from ftctl.sky.render import SKY_CLOUD_ALIASES, SKY_CLOUDS\n"
        "words = [s.value for s in sky.JobStatus] + [s.value for s in sky.jobs.ManagedJobStatus]\n"
        "print(sorted(w for w in words if w not in SKY_STATES))\n"
        "clouds = registry.CLOUD_REGISTRY\n"
        "print(sorted(set(clouds) ^ set(SKY_CLOUDS)), clouds._aliases == SKY_CLOUD_ALIASES)\n"
    )
    proc = subprocess.run(
        [str(sky_bin() / "python"), "-c", code], capture_output=True, text=True, timeout=120, env=cost_env
    )
    assert proc.stdout.split("\n")[:2] == ["[]", "[] True"], proc.stdout + proc.stderr


def test_offload_plans_are_priced_on_instances_with_their_host_memory(cost_env):
    """An offload plan's host RAM (plan.offload_host_gb) is part of what the optimizer prices: a2-highgpu-8g
    has 680 GiB, enough for 13B fft offloaded from 8 x A100-40GB, not for 70B's."""
    args = ["plan", "--backend", "sky", "--method", "fft", "--gpus", "8xA100", "--output", "s3://b/o"]
    fits = ftctl(cost_env, *args, "--model-params", "13b", "-o", "strategy=zero2_offload", "-o", "max_steps=10")
    assert fits.returncode == 0, fits.stderr
    assert "a2-highgpu-8g" in fits.stdout and "host memory" in fits.stdout, fits.stdout
    big = ftctl(cost_env, *args, "--model-params", "70b", "-o", "max_steps=10")
    assert big.returncode != 0 and "Traceback" not in big.stderr
    assert re.search(r"^error: no VM with 8xA100 and \d+ GiB of RAM in the catalogs", big.stderr), big.stderr
    assert "a2-highgpu-8g, has 680 GiB: -o host_memory_gb=730 plans within it" in big.stderr, big.stderr


H100 = ["--method", "fft", "--gpus", "1xH100", "--output", "s3://b/o", "-o", "max_steps=10"]


def test_an_offload_plan_gets_a_vm_with_its_ram_or_is_told_none_has_it(cost_env):
    """The node's RAM is not assumed on SkyPilot (it was 2x the GPUs': 8B fft on one H100, whose ZeRO-Offload needs
    172 GB, was refused at 160): the task asks memory: for it and SkyPilot's optimizer picks the VM, here GCP's
    a3-highgpu-1g (234 GiB); where no VM with those GPUs has it (13B's 308 GB), one line says so, which VM comes
    nearest, and the -o host_memory_gb that plans within it, whose refusal names the nearest plans that fit."""
    fits = ftctl(cost_env, "plan", "--backend", "sky", *H100, "--model", "meta-llama/Llama-3.1-8B")
    assert fits.returncode == 0, fits.stderr
    assert "host memory    172 GB per node for offload" in fits.stdout
    assert "SkyPilot picks a VM with that much (memory:)" in fits.stdout
    assert "cheapest       GCP us-central1 a3-highgpu-1g: $10.98/h per node" in fits.stdout, fits.stdout
    none = ftctl(cost_env, "plan", "--backend", "sky", *H100, "--model-params", "13b")
    said = (
        "error: no VM with 1xH100 and 287 GiB of RAM in the catalogs of SkyPilot's enabled clouds (memory: 287+): the "
        "zero2_offload plan keeps ~308 GB a node in host RAM, its optimizer offloaded. The cheapest VM with 1xH100, "
        "GCP a3-highgpu-1g, has 234 GiB: -o host_memory_gb=251 plans within it"
    )
    assert none.returncode == 2 and none.stderr.startswith(said), none.stderr
    within = ftctl(cost_env, "plan", "--backend", "sky", *H100, "--model-params", "13b", "-o", "host_memory_gb=251")
    assert within.returncode == 2 and "which has 251 GB" in within.stderr and "Nearest plans that fit" in within.stderr


def test_a_launch_no_vm_can_hold_is_refused_before_skypilot_is_asked(cost_env, moto_s3, tmp_path):
    """sky.launch would answer it in SkyPilot's words ('... satisfying the request: 1x <Cloud>(mem=287+, {'H100': 1})'),
    the plan's unsaid; the launch says the dry run's line and leaves no run directory."""
    bucket = moto_s3.make_bucket()
    env = {**cost_env, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    env["SKYPILOT_API_SERVER_ENDPOINT"] = "http://127.0.0.1:9"  # nothing to launch on, were it asked
    args = [*H100[:4], "--output", f"s3://{bucket}/o", "-o", f"s3_endpoint_url={moto_s3.endpoint}"]
    proc = ftctl(env, "launch", "--backend", "sky", *args, "--model-params", "13b", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "error: no VM with 1xH100 and 287 GiB of RAM" in proc.stderr, proc.stderr
    assert not list(tmp_path.rglob("task.yaml")), list(tmp_path.rglob("*"))
