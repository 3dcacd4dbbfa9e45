"""DeepSpeed's compiled ops loaded under ftctl's flock (trainer/op_build.py): a build killed half way left torch's lock
file (torch/utils/file_baton.py, a file whose existence is the lock), and every later load waited on it forever, a
requeued job until its time limit. The op here is a real torch.utils.cpp_extension build of a one-function C++ file
(under a second of g++, where DeepSpeed's CPU Adam takes ~95 s): the same FileBaton path in its build directory.
Every wait has a timeout, so a load that hangs fails the test instead of the suite."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from ftctl.trainer import op_build

FORK = multiprocessing.get_context("fork")  # the test process's torch comes along: no second import


@pytest.fixture
def ext(tmp_path, monkeypatch) -> Path:
    """TORCH_EXTENSIONS_DIR of this test, and the probe op's source in tmp_path."""
    (tmp_path / "probe.cpp").write_text('extern "C" int ftctl_probe() { return 42; }\n')
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext"


def _build_probe(src: Path, hold_s: float = 0.0):
    """torch's JIT build of the probe (what DeepSpeed's OpBuilder.load calls), taking ``hold_s`` longer."""

    def load():
        from torch.utils.cpp_extension import load as torch_load

        time.sleep(hold_s)
        return torch_load(name="probe", sources=[str(src)], is_python_module=False)

    return load


def _in_thread(fn, timeout: float):
    """fn() in a thread: (its result, whether it ended within ``timeout``). A load waiting on a stale lock never ends:
    the thread is left behind (a daemon) and the test fails."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    t.start()
    t.join(timeout)
    return out.get("value"), not t.is_alive()


def _killed_midway(ext: Path) -> None:
    """A process that loads the probe through ftctl and is SIGKILLed once torch holds its build lock (a preempted
    Slurm job's, an OOM-killed one's): the lock and ftctl's marker stay behind."""

    def child():
        from torch.utils.file_baton import FileBaton

        def build():
            FileBaton(str(ext / "probe" / "lock")).try_acquire()  # as torch's _jit_compile does before building
            os.kill(os.getpid(), signal.SIGKILL)

        op_build.loaded("probe", build)

    p = FORK.Process(target=child)
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    assert (ext / "probe" / "lock").exists()


def test_a_build_killed_half_way_leaves_a_lock_the_next_load_removes_saying_so(ext, tmp_path):
    _killed_midway(ext)
    lines: list[str] = []
    path, ended = _in_thread(lambda: op_build.loaded("probe", _build_probe(tmp_path / "probe.cpp"), lines.append), 60)
    assert ended, f"the load waited on {ext / 'probe' / 'lock'} (torch's lock of the killed build)"
    assert ctypes.CDLL(path).ftctl_probe() == 42
    lock = ext / "probe" / "lock"
    assert len(lines) == 1 and str(lock) in lines[0] and "killed" in lines[0] and "ftctl's" in lines[0], lines
    assert not lock.exists() and not (ext / "probe" / op_build.BUILDING).exists()
    # a second load finds nothing stale and says nothing
    _, ended = _in_thread(lambda: op_build.loaded("probe", _build_probe(tmp_path / "probe.cpp"), lines.append), 60)
    assert ended and len(lines) == 1


def _contender(tmp_path: Path, name: str, go) -> None:
    out = tmp_path / f"{name}.json"
    lines: list[str] = []
    go.wait(30)
    path = op_build.loaded(
        "probe", _build_probe(tmp_path / "probe.cpp", hold_s=1.0), lines.append, say_wait_after_s=0.3
    )
    out.write_text(json.dumps({"pid": os.getpid(), "lines": lines, "probe": ctypes.CDLL(path).ftctl_probe()}))


