"""An apptainer:docker://REF container (ftctl's default for a pushed image where apptainer runs them) is said at a
Slurm launch (helper 242, explore48): apptainer asks the registry for it on every node of every attempt, even where
its cache holds the image (apptainer/singularity#3741), so nodes without internet fail after the queue wait, and each
node converts it to a SIF where its cache lacks it. A SIF pulled once does neither. No cluster."""

from __future__ import annotations

import sys

from ftctl.backend import get
from ftctl.slurm.backend import registry_image_note
from tests.render_fixtures import make_spec, prepared

REF = "docker://ghcr.io/org/ftctl:t"


def test_a_registrys_image_is_said_with_the_sif_to_pull_once(monkeypatch):
    monkeypatch.setenv("APPTAINER_CACHEDIR", "/scratch/u/apptainer")
    said = registry_image_note(make_spec(container=f"apptainer:{REF}"))
    assert said.startswith(f"--container apptainer:{REF}: apptainer asks the registry for it on every node of every ")
    assert "converts it to a SIF in /scratch/u/apptainer where that lacks it" in said
    assert f"(`apptainer pull ftctl.sif {REF}`) and give --container apptainer:PATH/ftctl.sif" in said
    for other in ("apptainer:/shared/ftctl.sif", "pyxis:ghcr.io/org/ftctl:t", "none"):
        assert registry_image_note(make_spec(container=other)) is None


def test_launch_says_it_before_sbatch(tmp_path, monkeypatch, capsys):
    (tmp_path / "sinfo").write_text("#!/bin/sh\necho 'gpu*|g1|idle|64|1024000|2-00:00:00|up|gpu:a100:8|g1'\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.delenv("APPTAINER_CACHEDIR", raising=False)
    r = prepared(backend="slurm", gpus="1xA100", model_name_or_path="meta-llama/Llama-3.2-1B",
                 output_dir="/fixed/o", container=f"apptainer:{REF}")  # fmt: skip
    capsys.readouterr()
    get("slurm").check(r)
    assert f"note: --container apptainer:{REF}: apptainer asks the registry" in capsys.readouterr().err
