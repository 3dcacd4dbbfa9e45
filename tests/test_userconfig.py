"""The user's config (ftctl/userconfig.py) and the image a run gets from it: what `ftctl build` records,
which record a backend picks (ftctl/docker/image.py, Backend.image), and the line that says so.

Every test has a config directory of its own (XDG_CONFIG_HOME, set by tests/conftest.py); the real
~/.config is never read or written.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from click.testing import CliRunner

from ftctl import __version__, userconfig
from ftctl.backend import get
from ftctl.cli import main
from ftctl.docker import build as image_build
from ftctl.docker import image
from ftctl.errors import FtctlError
from ftctl.slurm.render import pyxis_image
from tests.render_fixtures import prepared

PUSHED = "ghcr.io/my-org/ftctl:t-sm80"
TODAY = "2026-06-30"  # every record's date (the _fixed_date fixture): a suite run across midnight passes


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setattr(userconfig, "today", lambda: TODAY)


def _write(text: str) -> None:
    path = userconfig.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _prep(backend: str, gpus: str, **flags):
    out = "s3://b/o" if backend == "sky" else "/fixed/out"
    return prepared(backend=backend, gpus=gpus, model_name_or_path="meta-llama/Llama-3.1-8B", output_dir=out, **flags)


def test_the_config_lives_under_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert userconfig.config_path() == tmp_path / "ftctl" / "config.yaml"
    assert userconfig.load() == userconfig.UserConfig()  # no file: the defaults


# ------------------------------------------------------------------------------------------ record / read
def test_record_then_load_round_trips_newest_first():
    userconfig.record(PUSHED, "pushed", "A100")
    userconfig.record("/scratch/ftctl-t.sif", "sif", "H100")
    userconfig.record(PUSHED, "pushed", "A100,H100")  # the same image again: one record, now first
    cfg = userconfig.load()
    assert cfg.built == (
        userconfig.Built(PUSHED, "pushed", "A100,H100", __version__, TODAY),
        userconfig.Built("/scratch/ftctl-t.sif", "sif", "H100", __version__, TODAY),
    )
    assert (cfg.backend, cfg.image, cfg.slurm_container) == (None, None, "apptainer")
    assert [p.name for p in userconfig.config_path().parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_record_keeps_what_the_user_wrote_byte_for_byte():
    mine = "# my settings\nbackend: slurm   # the lab cluster\n\nslurm_container: pyxis\n"
    _write(mine)
    userconfig.record(PUSHED, "pushed", "A100")
    userconfig.record("/s/ftctl.sif", "sif", "A100")
    text = userconfig.config_path().read_text()
    assert text.startswith(mine)
    assert text.count("\nbuilt:") == 1 and text.count("# built: written by `ftctl build`") == 1
    cfg = userconfig.load()
    assert (cfg.backend, cfg.slurm_container) == ("slurm", "pyxis")
    assert [b.image for b in cfg.built] == ["/s/ftctl.sif", PUSHED]


def test_record_after_a_hand_edited_built_block_keeps_the_other_keys():
    _write(f"built:\n  - {{image: {PUSHED}, where: pushed, gpus: A100}}\nbackend: docker\n")
    userconfig.record("/s/ftctl.sif", "sif", "H100")
    raw = yaml.safe_load(userconfig.config_path().read_text())
    assert raw["backend"] == "docker"
    assert [b["image"] for b in raw["built"]] == ["/s/ftctl.sif", PUSHED]


def test_a_config_that_does_not_read_is_never_overwritten():
    _write("backend: [unclosed\n")
    with pytest.raises(FtctlError, match="is not valid YAML: line 2, column 1: expected ',' or ']'"):  # where
        userconfig.record(PUSHED, "pushed", "A100")
    assert userconfig.config_path().read_text() == "backend: [unclosed\n"
    r = CliRunner().invoke(main, ["jobs"])  # it stops every command (jobs and status ran on), but a call for help
    assert r.exit_code == 2 and "is not valid YAML" in r.stderr
    assert CliRunner().invoke(main, ["jobs", "--help"]).exit_code == 0


# ------------------------------------------------------------------------------------------ invalid values
def test_invalid_values_are_one_error_naming_each():
    _write(
        "imgae: x\nslurm_container: docker\nimage: 'has space'\nbackend: slrum\nbuilt:\n- {image: a, where: cloud, gpus: A100}\n"
    )
    with pytest.raises(FtctlError) as e:
        userconfig.load()
    msg = str(e.value)
    assert msg.startswith(f"{userconfig.config_path()}: unknown key 'imgae'. Did you mean 'image'?")
    assert "slurm_container 'docker' is not one of apptainer, pyxis" in msg
    assert "image 'has space' is not an image reference" in msg
    assert "backend 'slrum' is not one of local, slurm, sky, docker. Did you mean 'slurm'?" in msg
    assert "built[0] where 'cloud' is not one of pushed, local, sif" in msg
    assert msg.endswith("Fix it by hand.") and "\n" not in msg


def test_invalid_config_is_one_line_from_the_command_line():
    _write("slurm_container: singularity\n")  # apptainer's older name
    assert userconfig.load().slurm_container == "apptainer"
    _write("slurm_container: podman\n")
    r = CliRunner().invoke(main, ["render", "--backend", "slurm", "--gpus", "1xA100", "--output", "/fixed/out"])
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: {userconfig.config_path()}: slurm_container 'podman' is not one of apptainer, pyxis. Fix it by hand.\n"
    )
    _write("backend: slrum\n")  # plan exited 0 with it: only launch read the file
    r = CliRunner().invoke(main, ["plan", "--gpus", "1xA100"])
    assert r.exit_code == 2 and r.stderr == (
        f"error: {userconfig.config_path()}: backend 'slrum' is not one of local, slurm, sky, docker. Did you mean "
        "'slurm'? Fix it by hand.\n"
    )


# ------------------------------------------------------------------------------------------ ftctl build
def _fake_build(monkeypatch):
    monkeypatch.setattr(image_build, "check_tools", lambda p: None)
    real = subprocess.run  # (the module's own: what else runs in the test, sinfo, is not the build's to fake)
    monkeypatch.setattr(
        image_build.subprocess,
        "run",
        lambda argv, **kw: subprocess.CompletedProcess(argv, 0) if argv[0] in BUILD_TOOLS else real(argv, **kw),
    )


BUILD_TOOLS = ("docker", "apptainer", "mv")  # what ftctl build runs (BuildPlan.steps)


def test_dry_run_build_records_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--push", "ghcr.io/my-org", "--apptainer"]):
        r = CliRunner().invoke(main, ["build", "--gpus", "H100", *extra, "--dry-run"])
        assert r.exit_code == 0, r.output
    assert not userconfig.config_path().exists()


def test_a_failed_build_records_nothing(monkeypatch):
    monkeypatch.setattr(image_build, "check_tools", lambda p: None)
    monkeypatch.setattr(image_build.subprocess, "run", lambda argv: subprocess.CompletedProcess(argv, 1))
    with pytest.raises(FtctlError, match="failed"):
        image_build.build(image_build.commands("H100", push="ghcr.io/my-org"))
    assert not userconfig.config_path().exists()


def test_push_and_apptainer_record_the_image_and_the_sif(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_build(monkeypatch)
    r = CliRunner().invoke(main, ["build", "--gpus", "A10G,8xA100,H100", "--push", "ghcr.io/my-org", "--apptainer"])
    assert r.exit_code == 0, r.output
    tag = image.image_tag("A100,H100")
    sif = tmp_path / f"ftctl-{tag}.sif"
    assert userconfig.load().built == (
        userconfig.Built(str(sif), "sif", "A100,A10G,H100", __version__, TODAY, "cu130"),
        userconfig.Built(f"ghcr.io/my-org/ftctl:{tag}", "pushed", "A100,A10G,H100", __version__, TODAY, "cu130"),
    )
    assert f"recorded in {userconfig.config_path()}" in r.stderr
    assert r.stdout == f"ghcr.io/my-org/ftctl:{tag} (pushed)\n{sif}\n"  # stdout as before


def test_a_local_build_serves_the_docker_backend_only(monkeypatch):
    _fake_build(monkeypatch)
    image_build.build(image_build.commands("H100", tag="mine"))
    (rec,) = userconfig.load().built
    assert (rec.image, rec.where, rec.gpus) == ("ghcr.io/ftctl/ftctl:mine", "local", "H100")
    assert _prep("docker", "1xH100").image.line == f"image: ghcr.io/ftctl/ftctl:mine (built by ftctl build on {TODAY})"
    assert "ghcr.io/ftctl/ftctl:mine" in _prep("docker", "1xH100").text
    for backend in ("sky", "slurm"):  # no node can pull an image that only this machine's engine holds
        assert _prep(backend, "1xH100").image.ref is None


# ------------------------------------------------------------------------------------------ which image a run gets
@pytest.mark.parametrize(
    "built_for, run, fits",
    [
        ("A100", "A100", True),
        ("A100", "A10G", True),  # one sm_80 image for every 8.x GPU
        ("A100", "H100", False),
        ("A100,H100", "H100", True),
        ("H100", "T4", False),  # T4, V100 and CPU runs take the generic A100 + H100 image
        ("A100,H100", "T4", True),
        ("A100,H100", None, True),
    ],
)
def test_fits_follows_the_default_image_rule(built_for, run, fits):
    assert image.fits(built_for, run) is fits


def test_sky_uses_a_pushed_image_that_fits_else_ships_the_source():
    userconfig.record(PUSHED, "pushed", "A100")
    userconfig.record("/s/ftctl.sif", "sif", "A100")
    prep = _prep("sky", "8xA100")
    assert prep.image.line == f"image: {PUSHED} (pushed by ftctl build on {TODAY})"
    task = yaml.safe_load(prep.text)
    assert task["resources"]["image_id"] == f"docker:{PUSHED}"
    assert "python3 -m ftctl.sky.node_stack" in task["setup"]  # in the image: finds its stack, installs nothing
    other = _prep("sky", "8xH100")  # an sm_80 image has no flash-attn code for H100
    assert other.image.line == (
        "no image (ftctl build recorded none for H100 runs here): installing ftctl from the shipped source"
    )
    assert "image_id" not in yaml.safe_load(other.text)["resources"] and "ftctl.sky.node_stack" in other.text


def test_an_image_of_another_ftctl_version_is_not_used():
    _write(f"built:\n- {{image: {PUSHED}, where: pushed, gpus: A100, ftctl: 0.0.1, date: '2026-01-01'}}\n")
    assert _prep("sky", "8xA100").image.ref is None


def test_container_none_and_image_none_force_the_no_image_path():
    userconfig.record(PUSHED, "pushed", "A100")
    plain = _prep("sky", "8xA100", container="none")
    assert plain.image.line == "no image (--container none): installing ftctl from the shipped source"
    _write(userconfig.config_path().read_text() + "image: none\n")
    for backend in ("sky", "slurm"):
        assert _prep(backend, "8xA100").image.line.startswith(f"no image (image: none in {userconfig.config_path()})")
    assert _prep("sky", "8xA100").text == _prep("sky", "8xA100", container="none").text.replace(
        '"container":"none"', '"container":null'
    )
    # the docker backend always runs an image: its default name
    assert _prep("docker", "1xA100").image.ref == image.default_image("A100")


def test_container_flag_wins_over_the_config():
    _write("image: ghcr.io/x/y:1\n")
    prep = _prep("sky", "8xA100", container="docker:nvcr.io/nvidia/pytorch:24.07-py3")
    assert prep.image.line == "image: nvcr.io/nvidia/pytorch:24.07-py3 (--container)"
    assert prep.spec.container == "docker:nvcr.io/nvidia/pytorch:24.07-py3"


def test_slurm_prefers_the_sif_with_apptainer_and_a_pushed_image_with_pyxis():
    def config(head="", sif_ftctl=__version__):
        return (
            f"{head}built:\n- {{image: /s/ftctl.sif, where: sif, gpus: A100, ftctl: '{sif_ftctl}'}}\n"
            f"- {{image: {PUSHED}, where: pushed, gpus: A100, ftctl: '{__version__}'}}\n"
        )

    _write(config())
    assert _prep("slurm", "8xA100").spec.container == "apptainer:/s/ftctl.sif"
    _write(config(sif_ftctl="0.0.1"))  # a stale .sif: the pushed image, through apptainer
    assert _prep("slurm", "8xA100").spec.container == f"apptainer:docker://{PUSHED}"
    _write(config("slurm_container: pyxis\n"))
    prep = _prep("slurm", "8xA100")
    assert prep.spec.container == "pyxis:ghcr.io#my-org/ftctl:t-sm80"
    assert "'--container-image=ghcr.io#my-org/ftctl:t-sm80'" in prep.text
    assert prep.image.line == f"image: {PUSHED} (pushed by ftctl build)"  # no date recorded: none said


def test_slurm_refuses_a_recorded_sif_that_is_gone(tmp_path):
    userconfig.record(str(tmp_path / "gone.sif"), "sif", "A100")
    prep = _prep("slurm", "8xA100")
    with pytest.raises(FtctlError, match=r"gone.sif, the .sif `ftctl build --apptainer` recorded, is gone"):
        get("slurm").check(prep)


def test_slurm_refuses_an_apptainer_file_that_is_not_here_and_says_what_a_dry_run_off_the_cluster_skips(
    tmp_path, monkeypatch
):
    """--container apptainer:/shared/img.sif with a typo was submitted, queued, and failed on the node (apptainer:
    "could not open image"). And a dry run on a laptop said nothing of the partition checks it could not make."""
    missing = tmp_path / "imgs" / "ftctl.sif"
    with pytest.raises(FtctlError, match=f"--container apptainer:{missing}: no such file here; the nodes run it"):
        get("slurm").check(_prep("slurm", "8xA100", container=f"apptainer:{missing}"))
    missing.parent.mkdir()
    missing.write_bytes(b"sif")
    monkeypatch.setenv("PATH", str(tmp_path / "imgs"))  # no sinfo
    prep = _prep("slurm", "8xA100", container=f"apptainer:{missing}")
    get("slurm").check(prep)
    get("slurm").check(_prep("slurm", "8xA100", container="apptainer:docker://ghcr.io/x/ftctl:t"))  # pulled there
    said = get("slurm").estimate(prep.spec, prep.plan)  # what `plan` and a dry run print last
    assert said.startswith("note: no Slurm on this machine (sinfo is not on PATH): the partition's nodes, GPUs")


def test_docker_checks_a_local_image_is_here_but_lets_docker_pull_a_pushed_one(monkeypatch):
    from ftctl.docker import backend as docker_backend

    asked = []
    monkeypatch.setattr(docker_backend, "_docker", lambda: "docker")
    monkeypatch.setattr(docker_backend, "_inspect", lambda name: None)
    monkeypatch.setattr(docker_backend, "_daemon", lambda docker: "27.3.1")  # a daemon that answers
    monkeypatch.setattr(
        docker_backend, "_run", lambda argv: asked.append(argv) or subprocess.CompletedProcess(argv, 1, "", "")
    )
    userconfig.record(PUSHED, "pushed", "A100")
    get("docker").check(_prep("docker", "1xA100"))
    assert asked == []
    userconfig.record("ghcr.io/ftctl/ftctl:mine", "local", "A100")
    with pytest.raises(FtctlError, match="ghcr.io/ftctl/ftctl:mine is not on this docker host"):
        get("docker").check(_prep("docker", "1xA100"))
    assert asked == [["docker", "image", "inspect", "ghcr.io/ftctl/ftctl:mine"]]


@pytest.mark.parametrize(
    "ref, enroot",
    [
        ("ghcr.io/org/ftctl:t", "ghcr.io#org/ftctl:t"),
        ("registry.example:5000/team/ftctl:t", "registry.example:5000#team/ftctl:t"),
        ("localhost/ftctl:t", "localhost#ftctl:t"),
        ("nvcr.io#nvidia/pytorch:24.07-py3", "nvcr.io#nvidia/pytorch:24.07-py3"),
        ("myname/ftctl:t", "myname/ftctl:t"),  # Docker Hub: enroot's default registry
        ("ubuntu:24.04", "ubuntu:24.04"),
        ("docker://ghcr.io/org/ftctl:t", "docker://ghcr.io#org/ftctl:t"),
        ("docker://ubuntu:24.04", "docker://ubuntu:24.04"),
        ("./img.sqsh", "./img.sqsh"),  # a squashfs file
        ("/shared/imgs/x.sqsh", "/shared/imgs/x.sqsh"),
    ],
)
def test_pyxis_image_names_the_registry_as_enroot_reads_it(ref, enroot):
    assert pyxis_image(ref) == enroot


def test_a_pyxis_container_given_by_hand_is_named_as_enroot_reads_it_too():
    """--container pyxis:ghcr.io/org/ftctl:t was rendered as it was given, which enroot pulls from Docker Hub
    (only images ftctl recorded were converted)."""
    from tests.render_fixtures import prepared

    text = prepared(
        backend="slurm", gpus="1xA100", model_params="1b", output_dir="/o", container="pyxis:ghcr.io/org/ftctl:t"
    ).text
    assert "--container-image=ghcr.io#org/ftctl:t" in text and "ghcr.io/org" not in text


# ------------------------------------------------------------------------------------------ the stderr line
def test_render_and_dry_run_say_which_image_and_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    userconfig.record(PUSHED, "pushed", "A100")
    args = ["--backend", "sky", "--gpus", "8xA100", "--output", "s3://b/o"]
    line = f"image: {PUSHED} (pushed by ftctl build on {TODAY})\n"
    r = CliRunner().invoke(main, ["render", *args])
    assert r.exit_code == 0, r.output
    assert r.stderr == line
    slurm = ["--backend", "slurm", "--gpus", "8xA100", "--output", str(tmp_path / "out")]
    r = CliRunner().invoke(main, ["launch", "--dry-run", *slurm])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith(f"backend: slurm (--backend)\nimage: {PUSHED} (pushed by ftctl build on {TODAY})\n")
    local = CliRunner().invoke(main, ["render", "--backend", "local", "--gpus", "cpu", "--output", str(tmp_path)])
    assert local.exit_code == 0 and local.stderr == ""  # the local backend runs no image
    assert not os.listdir(tmp_path)


def test_a_build_for_v100_and_h100_serves_both(monkeypatch):
    """`ftctl build --gpus V100,H100` compiled flash-attn for H100 only and recorded "H100": its V100 runs (no
    flash-attn 2: the generic image's rule) found no image and took the default one, never built. The build holds
    the generic image's architectures too, and its record names every tier."""
    _fake_build(monkeypatch)
    plan = image_build.commands("V100,H100", push="ghcr.io/my-org")
    assert "-cu126-" in plan.image and plan.image.endswith("-sm80_90")  # V100's flavour, A100 + H100's code
    image_build.build(plan)
    (rec,) = userconfig.load().built
    assert (rec.gpus, rec.cuda) == ("V100,A100,H100", "cu126")
    for gpus in ("8xV100", "8xH100", "8xA100"):
        assert _prep("sky", gpus).image.ref == plan.image, gpus
