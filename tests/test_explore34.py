"""A university user's first day with ftctl on Slurm (helper 146, /work/notes/explore34-slurm-first-day.md): what the
real 2-node test cluster showed them that was wrong or unclear, each fixed here with fake Slurm commands.

- data (not the run dir) on /tmp was said as "the job fails to start (JobLaunchFailure)", with --output as a fix;
- --sbatch-arg=--mem=64G above every node reached sbatch, whose refusal named no option ("Requested node
  configuration is not available ... --gpus cpu asks for no GPU");
- `-o setup='module load ...'` / `conda activate` from a shell that has neither failed only after the queue wait;
- the --mem comment of a 100K-parameter model said "the 0M model's weights"."""

from __future__ import annotations

import pytest

from ftctl.backend import get, launch
from ftctl.errors import FtctlError
from ftctl.slurm import render as slurm_render
from tests.render_fixtures import make_spec, prepared
from tests.test_slurm_batch135 import LLAMA_8B, SINFO, cluster  # noqa: F401 (the fake cluster fixture)


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]


def test_data_on_tmp_says_what_the_trainer_does_and_the_flag_that_moves_it(cluster, capsys, tmp_path):  # noqa: F811
    data = tmp_path / "rows.jsonl"  # pytest's tmp_path: under /tmp
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    spec = make_spec(
        backend="slurm", gpus="2xA100", model_name_or_path=LLAMA_8B, output_dir="/o", data_path=[str(data)]
    )
    launch(spec, dry_run=True)
    (line,) = [w for w in _warnings(capsys) if "do not see" in w]
    assert line == (
        f"warning: {data} (the data) is on this machine's /tmp: the job's nodes do not see it where they are other "
        "machines, and the trainer cannot read the data. Put it on a filesystem the nodes share (home, project or "
        "scratch space): --data PATH."
    )


@pytest.mark.parametrize(
    ("arg", "said"),
    [
        ("--mem=2000G", "--sbatch-arg=--mem=2000G is more than partition 'gpu' has: at most 1000 GiB a node; "),
        ("--mem-per-cpu=64G", "--sbatch-arg=--mem-per-cpu=64G (4096 GiB a node) is more than partition 'gpu' has"),
    ],
)
def test_the_users_own_mem_above_every_node_is_refused_naming_it(cluster, arg, said):  # noqa: F811
    rendered = prepared(backend="slurm", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o", sbatch_args=[arg])
    with pytest.raises(FtctlError) as e:
        get("slurm").check(rendered)
    assert said in str(e.value) and "leave it out (ftctl then asks for what the plan needs" in str(e.value)
    fits = prepared(
        backend="slurm", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o", sbatch_args=["--mem=0"]
    )
    get("slurm").check(fits)  # --mem=0: all of a node's


def test_setup_lines_that_fail_in_the_job_are_said_at_launch(cluster, capsys, monkeypatch):  # noqa: F811
    def doubts(*lines, **env):
        return slurm_render.setup_doubts(make_spec(backend="slurm", setup=list(lines)), {"PATH": "/nowhere", **env})

    (said,) = doubts("module load cuda/12.1")
    assert said.startswith("setup line 'module load cuda/12.1': this shell has no `module` command") and (
        "--setup 'source /etc/profile.d/lmod.sh'" in said
    )
    assert not doubts("module load cuda/12.1", MODULESHOME="/usr/share/modules")
    assert not doubts("module load cuda/12.1", LMOD_CMD="/opt/lmod/libexec/lmod")
    (said,) = doubts("conda activate myenv")
    assert "no conda here (CONDA_EXE unset, no conda on PATH)" in said and "profile.d/conda.sh" in said
    assert not doubts("conda activate myenv", CONDA_EXE="/opt/conda/bin/conda")
    (said,) = doubts("source /nowhere/miniconda3/etc/profile.d/conda.sh", "conda activate x", "module load y")
    assert said.startswith("setup line 'source /nowhere/miniconda3/etc/profile.d/conda.sh': /nowhere/miniconda3/")
    assert not doubts("source /etc/profile", "module load y")  # the user's own init, then module: theirs to know
    # said by the launch and its dry run, not refused
    for name in ("LMOD_CMD", "MODULESHOME", "BASH_FUNC_module%%"):
        monkeypatch.delenv(name, raising=False)
    spec = make_spec(
        backend="slurm", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o", setup=["module load x"]
    )
    launch(spec, dry_run=True)
    assert any(w.startswith("warning: setup line 'module load x': this shell has no") for w in _warnings(capsys))


def test_the_mem_comment_says_a_small_models_size():
    assert [slurm_render._b(p) for p in (8.03, 0.135, 1e-4)] == ["8.0B", "135M", "100K"]
    load = slurm_render.load_memory_gb(
        prepared(["model_params=100k"], backend="slurm", gpus="1xA100", model_name_or_path="x/y", output_dir="/o").plan
    )
    assert "each loads the 100K model's bf16 weights" in load[1]


def test_a_gpu_job_whose_python_has_a_cpu_only_torch_is_said_at_launch(cluster, capsys, monkeypatch):  # noqa: F811
    """No container, no setup: the job runs this shell's python3; its torch was a CPU-only build and the GPU job
    stopped on its node after the queue wait ("torch sees no CUDA GPU here")."""
    import torch

    from ftctl.slurm import backend as slurm_backend

    found, probed = slurm_backend._probe_path_python()  # this venv's python3 (the cluster fixture's PATH)
    gpu = torch.version.cuda or torch.version.hip
    assert probed == f"{torch.__version__} {'gpu' if gpu else 'cpu'}"
    spec = make_spec(backend="slurm", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o")
    for build, said in (("2.6.0+cpu cpu", True), ("2.6.0+cu126 gpu", False)):
        monkeypatch.setattr(slurm_backend, "_probe_path_python", lambda build=build: (found, build))
        launch(spec, dry_run=True)
        lines = [w for w in _warnings(capsys) if "CPU-only build" in w]
        assert bool(lines) == said
    monkeypatch.setattr(slurm_backend, "_probe_path_python", lambda: (found, "2.6.0+cpu cpu"))
    launch(
        make_spec(["model_params=100m"], backend="slurm", gpus="cpu", model_name_or_path="x/y", output_dir="/o"),
        dry_run=True,
    )
    assert not [w for w in _warnings(capsys) if "CPU-only build" in w]  # a CPU plan: what it needs
