"""What SkyPilot would refuse late, or ignore, is settled before a task is rendered (ftctl/sky/render.py settle):
one infra, the node's disk sized for the run, a managed job's restarts after its own failures, and every option
a managed job would ignore refused. Unit-level: specs prepared in-process, no SkyPilot (test_sky_yaml.py has the
real SkyPilot read the rendered tasks)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.lease import UNREACHED_EXIT
from ftctl.preflight import checkpoint_gb
from ftctl.sky import render as sky_render
from tests.render_fixtures import prepared, sky_python, write_model_config

MODEL = "meta-llama/Llama-3.1-8B"


def sky(overrides=(), **flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(list(overrides), **{**args, **flags})


def resources(prep) -> dict:
    return yaml.safe_load(prep.text.split("\n", 1)[1])["resources"]


# ------------------------------------------------------------------------------------------ job_recovery
def test_a_managed_job_is_not_restarted_after_its_own_failure_unless_asked():
    """Preemptions are recovered by SkyPilot whatever max_restarts_on_errors says; a failure of the job itself
    (bad data, missing credentials, out of memory) would recur, so none is retried by default; a trainer that stopped
    because its lease's renewals did not reach the store (UNREACHED_EXIT) is recovered as a preemption is."""
    assert resources(sky(spot=True))["job_recovery"] == {
        "strategy": "EAGER_NEXT_REGION",
        "max_restarts_on_errors": 0,
        "recover_on_exit_codes": [UNREACHED_EXIT],
    }
    for n in (0, 3):
        prep = sky([f"max_requeues={n}"], spot=True)  # `-o max_requeues=0 --spot` was refused as a Slurm key
        assert resources(prep)["job_recovery"]["max_restarts_on_errors"] == n
        assert prep.spec.max_requeues == n  # spec.json says what the task does
    with pytest.raises(FtctlError, match=r"max_requeues must be 0 \(never requeue\) or more, not -1"):
        sky(["max_requeues=-1"], spot=True)


def test_max_requeues_on_a_cluster_job_is_refused_not_ignored():
    with pytest.raises(FtctlError, match=r"max_requeues=2 bounds a managed job's restarts.*add --spot"):
        sky(["max_requeues=2"])


# ------------------------------------------------------------------------------------------ disk
def test_the_disk_holds_the_model_the_staged_checkpoints_and_the_final_model():
    """8B fft on 8xA100 stages save_total_limit + 1 checkpoints of ~128 GB (the next is written before the oldest is
    deleted; at the end the final model beside them, smaller: preflight.disk_need) and the download: more than
    SkyPilot's 256 GB default."""
    prep = sky(method="fft")
    one, final = checkpoint_gb(prep.plan)
    assert one > 90
    need = sky_render.disk_needed_gib(prep.spec, prep.plan)
    assert need * 2**30 / 1e9 > 4 * one + 16 > 3 * one + final + 16  # GiB, SkyPilot's unit
    size = resources(prep)["disk_size"]
    assert size == prep.spec.disk_size and size >= need and size % 64 == 0 and size < need + 64
    # a held-out set keeps the best checkpoint too; fewer kept, a smaller disk; never below 256
    assert resources(sky(["eval_split=0.05", "save_total_limit=1"], method="fft"))["disk_size"] < size
    assert resources(sky())["disk_size"] == 256


def test_a_disk_too_small_for_the_run_is_refused_with_the_size_it_needs():
    with pytest.raises(
        FtctlError, match=r"disk_size=300 \(GiB, SkyPilot's unit\) is too small for fft .* -o disk_size=640, or lower"
    ):
        sky(["disk_size=300"], method="fft")
    assert resources(sky(["disk_size=1024"], method="fft"))["disk_size"] == 1024


