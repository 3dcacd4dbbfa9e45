"""Test-only: a child process started with PYTHONPATH=tests/hold:REPO installs the FTCTL_TEST_HOLD
hook (tests/hold_hook.py) before it runs anything."""

import os

if os.environ.get("FTCTL_TEST_HOLD"):
    from tests.hold_hook import install

    install()