def test_two_processes_one_clears_the_stale_lock_and_builds_the_other_waits_saying_whose(ext, tmp_path):
    """Two ranks of a requeued job over its killed attempt's lock: one removes it and builds, the other waits on
    ftctl's flock (one line naming whose build) and then loads what was built; the op is compiled once."""
    _killed_midway(ext)
    go = FORK.Event()
    procs = [FORK.Process(target=_contender, args=(tmp_path, name, go)) for name in ("a", "b")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive and [p.exitcode for p in procs] == [0, 0], "a load waited on the killed build's lock"
    done = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")}
    assert [d["probe"] for d in done.values()] == [42, 42]
    removed = [(n, line) for n, d in done.items() for line in d["lines"] if line.startswith("removed ")]
    waited = [(n, line) for n, d in done.items() for line in d["lines"] if line.startswith("waiting for ")]
    assert len(removed) == 1 and "killed" in removed[0][1], done
    builder = removed[0][0]
    other = "b" if builder == "a" else "a"
    assert waited == [(other, f"waiting for {socket.gethostname()}'s build (pid {done[builder]['pid']}) of probe "
                       f"in {ext / 'probe'} ...")], done  # fmt: skip
    assert len(done[builder]["lines"]) == 1 and len(done[other]["lines"]) == 1
    log = (ext / "probe" / ".ninja_log").read_text().splitlines()
    assert [line.split("\t")[3].endswith(".so") for line in log[1:]].count(True) == 1, log  # linked once


def test_a_lock_held_by_a_build_outside_ftctl_is_waited_for_then_removed_once_its_process_is_gone(ext, tmp_path):
    """A build not started through ftctl (a user's script) holds torch's lock open without ftctl's flock: even an old
    lock is waited for while a process on this node holds it; once that process is killed, the old lock is removed."""
    lock = op_build.build_directory("probe") / "lock"

    def foreign(ready):
        os.open(lock, os.O_CREAT | os.O_EXCL)  # torch's FileBaton.try_acquire: the fd stays open while it builds
        ready.set()
        time.sleep(60)

    ready = FORK.Event()
    holder = FORK.Process(target=foreign, args=(ready,))
    holder.start()
    try:
        assert ready.wait(10)
        old = time.time() - 20
        os.utime(lock, (old, old))
        lines: list[str] = []
        result = {}
        t = threading.Thread(
            target=lambda: result.setdefault(
                "path", op_build.loaded("probe", _build_probe(tmp_path / "probe.cpp"), lines.append, stale_after_s=10)
            ),
            daemon=True,
        )
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and lock.exists(), lines  # a live build's lock is left alone
        assert lines == [f"waiting for {lock} (pid {holder.pid} on this node holds it open, a build not started by "
                         "ftctl) ..."]  # fmt: skip
    finally:
        holder.kill()
        holder.join()
    t.join(30)
    assert not t.is_alive() and ctypes.CDLL(result["path"]).ftctl_probe() == 42
    assert len(lines) == 2 and lines[1].startswith(f"removed {lock}: ") and "held by no process" in lines[1], lines


def test_what_is_stale_and_what_may_be_a_live_build(tmp_path):
    lock, marker = tmp_path / "lock", tmp_path / op_build.BUILDING
    lock.touch()
    st = lock.stat()
    stale, wait = op_build._judge(lock, st, marker, flocked=True, stale_after_s=600)
    assert not stale and "left by no ftctl build" in wait  # a young lock of a build outside ftctl
    stale, _ = op_build._judge(lock, st, marker, flocked=True, stale_after_s=0)
    assert "a killed build left it" in stale  # the same, old
    marker.write_text(json.dumps({"host": "node7", "pid": 12, "since": 0}))
    stale, wait = op_build._judge(lock, st, marker, flocked=True, stale_after_s=600)
    assert not stale and "node7's build" in wait  # another node's build touching its marker: flocks not shared
    old = time.time() - op_build.QUIET_S - 1
    os.utime(marker, (old, old))
    stale, _ = op_build._judge(lock, st, marker, flocked=True, stale_after_s=600)
    assert "killed (ftctl's: pid 12 on node7)" in stale
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": 12, "since": 0}))
    assert "killed" in op_build._judge(lock, st, marker, flocked=True, stale_after_s=600)[0]  # this node's: at once
    assert not op_build._judge(lock, st, marker, flocked=False, stale_after_s=600)[0]  # without flock: only when old


def test_the_build_directory_is_torchs_with_and_without_torch_extensions_dir(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "set"))
    assert op_build.build_directory("cpu_adam") == tmp_path / "set" / "cpu_adam"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    where = f"py{sys.version_info.major}{sys.version_info.minor}_" + (
        f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    )
    assert op_build.build_directory("cpu_adam") == tmp_path / "cache" / "torch_extensions" / where / "cpu_adam"


def test_only_an_offloaded_optimizer_needs_a_compiled_op():
    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    assert op_build.needed(offload) == ["cpu_adam"]
    assert op_build.needed({"zero_optimization": {"stage": 3}}) == [] and op_build.needed(None) == []


def test_an_unknown_op_is_refused_in_one_line(capsys):
    assert op_build.main(["fused_adam"]) == 2
    assert capsys.readouterr().err == "unknown op 'fused_adam': ftctl loads cpu_adam\n"


def test_cpu_adam_that_does_not_compile_is_one_line_naming_what_the_node_lacks(ext, monkeypatch):
    """The real CPU Adam build with no compiler (CXX names none): torch's "Error building extension" traceback out of
    the Trainer's setup was all a user saw; now one FtctlError saying what to install, or to train without offload."""
    from ftctl.errors import FtctlError

    monkeypatch.setenv("CXX", str(ext.parent / "no-such-compiler"))
    monkeypatch.setenv("MAX_JOBS", "1")
    with pytest.raises(FtctlError) as e:
        op_build.prepare({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    said = str(e.value)
    assert "cpu_adam" in said and "did not compile" in said and "g++" in said and "-o strategy=zero3" in said
    assert "\n" not in said