def test_a_disk_refusal_says_every_size_in_the_one_unit_it_names():
    """It said "a node stages ~609 GB" (GiB, SkyPilot's disk_size unit) beside "checkpoints of ~128 GB" (1e9 B, the
    plan's): each size is GiB now, named so, and the parts add up to the total."""
    prep = sky(method="fft")
    with pytest.raises(FtctlError) as e:
        sky(["disk_size=300"], method="fft")
    said = str(e.value)
    one, _ = checkpoint_gb(prep.plan)
    need = sky_render.disk_needed_gib(prep.spec, prep.plan)
    m = re.search(r"a node stages ~(\d+) GiB \((.*?)\): ", said)
    assert m and int(m[1]) == round(need) and " GB" not in said, said
    parts = [int(n) for n in re.findall(r"~(\d+) for ", m[2])]
    assert len(parts) == 3 and abs(sum(parts) - need) <= 2, said
    assert f"checkpoints of ~{one * 1e9 / 2**30:.0f} each: 3 checkpoints and the next one" in m[2], said
    assert f"~{one:.0f}" not in said, said


# ------------------------------------------------------------------------------------------ infra
@pytest.mark.parametrize(
    "flags,overrides,infra",
    [
        ({"infra": "gcp"}, ["region=us-east1"], "gcp/us-east1"),
        ({}, ["cloud=gcp", "region=us-east1"], "gcp/us-east1"),
        ({}, ["cloud=aws"], "aws"),
        ({"infra": "aws/us-east-1"}, ["cloud=AWS", "region=us-east-1"], "aws/us-east-1"),
        ({"infra": "aws/us-east-1/us-east-1a"}, ["region=us-east-1"], "aws/us-east-1/us-east-1a"),
        ({"infra": "k8s/my/context"}, ["cloud=kubernetes", "region=my/context"], "k8s/my/context"),
        ({"infra": "slurm/cluster1"}, [], "slurm/cluster1"),
    ],
)
def test_cloud_and_region_are_folded_into_one_infra(flags, overrides, infra):
    """SkyPilot 0.14 refuses a task with both infra and cloud/region ("Cannot specify both infra and cloud")."""
    prep = sky(overrides, **flags)
    res = resources(prep)
    assert res["infra"] == infra and "cloud" not in res and "region" not in res
    assert (prep.spec.infra, prep.spec.cloud, prep.spec.region) == (infra, None, None)


@pytest.mark.parametrize(
    "flags,overrides,said",
    [
        ({"infra": "aws"}, ["cloud=gcp"], "--infra aws and -o cloud=gcp name two clouds: drop -o cloud"),
        ({"infra": "gcp/us-central1"}, ["region=us-east1"], "name two regions: give the region in --infra"),
        ({"infra": "awss"}, [], "--infra awss: SkyPilot 0.14 knows no cloud 'awss'. Did you mean 'aws'?"),
        ({}, ["cloud=gcpp"], "-o cloud=gcpp: SkyPilot 0.14 knows no cloud 'gcpp'. Did you mean 'gcp'?"),
        ({}, ["cloud=zzz"], "SkyPilot's: aws, azure,"),
        ({}, ["region=us-east1"], "-o region=us-east1 needs its cloud: --infra gcp/us-east1"),
        ({}, ["region=us-east-1"], "-o region=us-east-1 needs its cloud: --infra aws/us-east-1"),  # AWS's spelling
        ({}, ["region=westeurope"], "-o region=westeurope needs its cloud: --infra azure/westeurope"),
    ],
)
def test_contradicting_or_unknown_clouds_are_refused_in_one_line(flags, overrides, said):
    with pytest.raises(FtctlError) as e:
        sky(overrides, **flags)
    assert said in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ ignored options
def test_what_a_managed_job_would_ignore_is_refused_all_at_once():
    with pytest.raises(FtctlError) as e:
        sky(["idle_minutes=10"], spot=True, cluster="dev", down=True)
    said = str(e.value)
    assert said.startswith("3 problems with the SkyPilot options:")
    assert "--cluster dev: --spot runs a managed job" in said and "-o run_name=NAME names the job" in said
    assert "--down: --spot" in said and "-o idle_minutes=10: --spot" in said


def test_a_managed_job_that_would_refuse_its_own_checkpoints_after_recovery_is_refused():
    """--spot with resume=never: the recovered task's trainer would find the checkpoints the job saved before it was
    preempted and stop, as for another run's."""
    with pytest.raises(FtctlError, match=r"resume=never with --spot: a recovered job .* use resume=auto"):
        sky(["resume=never"], spot=True)
    assert sky(["resume=auto"], spot=True)


