"""Helper 183's patch (trainer/__main__.py, trainer/op_build.py, storage.py): a bad dataset's error said once a node
where no launcher collects the records; a CPU Adam build that fails says the compiler's own error, or the build
directory's, and what to do; tiny sizes said in KB or bytes, not "0.0 MB"."""

from __future__ import annotations

import subprocess

import pytest


def test_the_ranks_of_one_torchrun_say_the_same_error_once(tmp_path, monkeypatch, capsys):
    """Seen (task 125, and here: 2 gloo ranks by ftctl's torchrun, a dataset with a bad row): with no launcher
    collecting the failure records (Slurm, docker, torchrun by hand), each rank printed the same 2-line `error:`; a
    rank whose error differs still says its own."""
    from ftctl.envvars import FAILURE_DIR_ENV
    from ftctl.errors import FtctlError
    from ftctl.trainer.__main__ import Failure

    monkeypatch.delenv(FAILURE_DIR_ENV, raising=False)
    monkeypatch.delenv("FTCTL_STATUS_FILE", raising=False)
    attempt = tmp_path / "torchelastic_x" / "run_y" / "attempt_0"  # torchrun's, shared by its local ranks
    data = "1 of 1 rows with errors in the data d.jsonl; fix or remove these rows:\n  d.jsonl line 1: no conversation"
    disk = "no space left on the disk of /out"
    for rank, message in ((0, data), (1, data), (1, disk)):  # rank 1's own other error after
        (attempt / str(rank)).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / str(rank) / "error.json"))
        monkeypatch.setenv("RANK", str(rank))
        assert Failure(rank).report("config", message, 2, FtctlError(message)) == 2
    assert capsys.readouterr().err == f"error: {data}\nerror: {disk}\n"


def test_a_cpu_adam_build_that_fails_says_why_and_what_to_do(tmp_path, monkeypatch):
    """task 126 left: a CXX that does not answer --version (CXX=/bin/false: CalledProcessError) was a traceback line
    without the fix; a compile error said ninja's "build stopped: subcommand failed" (the compiler's words were in
    the exception, not "above"); a TORCH_EXTENSIONS_DIR that cannot hold the build said to install a compiler."""
    from ftctl.errors import FtctlError
    from ftctl.trainer import op_build

    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    monkeypatch.setenv("CXX", "/bin/false")

    def fails(name):
        raise subprocess.CalledProcessError(1, ["/bin/false", "--version"])

    monkeypatch.setattr(op_build, "load_deepspeed_op", fails)
    with pytest.raises(FtctlError) as got:
        op_build.prepare(offload)
    assert ": `/bin/false --version` exited with 1 (CXX=/bin/false). The node needs a C++ compiler" in str(got.value)
    assert str(got.value).endswith("; or train without offload: -o strategy=zero3 (more GPU memory).")
    assert op_build.main(["cpu_adam"]) == 1  # scripts/test.sh's prebuild: the same line, no traceback

    torch_said = (  # torch.utils.cpp_extension's RuntimeError (a compiler that answers --version, no Python.h)
        "Error building extension 'cpu_adam': [1/3] c++ -MMD -Wno-error=x -c cpu_adam.cpp -o cpu_adam.o \n"
        "FAILED: cpu_adam.o \nc++ -MMD -Wno-error=x -c cpu_adam.cpp -o cpu_adam.o \n"
        "cpu_adam.cpp:1:10: fatal error: Python.h: No such file or directory\n"
        "[2/3] c++ -c cpu_adam_impl.cpp\nninja: build stopped: subcommand failed.\n"
    )
    said = op_build.not_built("cpu_adam", RuntimeError(torch_said))
    assert (
        said.startswith("DeepSpeed's cpu_adam (the offloaded optimizer) did not compile on ")
        and ": cpu_adam.cpp:1:10: fatal error: Python.h: No such file or directory. The node needs" in said
    )
    assert ": /bin/sh: 1: g++: not found. The node" in op_build.not_built(
        "cpu_adam",
        RuntimeError(
            "Error building extension 'cpu_adam': [1/3] g++ -c a.cpp\nFAILED: a.o\n"
            "g++ -c a.cpp -o a.o\n/bin/sh: 1: g++: not found\nninja: build stopped: x.\n"
        ),
    )

    afile = tmp_path / "afile"
    afile.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(afile))
    said = op_build.not_built("cpu_adam", NotADirectoryError(20, "Not a directory", str(afile / "cpu_adam")))
    assert f"cannot be built in {afile / 'cpu_adam'} on " in said and said.endswith(
        f"(Not a directory): set TORCH_EXTENSIONS_DIR to a directory this user can write there (TORCH_EXTENSIONS_DIR "
        f"is {afile}); or train without offload: -o strategy=zero3 (more GPU memory)."
    )
    missing = op_build.not_built("cpu_adam", FileNotFoundError(2, "No such file or directory", "c++"))
    assert "did not compile" in missing and "No such file or directory: 'c++'" in missing  # the compiler, not the dir


def test_small_sizes_are_said_in_kb_or_bytes_not_as_nothing():
    """task 125: a tiny run's data cache was said to take "0.0 MB", a full disk's free space "0.0 MB free"."""
    from ftctl.storage import size_text

    said = [size_text(n) for n in (0, 512, 1_000, 48_000, 50_000, 1_234_567, 99_999_999, 1.5e9)]
    assert said == ["0 bytes", "512 bytes", "1 KB", "48 KB", "0.1 MB", "1.2 MB", "100.0 MB", "1.5 GB"]
