"""What launch learns from the cluster before sbatch, against fake Slurm commands (no cluster): what a partition
can never run (SlurmBackend.check, ftctl.slurm.doctor) and a controller that cannot be reached
(ftctl.slurm.scheduler). The real cluster's side of these is in tests/test_slurm_scheduler.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ftctl.backend import get, launch
from ftctl.errors import FtctlError
from ftctl.slurm import scheduler
from ftctl.slurm.doctor import PartitionInfo, doctor
from ftctl.slurm.render import gib
from tests.render_fixtures import make_spec, prepared

VENV_BIN = Path(sys.executable).parent

MODEL = "meta-llama/Llama-3.2-1B"
LLAMA_8B = "meta-llama/Llama-3.1-8B"
# sinfo --Node --format '%P|%N|%t|%c|%m|%l|%a|%G' of a cluster: CPUs, MiB, time limit, GRES a node
SINFO = """\
cpu*|c1|idle|32|256000|infinite|up|(null)
cpu*|c2|idle|32|256000|infinite|up|(null)
gpu|g1|idle|64|512000|1-00:00:00|up|gpu:a100:8(S:0-1)
gpu|g2|mix|64|512000|1-00:00:00|up|gpu:a100:8(S:0-1)
small|s1|idle|32|512000|12:00:00|up|gpu:a100:8
mixed|m1|idle|96|1024000|UNLIMITED|up|gpu:h100:4(S:0),gpu:nvidia_a100-sxm4-80gb:4(S:1)
untyped|u1|idle|64|512000|30:00|up|gpu:8
"""
# what Slurm 22.05's commands print, and exit 1, when SLURM_CONF is unset and there is no slurm.conf
NO_CONFIG = """\
{cmd}: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host
{cmd}: error: fetch_config: DNS SRV lookup failed
{cmd}: error: _establish_config_source: failed to fetch config
{cmd}: fatal: Could not establish a configuration source
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Fake sinfo (printing SINFO) and sbatch first on PATH, no SLURM_CONF."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo.out").write_text(SINFO)
    _script(bin_dir / "sinfo", f"cat {bin_dir / 'sinfo.out'}")
    _script(bin_dir / "sbatch", "echo 'sbatch: error: not this test' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{bin_dir}:{VENV_BIN}:/usr/bin:/bin")  # the venv activated, as the README has it
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return bin_dir


