"""What a docker run's container gets from what its engine says (the leftovers of explore49): an init as its PID 1,
its log rotated where docker keeps it in json-file, SELinux labels off where docker's daemon labels, and `ftctl
doctor` saying a rootless engine and what that means for the run.

Measured with podman 4.3.1 (runc, catatonit) on this machine: without --init a python PID 1 that has no SIGTERM handler
yet ignored `podman stop --time 8` (killed at 8.6 s, exit 137) and an orphan of its child stayed a zombie; with --init
it stopped in 0.5 s (exit 143), the orphan was reaped, and a parent with a handler got the SIGTERM while its child did
not. podman's k8s-file log at --log-opt max-size=2k kept 1 of 200 lines and lost the error line written after them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.backend import JobRef
from ftctl.docker import backend, engine, render
from tests.podman_fixtures import podman  # noqa: F401 (the fixture)
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.2-1B"

# a docker CLI that answers what render and doctor ask: --version, version, info (its JSON: $FAKE_INFO), context
FAKE = r"""#!/bin/sh
case "$1" in
  --version) echo "Docker version 28.2.2, build e6534b4" ;;
  version) echo "28.2.2" ;;
  info) printf '%s\n' "${FAKE_INFO:-null}" ;;
  context) exit 1 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def said_by(tmp_path, monkeypatch):
    """``said_by(**info)``: docker on PATH says ``info`` (docker info's JSON keys) from now on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    for var in (engine.ENV, *engine.ENDPOINT_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)

    def said(**info):
        monkeypatch.setenv("FAKE_INFO", json.dumps(info))
        engine._info.cache_clear()
        return engine.info()

    yield said
    engine._info.cache_clear()


def _launched(tmp_path) -> list[str]:
    import shlex

    prep = prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(tmp_path / "o"))
    return shlex.split(prep.text)


def test_the_container_gets_an_init_and_a_bounded_log_where_docker_keeps_it_in_json_file(said_by, tmp_path):
    """docker's json-file driver (its default) keeps every line of a container's output: a run of days filled the
    daemon's disk. Its log is kept to 5 files of 100 MB; journald and docker's `local` rotate their own (docker
    refuses max-size for journald), podman's k8s-file truncates the whole log at max-size: none there."""
    assert said_by(LoggingDriver="json-file", SecurityOptions=["name=seccomp,profile=builtin"]) == engine.Info()
    argv = _launched(tmp_path)
    assert "--init" in argv and argv.index("--init") < argv.index("--gpus")  # an option of docker run's, not the cmd
    assert ["--log-opt=max-size=100m", "--log-opt=max-file=5"] == [a for a in argv if a.startswith("--log-opt")]
    for driver in ("journald", "local"):
        said_by(LoggingDriver=driver)
        assert not [a for a in _launched(tmp_path) if a.startswith("--log-opt")], driver
    prep = prepared(backend="docker", gpus="cpu", output_dir="/fixed/out")
    for kind in ("podman", "podman-api"):
        argv = render.argv(prep.spec, prep.plan, "/fixed/out", engine=kind, info=engine.Info(log_driver="k8s-file"))
        assert "--init" in argv and not [a for a in argv if a.startswith("--log-opt")]
    assert "--init" in render.argv(prep.spec, prep.plan, "/fixed/out", shipped=True)  # `docker create` of a shipped run


def test_docker_with_selinux_labels_runs_the_container_unlabelled(said_by, tmp_path):
    """docker's daemon with --selinux-enabled (Fedora's, RHEL's: `docker info` SecurityOptions name=selinux) labels
    its containers, which may then not read the user's bind-mounted files nor the GPUs' device nodes:
    label=disable, as podman gets (not :z, which relabels the host's files)."""
    said_by(SecurityOptions=["name=seccomp,profile=builtin"])
    assert "--security-opt=label=disable" not in _launched(tmp_path)
    assert said_by(SecurityOptions=["name=seccomp,profile=builtin", "name=selinux"]).selinux
    argv = _launched(tmp_path)
    assert "--security-opt=label=disable" in argv and not [a for a in argv if a.endswith((":z", ":Z"))]


