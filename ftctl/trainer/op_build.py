"""DeepSpeed's compiled ops, loaded before the Trainer makes its engine, under a lock that dies with its process.

DeepSpeed compiles an op it has no prebuilt copy of on its first use, through torch.utils.cpp_extension, into
``$TORCH_EXTENSIONS_DIR/<op>`` (unset: torch's ``~/.cache/torch_extensions/py311_cu124/<op>``). The only such op
ftctl's configs need is CPU Adam, the offload strategies' optimizer (~95 s of g++ on 2 cores). torch's lock there is a
file named ``lock`` whose existence is the lock (torch/utils/file_baton.py), waited for forever: a build killed half
way (a preempted or requeued Slurm job, an OOM kill, scancel, Ctrl-C) leaves it, and every later run that needs the
op waited, silently, until its time limit (a requeue of the same job too).

So every process (each rank of each node) loads the op here first, holding an flock on ``ftctl-build.lock`` beside
torch's ``lock``: an flock ends with its process. While it loads, the ``ftctl-building`` marker says who builds,
touched every few seconds. Whoever holds the flock and finds torch's ``lock``:

    an ftctl build's marker left beside it    the build was killed (an ftctl build in progress would hold the
    (this node's, or quiet for a minute)      flock): the lock is removed at once
    any other lock (a build outside ftctl:    removed once STALE_AFTER_S old; until then, and while a process on
    a user's script, ds_report)               this node holds it open, waited for

each said in one line. The others wait on the flock, saying whose build they wait for when it takes a while.
DeepSpeed keeps what was loaded (OpBuilder._loaded_ops): its own load in deepspeed.initialize returns it.
The lock's directory must take flocks across the nodes sharing it (local disks, NFSv4, Lustre mounted with
``flock``); where flock fails, nothing is removed before it is STALE_AFTER_S old.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ftctl.errors import FtctlError

log = logging.getLogger(__name__)

T = TypeVar("T")

HELD = "ftctl-build.lock"  # flocked by the process loading the op; says who it is
BUILDING = "ftctl-building"  # an ftctl load in progress (or killed): who, since when; touched every HEARTBEAT_S
TORCH_LOCK = "lock"  # torch.utils.cpp_extension._jit_compile's FileBaton
STALE_AFTER_S = 600.0  # a torch lock no ftctl build left: removed this old (cpu_adam builds in 1-3 min)
HEARTBEAT_S = 5.0
QUIET_S = 60.0  # another node's marker untouched this long: its build is gone
SAY_WAIT_AFTER_S = 5.0  # a wait on the flock longer than this is said (a load that ninja finds up to date: ~3 s)
POLL_S = 1.0

BUILDERS = {"cpu_adam": "CPUAdamBuilder"}  # deepspeed.ops.op_builder's class of each op ftctl loads


def needed(deepspeed: dict | str | None) -> list[str]:
    """The ops DeepSpeed compiles at run time under TrainingArguments' ``deepspeed`` (distributed.deepspeed_config's
    dict): CPU Adam where the optimizer states are offloaded. Nothing else ftctl's configs use compiles: they have no
    "optimizer" section (FusedAdam: the Trainer's torch AdamW goes in), no NVMe offload (async_io), no ZeRO++
    quantization (quantizer), and a CPU group's shared-memory all-reduce is switched off (distributed.init_group)."""
    from ftctl.trainer.distributed import offloads_optimizer

    return ["cpu_adam"] if offloads_optimizer(deepspeed) else []


def prepare(deepspeed: dict | str | None) -> None:
    """Load (building where needed) every op ``needed`` names, before the Trainer's engine asks for it. One that
    does not compile is an FtctlError saying why and what to do (not_built)."""
    for name in needed(deepspeed):
        try:
            load_deepspeed_op(name)
        except BUILD_ERRORS as e:
            raise FtctlError(not_built(name, e)) from e  # FTCTL_DEBUG=1 shows torch's build output with it


# what a failed build raises: ninja's failure (RuntimeError, torch's "Error building extension" with the compiler's
# output), a build directory or compiler not there (OSError), a CXX that does not answer --version
# (CalledProcessError: it was a traceback without the fix), an ImportError of the built library
BUILD_ERRORS = (RuntimeError, OSError, ImportError, subprocess.SubprocessError)
OFFLOAD_FIX = "or train without offload: -o strategy=zero3 (more GPU memory)"


def not_built(name: str, e: BaseException) -> str:
    """The one line for an op ``name`` that could not be built from ``e`` (one of BUILD_ERRORS): the build directory
    that cannot be written (TORCH_EXTENSIONS_DIR's fix), else the compiler's first error (torch keeps its output in
    the exception: the last line, "ninja: build stopped: subcommand failed.", said nothing) and what a node needs."""
    what = f"DeepSpeed's {name} (the offloaded optimizer)"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or _default_root()
    if isinstance(e, OSError) and isinstance(e.filename, str) and root and _within(e.filename, root):
        where = "TORCH_EXTENSIONS_DIR" if os.environ.get("TORCH_EXTENSIONS_DIR") else "torch's extension cache"
        return (
            f"{what} cannot be built in {e.filename} on {socket.gethostname()} ({e.strerror or e}): set "
            f"TORCH_EXTENSIONS_DIR to a directory this user can write there ({where} is {root}); {OFFLOAD_FIX}."
        )
    if isinstance(e, subprocess.CalledProcessError):
        command = " ".join(map(str, e.cmd)) if isinstance(e.cmd, (list, tuple)) else str(e.cmd)
        why = f"`{command}` exited with {e.returncode}" + (f" (CXX={os.environ['CXX']})" if "CXX" in os.environ else "")
    else:
        why = compiler_error(str(e)) or type(e).__name__
    return (
        f"{what} did not compile on {socket.gethostname()}: {why}. The node needs a C++ compiler (g++, or CXX naming "
        f"one), Python's headers (python3-dev) and ninja; {OFFLOAD_FIX}."
    )


def compiler_error(text: str) -> str:
    """The compiler's first error line in torch's "Error building extension" text (ninja's progress and command
    lines, each FAILED: and its command, then the compiler's own words), else its first word (a compiler that is not
    there: "/bin/sh: 1: g++: not found"), else the text's last line; without a full stop of its own."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    noise = ("Error building extension", "FAILED:", "ninja:", "[")
    output = [line for line in lines if not line.startswith(noise) and " -c " not in line]  # -c: a command line
    said = [line for line in output if re.search(r"\berror\b", line, re.I)] or output or lines[-1:]
    return said[0][:300].rstrip(".") if said else ""


def _default_root() -> str | None:
    try:
        from torch.utils.cpp_extension import get_default_build_root

        return get_default_build_root()
    except Exception:  # noqa: BLE001 - an older torch: only TORCH_EXTENSIONS_DIR is known
        return None


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)
    except ValueError:
        return False


def load_deepspeed_op(name: str):
    """DeepSpeed's op ``name`` (a BUILDERS key), loaded as DeepSpeed loads it, under ftctl's lock where it compiles."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops
    from deepspeed.ops import op_builder

    builder = getattr(op_builder, BUILDERS[name])()
    if installed_ops.get(builder.name, False) and accelerator_name == get_accelerator()._name:
        return builder.load()  # built into the install (DS_BUILD_CPU_ADAM=1): nothing compiles, no lock
    return loaded(builder.name, builder.load)


def build_directory(name: str) -> Path:
    """Where torch builds the extension ``name`` (and holds its lock): $TORCH_EXTENSIONS_DIR/name, else torch's
    default root's py<version>_<cpu|cuXY>/name. Made if missing, as torch does."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def loaded(
    name: str,
    load: Callable[[], T],
    say: Callable[[str], None] = log.warning,
    stale_after_s: float = STALE_AFTER_S,
    say_wait_after_s: float = SAY_WAIT_AFTER_S,
) -> T:
    """``load()`` (which builds or loads the torch extension ``name`` through torch.utils.cpp_extension) holding
    ftctl's flock in its build directory, after clearing a torch lock a killed build left there."""
    directory = build_directory(name)
    try:
        fh = open(directory / HELD, "a+")
    except OSError as e:
        say(f"cannot open {directory / HELD} ({e.strerror or e}): {name} loads without ftctl's lock")
        return load()
    with fh:
        flocked = _take(fh, name, directory, say, say_wait_after_s)
        _write(fh, _me())
        _clear_stale(directory, name, flocked, say, stale_after_s)
        if not any(directory.glob(f"{name}*.so")):
            log.info("compiling DeepSpeed's %s into %s (once: a minute or two of g++)", name, directory)
        with _building(directory / BUILDING):
            return load()


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _take(fh, name: str, directory: Path, say, say_wait_after_s: float) -> bool:
    """flock ``fh``, saying once whose build it waits for when that takes over ``say_wait_after_s``. False where the
    file system takes no flock (said)."""
    deadline = time.monotonic() + say_wait_after_s
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        who = _read(Path(fh.name))
        whose = f"{who['host']}'s build (pid {who['pid']})" if who else "another process's build"
        say(f"waiting for {whose} of {name} in {directory} ...")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return True
    except OSError as e:  # ENOLCK, EOPNOTSUPP: no flock on this mount
        say(f"cannot flock {fh.name} ({e.strerror or e}): a stale torch lock there is removed only when old")
        return False


def _clear_stale(directory: Path, name: str, flocked: bool, say, stale_after_s: float) -> None:
    """Remove torch's lock where it is stale (see the module's table); wait while it may be a live build's."""
    lock = directory / TORCH_LOCK
    said = False
    while True:
        try:
            st = lock.stat()
        except FileNotFoundError:
            return
        stale, wait = _judge(lock, st, directory / BUILDING, flocked, stale_after_s)
        holders = _holders(lock) if stale else []
        if stale and not holders:
            with contextlib.suppress(FileNotFoundError):
                now = lock.stat()
                if (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns):  # not a new build's lock
                    lock.unlink()
            say(f"removed {lock}: torch's build lock of {name}, {stale}; loading {name} again")
            return
        if not said:
            if holders:
                wait = f"pid {', '.join(map(str, holders))} on this node holds it open, a build not started by ftctl"
            say(f"waiting for {lock} ({wait}) ...")
            said = True
        time.sleep(POLL_S)


def _judge(lock: Path, st: os.stat_result, marker: Path, flocked: bool, stale_after_s: float) -> tuple[str, str]:
    """(why torch's ``lock`` (stat ``st``) is stale, "") or ("", why it may be a live build's)."""
    building = _read(marker)
    if flocked and building:
        try:
            quiet_s = time.time() - marker.stat().st_mtime
        except FileNotFoundError:
            quiet_s = QUIET_S
        if building["host"] == socket.gethostname() or quiet_s >= QUIET_S:
            # an ftctl build in progress would hold the flock (and touch its marker)
            return f"left by a build that was killed (ftctl's: pid {building['pid']} on {building['host']})", ""
        return "", (
            f"{building['host']}'s build, whose marker {marker} was touched {quiet_s:.0f} s ago: this file system's "
            f"flocks do not reach across nodes; taken as killed once quiet for {QUIET_S:g} s"
        )
    age = time.time() - st.st_mtime
    if age >= stale_after_s:
        return f"{_span(age)} old and held by no process on this node: a killed build left it", ""
    return "", (
        f"{_span(age)} old, left by no ftctl build: another program's build, or a killed one's; removed once "
        f"{stale_after_s / 60:g} min old where no process on this node holds it open"
    )


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _holders(path: Path) -> list[int]:
    """The processes on this node that hold ``path`` open (torch's FileBaton keeps its lock's fd open while it builds):
    [] where /proc cannot tell (another OS, another user's processes)."""
    target = os.path.realpath(path)
    found = []
    with contextlib.suppress(OSError):
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            found.append(int(pid))
                            break
    return found


@contextlib.contextmanager
def _building(marker: Path):
    """The marker of an ftctl load in progress, touched every HEARTBEAT_S (another node tells a live build from a
    killed one by it where flocks do not reach across nodes); removed once the load ends, however it ends."""
    try:
        marker.write_text(json.dumps(_me()))
    except OSError:
        yield
        return
    done = threading.Event()

    def touch():
        while not done.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(marker)

    beat = threading.Thread(target=touch, name="ftctl-op-build", daemon=True)
    beat.start()
    try:
        yield
    finally:
        done.set()
        beat.join()
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()


def _write(fh, who: dict) -> None:
    with contextlib.suppress(OSError):
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(who))
        fh.flush()


def _read(path: Path) -> dict | None:
    try:
        who = json.loads(path.read_text())
        return who if {"host", "pid"} <= set(who) else None
    except (OSError, ValueError, TypeError):
        return None


def main(argv: list[str]) -> int:
    """``python -m ftctl.trainer.op_build cpu_adam``: build (or load) the op now, as a run would (scripts/test.sh)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in argv or ["cpu_adam"]:
        if name not in BUILDERS:
            print(f"unknown op {name!r}: ftctl loads {', '.join(BUILDERS)}", file=sys.stderr)
            return 2
        try:
            load_deepspeed_op(name)
        except BUILD_ERRORS as e:
            print(f"error: {not_built(name, e)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