def test_an_idle_autostop_that_would_never_happen_is_refused():
    with pytest.raises(FtctlError, match="idle_minutes=10 with --down"):
        sky(["idle_minutes=10"], down=True)
    with pytest.raises(FtctlError, match="no idle autostop on --infra slurm/c"):
        sky(["idle_minutes=10"], infra="slurm/c", gpus="cpu", model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    assert sky(["idle_minutes=10"]).spec.idle_minutes == 10


@pytest.mark.parametrize("infra", ["k8s", "kubernetes/ctx", "ssh/pool", "slurm/c"])
def test_no_autostop_is_asked_of_an_infra_without_one(infra):
    """Kubernetes and SSH node pools have no autostop in SkyPilot 0.14 (clouds/kubernetes.py): a launch that asked
    for the default 30 idle minutes was refused there, whatever the run. Their clusters stay up until ftctl down."""
    from ftctl.sky.render import autostop_minutes

    prep = sky(infra=infra, gpus="cpu", model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    assert autostop_minutes(prep.spec) is None
    assert autostop_minutes(sky().spec) == 30  # a cloud's


# ------------------------------------------------------------------------------------------ container
def test_a_container_skypilot_cannot_run_points_at_its_docker_form_or_says_there_is_none():
    with pytest.raises(FtctlError) as e:
        sky(container="apptainer:x.sif")
    assert "docker:x.sif" not in str(e.value) and "ftctl build --push" in str(e.value)
    with pytest.raises(FtctlError, match="give --container docker:ghcr.io/a/b:1"):
        sky(container="apptainer:docker://ghcr.io/a/b:1")
    with pytest.raises(FtctlError, match="give --container docker:nvcr.io/nvidia/pytorch:24.07-py3"):
        sky(container="pyxis:nvcr.io#nvidia/pytorch:24.07-py3")


# ------------------------------------------------------------------------------------------ beside ftctl/sky
def test_a_value_given_equal_to_the_old_default_is_taken_as_given():
    assert resources(sky(["max_requeues=5"], spot=True))["job_recovery"]["max_restarts_on_errors"] == 5
    with pytest.raises(FtctlError, match=r"disk_size=256 \(GiB, SkyPilot's unit\) is too small"):
        sky(["disk_size=256"], method="fft")


def test_keys_sky_lists_every_sky_key():
    out = CliRunner().invoke(main, ["keys", "sky"]).output
    assert all(f"  {k} = " in out for k in ("region", "disk_size", "down", "idle_minutes"))


def test_the_nearest_plans_do_not_carry_the_host_memory_to_other_machines():
    """-o host_memory_gb is the RAM of the machines asked for: a plan on other GPUs takes theirs (on SkyPilot, a VM
    picked for the RAM the plan asks for)."""

    def nearest_fft(*overrides) -> str:
        with pytest.raises(FtctlError) as e:
            sky(overrides, method="fft", model_name_or_path="meta-llama/Llama-3.1-70B")
        return re.search(r"--gpus \S+ --method fft", str(e.value)).group(0)

    assert nearest_fft("host_memory_gb=1800") == nearest_fft("host_memory_gb=730")  # a2-highgpu-8g's 680 GiB


def test_an_offload_plan_on_skypilot_is_bounded_by_no_assumed_ram():
    """The node's RAM where the run does not give it was taken as 2x its GPUs' memory, and 8B fft on one H100
    (ZeRO-Offload's 172 GB) refused though single-H100 VMs have 200-320 GB: SkyPilot picks a VM by the task's
    memory: (tests/test_sky_cost.py: or says none has it). Slurm's nodes are still assumed to have 2x."""
    args = dict(method="fft", gpus="1xH100", model_name_or_path="meta-llama/Llama-3.1-8B")
    r = sky(**args)
    assert r.plan.strategy == "zero2_offload" and r.plan.host_memory_gb == pytest.approx(172.2, abs=0.1)
    assert resources(r)["memory"] == "161+"  # GiB
    said = "host memory: the offload needs 172 GB of RAM a node: SkyPilot picks a VM with that much (memory:)"
    assert said in r.plan.notes and not any("assumed" in n for n in r.plan.notes), r.plan.notes
    with pytest.raises(FtctlError, match=r"which has 160 GB assumed, 2x its GPUs' memory \(-o host_memory_gb=173 "):
        prepared(backend="slurm", output_dir="/fixed/out", **args)


# ------------------------------------------------------------------------------------------ local inputs
def _model(root: Path, size: int = 0) -> Path:
    """A model directory here (Llama-3.2-1B's config) whose weights file has ``size`` bytes (sparse)."""
    model = write_model_config(root / "my-model")
    with (model / "model.safetensors").open("wb") as f:
        f.truncate(size)
    return model


def test_the_output_must_be_an_object_store_and_a_model_uri_is_told_what_loads(tmp_path):
    """The inputs ship; the output cannot (the machines' disks go with them). A --model URI loads nowhere: the
    refusal names what does (a directory here, shipped; a Hub id), not another URI."""
    with pytest.raises(FtctlError, match=r"--output '/tmp/x' is a local path: .* give --output an object-store URI"):
        sky(output_dir="/tmp/x")
    with pytest.raises(FtctlError, match=r"^without --output the run goes to 'runs/.*': on --backend sky"):
        sky(output_dir=None)  # it blamed an --output the user never gave
    with pytest.raises(FtctlError) as e:
        sky(model_name_or_path="s3://b/m", model_params="1b")
    said = str(e.value)
    assert "ships a local model directory" in said and "--secret HF_TOKEN" in said and "object-store" not in said
    with pytest.raises(FtctlError, match=r"--data 'nothere.jsonl' is a local path that is no file or directory here"):
        sky(data_path="nothere.jsonl")


def test_inputs_skypilot_would_not_ship_intact_are_refused_all_at_once(tmp_path):
    """SkyPilot 0.14 quotes a file_mounts source as Python's repr into a shell line (a path with ' and $ runs what
    follows the $), substitutes the task's envs into it, and copies symbolic links as links."""
    bad = [tmp_path / "o'brien $(touch PWNED)", tmp_path / "back\\slash", tmp_path / "x$TOKENIZERS_PARALLELISM"]
    for p in bad:
        p.mkdir()
        (p / "a.jsonl").write_text("{}\n")
    linked = _model(tmp_path)
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc")
    with pytest.raises(FtctlError) as e:
        sky(data_path=[str(p) for p in bad], model_name_or_path=str(linked))
    said = str(e.value)
    assert said.startswith("4 local inputs SkyPilot would not ship intact:"), said
    assert "o'brien" in said and "back\\\\slash" in said and "replaces $TOKENIZERS_PARALLELISM" in said
    assert "holds symbolic links ('model.safetensors')" in said and "--local-dir" in said
    assert not list(tmp_path.rglob("PWNED"))


def test_a_shipped_directory_lands_anew_once_its_files_change(tmp_path):
    """SkyPilot's rsync keeps in a reused cluster's copy what the directory no longer holds: another name then."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        (data / f"{name}.jsonl").write_text("{}\n")

    def on_node() -> str:
        return json.loads(sky(data_path=str(data)).files["spec.json"])["spec"]["data_path"]

    before = on_node()
    assert on_node() == before and before.endswith("-data")
    (data / "b.jsonl").unlink()
    assert on_node() != before


def test_the_shipped_model_is_sized_once_with_how_it_travels(tmp_path, monkeypatch, capsys):
    """A model directory can be many GB: the task says how big and how it travels (to each node; a managed job's
    through SkyPilot's jobs controller), and so does launch."""
    from ftctl.sky import bridge
    from ftctl.sky.backend import SkyBackend

    model = _model(tmp_path, 15 * 2**30)
    (tmp_path / "chats.jsonl").write_text("{}\n")
    args = dict(gpus="2x8xA100", model_name_or_path=str(model), data_path=str(tmp_path / "chats.jsonl"))
    note = sky(**args).text.splitlines()[1]
    assert note.startswith("# file_mounts: 2 local input(s), 15.0 GiB, the --model directory 15.0 GiB: ")
    assert "copies them to each of the 2 nodes at launch" in note and "--secret HF_TOKEN" in note
    assert "jobs controller" in sky(**args, spot=True).text.splitlines()[1]

    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(
        bridge, "call", lambda op, **kw: calls.append(kw) or {"managed": False, "job_id": 3, "cluster": "dev"}
    )
    SkyBackend().send(sky(**args, cluster="dev"))
    assert calls[0]["cluster"] == "dev" and "reuse" not in calls[0]  # sky.launch, up or not: setup runs
    err = capsys.readouterr().err
    assert note.removeprefix("# ") in err
    # what the task YAML does not hold, said as it is sent: the workdir, and the idle autostop
    (said,) = [line for line in err.splitlines() if line.startswith("with the task, through SkyPilot's SDK: ")]
    assert f"workdir {calls[0]['workdir']} (ftctl's source)" in said and f"{calls[0]['idle_minutes']} idle" in said
    SkyBackend().send(sky(cluster="dev", down=True))  # --down on an up cluster: sky.launch sets its autodown
    assert calls[1]["down"] is True


def test_doctor_names_the_sky_command_that_exists_here():
    """SkyPilot in a venv of its own (.venv-sky) is not on PATH: the fix says that venv's `sky`, not a bare one."""
    from tests.render_fixtures import REPO, sky_python

    ask = [sky_python(), "-c", "from ftctl.sky.sdk import sky_cli; print(sky_cli())"]
    sky_bin = Path(sky_python()).parent
    apart = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    assert subprocess.run(ask, env=apart, capture_output=True, text=True).stdout.strip() == str(sky_bin / "sky")
    on_path = {**apart, "PATH": f"{sky_bin}:/usr/bin:/bin"}
    assert subprocess.run(ask, env=on_path, capture_output=True, text=True).stdout.strip() == "sky"


def test_a_relaunch_with_shipped_inputs_is_checked_as_its_nodes_read_it(tmp_path, s3_bucket, monkeypatch, capsys):
    """The nodes' spec.json names the shipped copy of a local --data (./inputs/...), and so do the checkpoints'
    recorded settings: the relaunch's preflight compares those, or the same launch again reads as other data."""
    from ftctl import backend
    from ftctl.checkpoints import push, write_manifest
    from ftctl.checkpoints.settings import settings
    from ftctl.sky.backend import SkyBackend
    from ftctl.spec import RunSpec, build

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(SkyBackend, "estimate", lambda self, spec, plan: None)  # SkyPilot's optimizer: not asked
    data = tmp_path / "chats.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    values = dict(backend="sky", method="lora", gpus="1xL4", model_name_or_path=MODEL, data_path=str(data))
    spec = build({**values, "output_dir": f"{s3_bucket}/run"})
    rendered = backend.prepare(spec)
    node = RunSpec(**json.loads(rendered.files["spec.json"])["spec"])
    assert node.data_path.startswith("./inputs/")
    ckpt = tmp_path / "stage" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 100}))
    write_manifest(str(ckpt), 4, 1, node.digest(), settings=settings(node, rendered.plan))
    push(str(tmp_path / "stage"), f"{s3_bucket}/run", echo=lambda *_: None)
    assert backend.launch(spec, dry_run=True) is None  # no error: the same launch again resumes
    assert "names other data" not in capsys.readouterr().err