def test_podman_says_its_selinux_and_log_driver(tmp_path):
    exe = tmp_path / "podman"
    said = {"host": {"security": {"rootless": True, "selinuxEnabled": True}, "logDriver": "journald"}}
    exe.write_text(f"#!/bin/sh\n[ \"$1 $3\" = 'info json' ] && echo '{json.dumps(said)}'\n")
    exe.chmod(0o755)
    engine._info.cache_clear()
    try:
        assert engine.info(str(exe)) == engine.Info(rootless=True, selinux=True, log_driver="journald")
    finally:
        engine._info.cache_clear()


def test_doctor_says_the_engine_is_rootless_and_what_that_means_for_the_run(said_by):
    from ftctl.cli import main

    said_by(SecurityOptions=["name=seccomp,profile=builtin"])
    rootful = CliRunner().invoke(main, ["doctor", "--backend", "docker", "--gpus", "cpu"])
    assert rootful.exit_code == 0, rootful.output
    assert "\ndocker:  daemon 28.2.2 (" in rootful.output and "rootless" not in rootful.output
    said_by(SecurityOptions=["name=seccomp,profile=builtin", "name=rootless", "name=selinux"])
    rootless = CliRunner().invoke(main, ["doctor", "--backend", "docker", "--gpus", "cpu"])
    assert rootless.exit_code == 0, rootless.output
    lines = rootless.output.splitlines()[1:]  # after "asked:   cpu: here"
    assert lines[0].endswith(", rootless") and lines[1] == f"user:    {backend.ROOTLESS_SAYS}", lines
    assert "(--user 0:0), which is you on this host" in lines[1] and "memlock" in lines[1]
    assert lines[2] == f"selinux: {backend.SELINUX_SAYS}"


def test_a_container_stopped_before_training_is_not_said_to_have_saved(tmp_path, monkeypatch):
    """With an init, `docker stop` ends a torchrun that has no SIGTERM handler yet (still importing torch) at once,
    exit 143 as a trainer that saved its checkpoint exits: only a start record of its own says that one trained."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps({"spec": {"output_dir": str(run_dir)}}))
    ref = JobRef("docker", "r", str(run_dir), "r", str(run_dir), {"engine": "docker"})
    ran = (1000.0, 2000.0)
    monkeypatch.setattr(backend, "_docker", lambda ref=None: "docker")
    monkeypatch.setattr(backend, "_inspect", lambda name, docker=None: backend.Inspected("exited", 143, ran))
    monkeypatch.setattr(backend.DockerBackend, "log_tail", lambda self, ref: "")
    note = backend.DockerBackend().stop_note(ref)
    assert note.startswith("it stopped before its trainer started training, so nothing was saved"), note
    (run_dir / "metrics.jsonl").write_text(json.dumps({"event": "start", "time": 1500.0}) + "\n")
    assert backend.DockerBackend().stop_note(ref).startswith("its trainer saved a checkpoint as it stopped")


# a torchrun stand-in: no SIGTERM handler for its first 2 s (torch importing), then one that asks its worker to stop
# through a file; the worker reports a SIGTERM of its own; an orphan (a child's child) ends at once
TORCHRUN = r"""
import glob, os, signal, subprocess, sys, time
stop = sys.argv[1]
def asked(signum, frame):
    print("torchrun: SIGTERM", flush=True)
    open(stop, "w").close()
if os.environ.get("HANDLER") == "1":
    signal.signal(signal.SIGTERM, asked)
