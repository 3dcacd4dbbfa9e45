"""Test-only: the FTCTL_TEST_HOLD hook (installed in child processes by tests/hold/sitecustomize.py).

``FTCTL_TEST_HOLD=<point>:<checkpoint>:<file>`` makes the process, on reaching ``point``
(``local-manifest``: all files saved, manifest not yet written; ``remote-manifest``: all files
uploaded, manifest not yet uploaded) for the checkpoint named ``checkpoint`` (``*``: the first), create ``file`` and
wait until it is deleted, so a test can SIGKILL it or stop the store at exactly that moment.
Production code only calls ``ftctl.checkpoints.HOOKS``, which is empty outside the tests.
"""

import os
import time

_HELD: set = set()


def hold(point: str, name: str) -> None:
    spec = os.environ.get("FTCTL_TEST_HOLD")
    if not spec:
        return
    want_point, want_name, ready = spec.split(":", 2)
    if want_point != point or want_name not in (name, "*") or ready in _HELD:
        return
    _HELD.add(ready)
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(ready):
        time.sleep(0.02)


def install() -> None:
    from ftctl.checkpoints import HOOKS

    if hold not in HOOKS:
        HOOKS.append(hold)