def test_spot_on_a_slurm_cluster_is_a_managed_job_on_its_gpus():
    """Slurm has no spot instances (SkyPilot refuses use_spot there): --spot with GPUs on --infra slurm asked for
    them and was refused at launch. It runs a managed job, recovered after a preemption, on the cluster's GPUs."""
    prep = sky(infra="slurm/c", gpus="1xH100", spot=True)
    assert resources(prep)["use_spot"] is False and "job_recovery" in resources(prep)
    assert resources(sky(gpus="1xH100", spot=True))["use_spot"] is True  # a cloud's


def _flags_aside(text: str) -> str:
    """A task's text with the spec.json line's echo of --spot / --managed left out."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith('{"plan":'):
            payload = json.loads(line)
            assert {payload["spec"].pop("spot"), payload["spec"].pop("managed")} == {True, False}
            lines[i] = json.dumps(payload)
    return "\n".join(lines)


@pytest.mark.parametrize("gpus", ["1xH100", "cpu"])
def test_spot_and_managed_send_one_task_to_a_slurm_cluster(gpus):
    """tests/test_sky_launch.py launches its real managed job with --managed, on the tests' Slurm cluster: there
    --spot is the same managed job (Slurm has no spot market), so that launch stands for --spot's too. The tasks
    differ only in spec.json's echo of the flag, which nothing on the nodes reads, and SkyPilot's optimizer is asked
    the same (it priced --spot there as spot). On a cloud --spot asks for spot instances and --managed does not."""
    from ftctl.sky import backend as sky_backend

    model = MODEL if gpus != "cpu" else "HuggingFaceTB/SmolLM2-135M"
    spot, managed = (
        sky(infra="slurm/c", gpus=gpus, model_name_or_path=model, **{f: True}) for f in ("spot", "managed")
    )
    assert spot.spec.managed_job and managed.spec.managed_job
    assert spot.text != managed.text and _flags_aside(spot.text) == _flags_aside(managed.text)
    if gpus != "cpu":  # a GPU plan is priced (a CPU one is not)
        asked = [sky_render.optimizer_resources(p.spec, p.plan) for p in (spot, managed)]
        assert asked[0] == asked[1] and asked[0]["use_spot"] is resources(spot)["use_spot"] is False
        on_a_cloud = sky(gpus=gpus, spot=True)
        assert sky_render.optimizer_resources(on_a_cloud.spec, on_a_cloud.plan)["use_spot"] is True
        assert (
            resources(on_a_cloud)["use_spot"] is True and resources(sky(gpus=gpus, managed=True))["use_spot"] is False
        )
    # the nodes' code (all but the launching side's) reads neither flag; preflight's check_session_credentials says, at
    # launch, that a managed job's recovery starts with the launch's AWS credentials (the nodes ask check_model alone)
    launching = {"spec.py", "cli.py", "backend.py", "render.py", "cost.py", "inputs.py", "preflight.py"}
    package = Path(sky_backend.__file__).parents[1]
    for path in package.rglob("*.py"):
        if path.name not in launching or path.parent.name not in ("ftctl", "sky"):
            assert not re.search(r"\.(spot|managed|managed_job)\b", path.read_text()), path


def _skypilot_leaves_out(path: Path) -> list[str]:
    """What SkyPilot itself (its installed 0.14) leaves out of a directory it ships."""
    code = "import sys, json; from sky.data import storage_utils as s; print(json.dumps(s.get_excluded_files(sys.argv[1])))"
    out = subprocess.run([sky_python(), "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_what_a_git_repository_ignores_is_not_left_out_unsaid(tmp_path):
    """A managed job's upload leaves out what the git repository around a shipped directory ignores: a project's
    `*.safetensors` took the model's weights, its `checkpoints/` took ftctl's own source package (the run dir, src/
    included, is made inside the project). The input is refused with the fix; ftctl's source holds a .skyignore."""
    from ftctl.sky.backend import stage_source
    from ftctl.sky.inputs import SKYIGNORE, git_ignored

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.safetensors\ncheckpoints/\n")
    model = _model(tmp_path, size=16)
    assert git_ignored(str(model)) == _skypilot_leaves_out(model) == ["model.safetensors"]
    with pytest.raises(
        FtctlError, match=r"--model '.*my-model' is in a git repository that ignores 'model.safetensors'"
    ):
        sky(model_name_or_path=str(model))
    # what `hf download --local-dir` keeps beside the files, ignoring itself, is no loss
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    (model / ".cache" / "huggingface" / "download").mkdir()
    assert git_ignored(str(model)) == ["model.safetensors"]
    (model / SKYIGNORE).write_text("")  # the fix the message gives
    assert sky(model_name_or_path=str(model)) and _skypilot_leaves_out(model) == []

    src = stage_source(tmp_path / "runs" / "r" / "src")
    assert (src / "ftctl" / "checkpoints").is_dir() and _skypilot_leaves_out(src) == []


def test_a_key_given_at_its_default_is_given():
    """`-o idle_minutes=30 --down` (30 is the default): the user asked for an autostop that --down makes moot, as at
    any other value; before, a value equal to the default read as unset and the contradiction passed silently."""
    with pytest.raises(FtctlError, match="idle_minutes=30 with --down"):
        sky(["idle_minutes=30"], down=True)
    assert sky([], down=True).spec.down