worker = subprocess.Popen([sys.executable, "-c", '''
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda s, f: print("worker: SIGTERM", flush=True))
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
print("worker: saved", flush=True)
''', stop])
subprocess.Popen(["sh", "-c", "sleep 0.2 & exit 0"]).wait()
time.sleep(1)
zombies = [f for f in glob.glob("/proc/[0-9]*/stat") if open(f).read().rsplit(")", 1)[1].split()[0] == "Z"]
print(f"up, zombies: {len(zombies)}", flush=True)
sys.exit(143 if worker.wait() == 0 else 1)
"""


@pytest.mark.slow
def test_docker_stop_reaches_torchrun_through_the_init_at_any_time(podman, tmp_path, monkeypatch):  # noqa: F811
    """ftctl's own container options (render.argv of a CPU run, its command replaced) on a real engine: the init
    gives torchrun the SIGTERM before it has a handler (it ends at once, not at --stop-timeout's SIGKILL), and after
    (it alone: its worker saves through the stop file); the orphan is reaped. The engine takes the log options."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    (tmp_path / "s.py").write_text(TORCHRUN)
    prep = prepared(backend="docker", gpus="cpu", output_dir=str(tmp_path / "run"), container=f"docker:{podman.image}")
    for path in render.host_caches().dirs():
        Path(path).mkdir(parents=True, exist_ok=True)
    argv = render.argv(prep.spec, prep.plan, str(tmp_path / "run"), engine="docker")
    options = argv[2 : argv.index(podman.image)]  # after `docker run`, up to the image
    assert "--init" in options and "--log-opt=max-size=100m" in options
    options[options.index("--name") + 1] = name = podman.name("init")
    for handler, said in (("0", []), ("1", ["torchrun: SIGTERM", "worker: saved"])):
        podman.docker("rm", "--force", name, check=False)
        stop = f"{tmp_path}/run/stop-{handler}"
        script = ["python3", f"{tmp_path}/s.py", stop]
        podman.docker(
            "run", *options, "-v", f"{tmp_path}:{tmp_path}", "-e", f"HANDLER={handler}", podman.image, *script
        )
        deadline = time.time() + 60
        while "up, zombies" not in (log := podman.docker("logs", name).stdout):
            assert time.time() < deadline, log
            time.sleep(0.1)
        began = time.monotonic()
        podman.docker("stop", "--time", "20", name)
        took = time.monotonic() - began
        code = podman.docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        log = podman.docker("logs", name).stdout.splitlines()
        assert (code, log[0], log[1:]) == ("143", "up, zombies: 0", said) and took < 10, (took, code, log)
    podman.docker("rm", "--force", name, check=False)


def test_an_engine_without_an_init_says_what_to_install(monkeypatch):
    assert "install catatonit" in backend._send_fix(
        "podman",
        "Error: container-init binary not found on the host: stat /usr/libexec/podman/catatonit: no such",
        None,
    )
    said = 'docker: Error response from daemon: exec: "docker-init": executable file not found in $PATH.'
    assert "install tini" in backend._send_fix("docker", said, None)


def test_doctor_says_podmans_init_is_missing(tmp_path, monkeypatch):
    """review-57 R3: runs start with --init, which podman refuses without catatonit (a package of its own on Debian
    and Ubuntu, only recommended by podman's): doctor says so and fails, before a launch does. Found in podman's
    helper directories, on PATH, or named by a containers.conf's init_path."""
    from ftctl.cli import main
    from ftctl.docker import engine

    helpers, confs = tmp_path / "libexec", tmp_path / "etc"
    helpers.mkdir()
    confs.mkdir()
    monkeypatch.setattr(engine, "PODMAN_HELPER_DIRS", (str(helpers),))
    monkeypatch.setattr(engine, "CONTAINERS_CONFS", (str(confs / "containers.conf"),))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert not engine.podman_init_found()
    monkeypatch.setattr(backend, "_docker", lambda ref=None: "podman")
    monkeypatch.setattr(backend, "_daemon", lambda docker: "4.3.1")
    monkeypatch.setattr(engine, "kind", lambda exe=None: "podman")
    monkeypatch.setattr(engine, "remote", lambda exe=None: None)
    monkeypatch.setattr(engine, "info", lambda exe=None: engine.Info())
    said = CliRunner().invoke(main, ["doctor", "--backend", "docker", "--gpus", "cpu"])
    assert said.exit_code == 1 and f"\ninit:    {backend.PODMAN_INIT_MISSING}\n" in said.output, said.output
    (confs / "containers.conf").write_text('[engine]\ninit_path = "/opt/tini"\n')
    assert engine.podman_init_found()
    (confs / "containers.conf").unlink()
    (confs / "containers.conf.d").mkdir()  # a drop-in (review-57b N4), and $CONTAINERS_CONF
    (confs / "containers.conf.d" / "50-init.conf").write_text('[engine]\ninit_path = "/opt/tini"\n')
    assert engine.podman_init_found()
    (confs / "containers.conf.d" / "50-init.conf").rename(tmp_path / "mine.conf")
    assert not engine.podman_init_found()
    monkeypatch.setenv("CONTAINERS_CONF", str(tmp_path / "mine.conf"))
    assert engine.podman_init_found()
    monkeypatch.delenv("CONTAINERS_CONF")
    (helpers / "catatonit").write_text("")
    assert engine.podman_init_found()
    said = CliRunner().invoke(main, ["doctor", "--backend", "docker", "--gpus", "cpu"])
    assert said.exit_code == 0 and "init:" not in said.output, said.output
