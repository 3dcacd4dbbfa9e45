"""What a Slurm job writes into the launching user's home, said before the queue wait (helper 242, explore48): a
cluster's home has a quota (NERSC 40 GB, Compute Canada 50 GB) that the output's free-space check (statfs: the whole
filesystem's) does not see, and an 8B fft's 514 GB of checkpoints, or a 70B model's download into ~/.cache, stopped on
'Disk quota exceeded' after the queue wait. Plans only, no cluster."""

from __future__ import annotations

from ftctl.slurm.backend import HOME_QUOTA_GB, home_quota_doubt
from tests.render_fixtures import prepared


def _plan(home, output, method="fft", model="meta-llama/Llama-3.1-8B", gpus="2x8xA100"):
    r = prepared(["max_steps=6000"], backend="slurm", method=method, gpus=gpus, model_name_or_path=model,
                 output_dir=str(output))  # fmt: skip
    return r.spec, r.plan


def test_checkpoints_beyond_a_homes_quota_are_said_with_where_to_put_them(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "scratch" / "hf"))  # the model's cache is elsewhere
    said = home_quota_doubt(*_plan(home, home / "runs" / "r8"), home=str(home))
    assert said.startswith("3 checkpoints and the next one (written before the oldest is deleted) need ~513.9 GB in ")
    assert f": that is your home ({home}), whose quota on a cluster is often 10-50 GB, " in said
    assert said.endswith("'Disk quota exceeded' after the queue wait: --output DIR on project or scratch space.")
    assert home_quota_doubt(*_plan(home, tmp_path / "scratch" / "r8"), home=str(home)) is None  # not in the home
    assert home_quota_doubt(*_plan(home, home / "r", method="lora"), home=str(home)) is None  # adapters: ~2 GB
    assert home_quota_doubt(*_plan(home, "s3://b/r8"), home=str(home)) is None
    assert home_quota_doubt(*_plan(home, "/r8"), home="/") is None  # HOME=/: no home of its own


def test_a_large_models_download_into_a_cache_in_the_home_is_said(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec, plan = _plan(home, tmp_path / "scratch" / "r", method="lora", model="meta-llama/Llama-3.1-70B")
    assert 2 * plan.model.params_b > HOME_QUOTA_GB
    said = home_quota_doubt(spec, plan, home=str(home))
    assert said.startswith(f"its model downloads (~141.2 GB) into the Hugging Face cache {home}/.cache/huggingface/hub")
    assert said.endswith("after the queue wait: export HF_HOME=DIR there.")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "scratch" / "hub"))  # the hub's cache moved out
    assert home_quota_doubt(spec, plan, home=str(home)) is None
    monkeypatch.delenv("HF_HUB_CACHE")
    assert home_quota_doubt(*_plan(home, tmp_path / "o", method="lora"), home=str(home)) is None  # 8B: 16 GB


def test_launch_says_it_before_sbatch(tmp_path, monkeypatch, capsys):
    import sys

    from ftctl.backend import get

    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'gpu*|g1|idle|64|1024000|2-00:00:00|up|gpu:a100:8|g1'\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = prepared(["max_steps=6000", "setup=true"], backend="slurm", method="fft", gpus="8xA100",
                 model_name_or_path="meta-llama/Llama-3.1-8B", output_dir=str(tmp_path / "home" / "r"))  # fmt: skip
    capsys.readouterr()
    get("slurm").check(r)
    assert f"GB in --output {tmp_path}/home/r: that is your home ({tmp_path}/home)" in capsys.readouterr().err