def _script(path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _checked(overrides=(), **flags):
    rendered = prepared(overrides, backend="slurm", model_name_or_path=MODEL, output_dir="/fixed/out", **flags)
    get("slurm").check(rendered)
    return rendered


def _refused(overrides=(), **flags) -> str:
    with pytest.raises(FtctlError) as e:
        _checked(overrides, **flags)
    message = str(e.value)
    assert "\n" not in message and message.startswith("Slurm cannot run this job as asked: ")
    assert message.endswith(". `ftctl doctor --backend slurm` shows what each partition has.")
    return message


# ------------------------------------------------------------------------------ what never runs
def test_more_cpus_a_task_than_any_node_has_is_refused_with_the_key_to_change(cluster):
    # partition small's nodes have 32 CPUs: the run's own 64 is refused; ftctl's default (8 a GPU, 64) is their 32
    msg = _refused(["cpus_per_task=64"], gpus="8xA100", partition="small")
    assert "--cpus-per-task=64 asked for (-o cpus_per_task, else 8 a GPU), but partition 'small' has at most 32 " in msg
    assert msg.endswith("use -o cpus_per_task=32. `ftctl doctor --backend slurm` shows what each partition has.")
    assert "-o cpus_per_task=64" in _refused(["cpus_per_task=65"], gpus="8xA100", partition="gpu")
    _checked(["cpus_per_task=32"], gpus="8xA100", partition="small")
    assert "#SBATCH --cpus-per-task=32\n" in _checked(gpus="8xA100", partition="small").text  # helper 178
    _checked(gpus="8xA100", partition="gpu")  # 64 of 64


def test_a_gpu_plan_on_a_partition_without_gpus_is_refused(cluster):
    msg = _refused(gpus="1xA100")  # the default partition: cpu
    assert "partition 'cpu' has no GPUs (no gpu gres on its nodes); partitions with GPUs: gpu (gpu:a100:8)" in msg
    assert "(--partition NAME)" in msg
    _checked(gpus="cpu", nodes=2)


@pytest.mark.parametrize(
    ("partition", "time", "refused"),
    [
        ("gpu", "1-00:00:01", True),
        ("gpu", "24:00:00", False),
        ("gpu", "UNLIMITED", True),  # no limit asked for, where the partition has one
        ("untyped", "31", True),  # minutes, against sinfo's 30:00 (MM:SS)
        ("untyped", "30", False),
        ("mixed", "30-00:00:00", False),  # UNLIMITED
    ],
)
def test_a_time_limit_longer_than_the_partitions_is_refused(cluster, partition, time, refused):
    if not refused:
        _checked(gpus="1xH100" if partition != "gpu" else "1xA100", partition=partition, time=time)
        return
    msg = _refused(gpus="1xA100", partition=partition, time=time)
    limit = {"gpu": "1-00:00:00", "untyped": "30:00"}[partition]
    assert f"--time {time} is longer than partition {partition!r} allows ({limit})" in msg
    assert f"(PartitionTimeLimit); use --time {limit} or less" in msg


def test_a_gpu_type_the_partition_does_not_name_is_a_warning_not_a_refusal(cluster, capsys):
    """Sites name their GPUs as they like ('ampere' may be A100s): launch says it, doctor calls it a problem, and
    the job is not refused on a name."""
    _checked(gpus="8xH100", partition="gpu")
    said = capsys.readouterr().err
    assert said.startswith("warning: partition 'gpu' has no H100 GPUs; its GPU types: a100; other partitions: ")
    assert "mixed (gpu:h100:4, gpu:nvidia_a100-sxm4-80gb:4)" in said and "the plan is for H100" in said
    assert doctor(partition="gpu", gpus_per_node=8, gpu_type="H100").problems[0] in said  # as `ftctl doctor` says
    # untyped GRES: nothing is known, nothing refused, no type asked for
    assert "#SBATCH --gres=gpu:8\n" in _checked(gpus="8xH100", partition="untyped").text


def test_too_many_nodes_says_pending_forever_once(cluster):
    msg = _refused(gpus="cpu", nodes=3)
    assert msg.count("forever") == 1
    assert "3 nodes asked for, but partition 'cpu' has 2: Slurm would leave the job pending forever" in msg
    assert "ask for at most 2 (--nodes), or pass another --partition" in msg


def test_every_refusal_is_said_at_once(cluster):
    msg = _refused(["cpus_per_task=100"], gpus="8xH100", nodes=3, partition="gpu", time="2-00:00:00")
    for said in ("3 nodes asked for", "--cpus-per-task=100", "--time 2-00:00:00 is longer"):
        assert said in msg


# --------------------------------------------------------------------------- the GPU type asked for
@pytest.mark.parametrize(
    ("gpus", "partition", "asked"),
    [
        ("8xA100", "gpu", "a100:8"),
        ("4xA100-80GB", "mixed", "nvidia_a100-sxm4-80gb:4"),
        ("4xH100", "mixed", "h100:4"),
        ("8xA100", "untyped", "8"),  # nothing known: as rendered offline
    ],
)
def test_launch_asks_for_the_gpu_type_as_the_partition_names_it(cluster, gpus, partition, asked):
    offline = prepared(backend="slurm", gpus=gpus, partition=partition, model_name_or_path=MODEL, output_dir="/o")
    assert f"#SBATCH --gres=gpu:{gpus.split('x')[0]}\n" in offline.text  # prepare asks only RAM
    rendered = _checked(gpus=gpus, partition=partition)
    assert f"#SBATCH --gres=gpu:{asked}\n" in rendered.text
    assert rendered.files[rendered.paths.sbatch.name] == rendered.text  # what is written and sent
    assert rendered.text == offline.text.replace(f"--gres=gpu:{gpus.split('x')[0]}\n", f"--gres=gpu:{asked}\n")


def test_launch_dry_run_prints_the_typed_request_it_would_send(cluster, capsys, tmp_path):
    spec = make_spec(
        backend="slurm", gpus="8xA100", partition="gpu", model_name_or_path=MODEL, output_dir=str(tmp_path / "run")
    )
    launch(spec, dry_run=True)
    assert "#SBATCH --gres=gpu:a100:8\n" in capsys.readouterr().out


# --------------------------------------------------------------------------- the nodes' RAM
def test_an_offload_plan_is_planned_for_the_ram_the_partitions_nodes_have(cluster, tmp_path, capsys):
    """8B fft on one A100-80GB offloads its optimizer (~172 GB of RAM a node): where no -o host_memory_gb is given it
    was refused against 2x the GPUs' memory (160 GB), though partition gpu's nodes have 536. Planned for those, said
    where the number came from, with one sinfo for the whole dry run; offline, the 2x assumption as before."""
    flags = dict(backend="slurm", method="fft", gpus="1xA100-80GB", partition="gpu", model_name_or_path=LLAMA_8B)
    rendered = prepared(**flags, output_dir="/fixed/out")
    get("slurm").check(rendered)
    assert rendered.plan.strategy == "zero2_offload" and rendered.spec.host_memory_gb == 512000 * 2**20 / 1e9
    assert "host memory: partition gpu's nodes with 1 A100-80GB have up to 500 GiB of RAM (sinfo): planned for " in (
        rendered.plan.table(rendered.spec)
    )
    assert f"#SBATCH --mem={gib(rendered.plan.host_memory_gb)}G\n" in rendered.text  # within the nodes' 500 GiB
    _script(cluster / "sinfo", f"echo >> {cluster / 'asked'}; cat {cluster / 'sinfo.out'}")
    try:  # the dry run may say the local disk is too small for the 8B checkpoints: beside the point here
        launch(make_spec(**flags, output_dir=str(tmp_path / "run")), dry_run=True)
    except FtctlError:
        pass
    assert "have up to 500 GiB of RAM (sinfo)" in capsys.readouterr().err
    assert (cluster / "asked").read_text() == "\n"  # plan, check and the dry run's note: one sinfo
    assert prepared(["host_memory_gb=600"], **flags).spec.host_memory_gb == 600  # the run's own number wins

    (cluster / "sinfo.err").write_text(NO_CONFIG.format(cmd="sinfo"))  # Slurm's commands here, no controller
    _script(cluster / "sinfo", f"cat {cluster / 'sinfo.err'} >&2; exit 1")
    with pytest.raises(FtctlError, match=r"which has 160 GB assumed, 2x its GPUs' memory"):
        prepared(**flags)


def test_a_cpu_plan_is_bound_by_the_nodes_ram_and_a_refusal_says_whose(cluster):
    partition = PartitionInfo("cpu", True, True, "1:00:00", [_node(8000, "idle"), _node(16000, "down*")])
    assert partition.host_memory(None, 1, 1) == (
        8000 * 2**20 / 1e9,
        "partition cpu's nodes have up to 7.8 GiB of RAM (sinfo)",
    )
    (cluster / "sinfo.out").write_text("cpu*|c1|idle|32|8000|infinite|up|(null)\n")
    flags = dict(backend="slurm", method="fft", gpus="cpu", model_name_or_path="org/m")
    assert prepared(model_params="100m", **flags).spec.host_memory_gb == 8000 * 2**20 / 1e9  # sinfo's MiB, exactly
    with pytest.raises(FtctlError) as e:  # planned unbounded before, then refused at sbatch's --mem
        prepared(model_params="1.7b", **flags)
    assert "does not fit host_memory_gb=8.4 on CPU" in str(e.value)
    assert str(e.value).endswith(" Host memory: partition cpu's nodes have up to 7.8 GiB of RAM (sinfo).")


def test_the_ram_of_nodes_with_the_runs_gpus_and_of_as_many_nodes_as_it_asks_for():
    nodes = [
        _node(512000, "idle", {"a100": 8}),
        _node(1024000, "mix", {"a100": 8}),
        _node(2048000, "idle", {"h100": 8}),
    ]
    gpu = PartitionInfo("gpu", False, True, "1:00:00", [*nodes, _node(4096000, "down*", {"a100": 8})])
    assert gpu.host_memory("A100", 8, 1) == (
        1024000 * 2**20 / 1e9,
        "partition gpu's nodes with 8 A100 have up to 1000 GiB of RAM (sinfo)",
    )
    assert gpu.host_memory("A100", 8, 2) == (
        512000 * 2**20 / 1e9,
        "2 of partition gpu's nodes with 8 A100 have 500 GiB of RAM or more (sinfo)",
    )
    assert gpu.host_memory("V100", 1, 1)[0] == 2048000 * 2**20 / 1e9  # GPUs no node names: the partition's largest


def _node(mb: int, state: str, gpus=None):
    from ftctl.slurm.doctor import NodeInfo

    return NodeInfo(name="n", state=state, cpus=8, memory_mb=mb, gpus=gpus or {})


def test_partition_time_limits_in_sinfos_forms():
    def limit(text):
        return PartitionInfo("p", True, True, text).time_limit_s

    assert limit("1-00:00:00") == 86400
    assert limit("2-12:00:00") == 216000
    assert limit("30:00") == 1800  # MM:SS
    assert limit("1:00:00") == 3600
    assert limit("infinite") is None and limit("UNLIMITED") is None
    assert limit("n/a") is None  # not a time: nothing known


def test_gres_type_needs_one_named_type():
    from ftctl.slurm.doctor import NodeInfo

    def partition(*gres):
        nodes = [NodeInfo(f"n{i}", "idle", 8, 1000, g) for i, g in enumerate(gres)]
        return PartitionInfo("p", True, True, "infinite", nodes)

    assert partition({"a100": 8}).gres_type("A100") == "a100"
    assert partition({"a100": 8}, {"v100": 8}).gres_type("A100") == "a100"
    assert partition({"a100": 4}, {"A100": 4}).gres_type("A100") is None  # two names for it: no one to ask for
    assert partition({"a100": 8}, {"": 8}).gres_type("A100") is None  # an untyped node may be one too
    assert partition({"": 8}).gres_type("A100") is None
    assert partition({"v100": 8}).gres_type("A100") is None


# ---------------------------------------------------------------------------- controller not reached
@pytest.fixture
def no_controller(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo"):
        (bin_dir / f"{cmd}.err").write_text(NO_CONFIG.format(cmd=cmd))
        _script(bin_dir / cmd, f"cat {bin_dir / (cmd + '.err')} >&2; exit 1")
    monkeypatch.setenv("PATH", f"{bin_dir}:{VENV_BIN}:/usr/bin:/bin")  # the venv activated, as the README has it
    monkeypatch.delenv("SLURM_CONF", raising=False)
    return bin_dir


UNREACHED = (
    " could not reach the Slurm controller (Could not establish a configuration source; SLURM_CONF is not set): "
    "point SLURM_CONF at the cluster's slurm.conf or run ftctl on the cluster's login node; "
    "`ftctl doctor --backend slurm` checks the connection"
)


def test_a_controller_never_reached_is_said_as_that_by_every_command(no_controller, tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\ntrue\n")
    with pytest.raises(FtctlError) as e:
        scheduler.submit(script, cwd=tmp_path)
    assert str(e.value) == "sbatch" + UNREACHED
    for call in (lambda: scheduler.status("12"), lambda: scheduler.status("13"), lambda: scheduler.cancel("12")):
        with pytest.raises(FtctlError) as e:
            call()
        assert str(e.value) == "squeue" + UNREACHED  # the same words for every job: a list can say it once
    for argv in (["scancel", "12"], ["sacct", "-j", "12"], ["scontrol", "show", "job", "12"]):
        with pytest.raises(FtctlError) as e:
            scheduler.run_command(argv)
        assert str(e.value) == argv[0] + UNREACHED
    report = doctor()  # doctor does not send the user to itself
    assert not report.reachable and report.message == "sinfo" + UNREACHED.removesuffix(scheduler.DOCTOR_HINT)
    assert "ftctl doctor" not in report.message


def test_a_controller_that_does_not_answer_names_slurm_conf(no_controller, tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    (no_controller / "squeue.err").write_text(
        "squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    )
    with pytest.raises(FtctlError) as e:
        scheduler.status("12")
    assert str(e.value).startswith(
        "the Slurm controller does not answer (slurm_load_jobs error: Unable to contact slurm controller "
        f"(connect failure); SLURM_CONF={conf}): slurmctld is down or restarting, or this host cannot reach it"
    )
    conf = tmp_path / "two.conf"  # the answer of the first is remembered for a while (by SLURM_CONF)
    conf.write_text("SlurmctldHost=ctl1(10.0.0.1)\nSlurmctldHost=ctl2\nSlurmctldPort=7000 # a comment\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(FtctlError, match=r"^the Slurm controller at ctl1:7000 \(10.0.0.1\), ctl2:7000 does not answer"):
        scheduler.status("13")


@pytest.mark.parametrize("controller", ["no slurm.conf", "down"])
def test_a_dry_run_that_cannot_reach_the_controller_says_the_partition_was_not_checked(
    controller, no_controller, tmp_path, monkeypatch, capsys
):
    """With Slurm's commands here but no controller answering (no SLURM_CONF on a machine with slurm-client, or
    slurmctld down), a dry run said nothing of the partition it could not check: that was said only where sinfo is
    missing. It is said once, with why; a controller that answers gives no such note."""
    if controller == "down":
        conf = tmp_path / "slurm.conf"
        conf.write_text("SlurmctldHost=ctl(10.0.0.1)\n")
        monkeypatch.setenv("SLURM_CONF", str(conf))
        _script(no_controller / "scontrol", "echo 'Slurmctld(primary) at ctl is DOWN'")
        (no_controller / "sinfo.err").write_text(
            "sinfo: error: slurm_load_partitions: Unable to contact slurm controller (connect failure)\n"
        )
    spec = make_spec(
        backend="slurm", gpus="cpu", partition="cpu", model_name_or_path=MODEL, output_dir=str(tmp_path / "run")
    )
    launch(spec, dry_run=True)
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "not checked" in line]
    assert len(said) == 1, err
    assert said[0].startswith(
        "note: partition cpu's nodes, GPUs, CPUs, memory and time limit were not checked: "
        + ("sinfo could not reach the Slurm controller" if controller != "down" else "the Slurm controller at ctl")
    ), said


def test_a_dry_run_the_cluster_answered_says_nothing_was_left_unchecked(cluster, tmp_path, capsys):
    spec = make_spec(
        backend="slurm", gpus="cpu", partition="cpu", model_name_or_path=MODEL, output_dir=str(tmp_path / "run")
    )
    launch(spec, dry_run=True)
    assert "not checked" not in capsys.readouterr().err


def test_an_unknown_partition_is_refused_naming_the_clusters(cluster, tmp_path, capsys):
    """sbatch refused it only after the launch wrote its files, and a dry run said nothing and exited 0."""
    msg = _refused(gpus="cpu", partition="cpuu")
    assert (
        "no partition 'cpuu' on this cluster (its partitions: cpu, gpu, small, mixed, untyped): pass --partition cpu"
        in msg
    )
    spec = make_spec(
        backend="slurm", gpus="cpu", partition="nosuch", model_name_or_path=MODEL, output_dir=str(tmp_path / "r")
    )
    with pytest.raises(FtctlError, match="the launch would stop at the 1 error"):
        launch(spec, dry_run=True)
    assert (
        "no partition 'nosuch' on this cluster (its partitions: cpu, gpu, small, mixed, untyped): pass --partition NAME"
        in capsys.readouterr().err
    )
    # one sinfo lists only with --all (Hidden=YES) is left to sbatch
    (cluster / "sinfo").write_text(
        f'#!/bin/sh\ncase "$*" in *--all*) echo hush ;; *) cat {cluster / "sinfo.out"} ;; esac\n'
    )
    _checked(gpus="cpu", partition="hush")


def test_a_path_python_without_ftctl_is_refused_before_the_queue_wait(cluster, tmp_path):
    """`.venv/bin/ftctl launch` without activating the venv: the job ran python3 of the exported PATH, which had
    no ftctl, and failed on its node after the queue wait. Refused at submit with how to fix it; a setup line
    (which may activate an environment) or a container is left to do its work."""
    from ftctl.slurm.backend import SlurmBackend

    (cluster / "python3").write_text("#!/bin/sh\nexit 1\n")  # first on PATH: a python3 without ftctl
    (cluster / "python3").chmod(0o755)
    flags = dict(
        backend="slurm", gpus="cpu", model_name_or_path="org/m", model_params="1b", output_dir=str(tmp_path / "o")
    )
    rendered = prepared(**flags)
    with pytest.raises(FtctlError) as e:
        SlurmBackend().check(rendered)
    assert str(e.value).startswith(f"the job runs python3 of this shell's PATH ({cluster}/python3), which lacks")
    assert f"source {VENV_BIN}/activate" in str(e.value)
    SlurmBackend().check(prepared(["setup=module load py"], **flags))
    (cluster / "python3").unlink()  # the venv's python3 next on PATH: the environment activated
    SlurmBackend().check(rendered)
