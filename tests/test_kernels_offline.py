"""No ftctl process asks the Hub for the optional kernels libraries fetch unasked (envvars.UNASKED_KERNELS).

transformers >= 5.25 installs `kernels`; with it, importing bitsandbytes on a CPU with AVX512-BF16 asked the Hub for
its CPU kernel with no timeout (HF_HUB_OFFLINE unset): on a network that drops packets every process of a run hung.
Here the "Hub" is a loopback port that accepts and never answers, so a process that asks it would hang: the test stops
it at its first connection instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ftctl import quiet
from ftctl.envvars import HUB_KERNELS_ENV, LOCAL_KERNELS_ENV, UNASKED_KERNELS, VERBOSE_ENV, no_unasked_kernels
from tests.tiny_fixtures import tiny_model_dir  # noqa: F401 (the fixture)
from tests.trainer_fixtures import REPO, subprocess_env

# what an ftctl process does first (quiet.install), then what bitsandbytes does at its import and what transformers'
# FlashAttention probes do: kernels.get_kernel of each
ASK = """
import json
from ftctl import quiet
quiet.install()
import bitsandbytes
from kernels import get_kernel
from ftctl.envvars import UNASKED_KERNELS
failed = {}
for repo in UNASKED_KERNELS:
    try:
        get_kernel(repo, version=1)
    except Exception as e:
        failed[repo] = type(e).__name__
print(json.dumps(failed))
"""


class SilentHub:
    """A TCP port on loopback that accepts connections and never answers; counts them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:  # closed
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_no_process_asks_the_hub_for_kernels_nobody_asked_for(tmp_path):
    pytest.importorskip("kernels", reason="without `kernels` (transformers < 5.25) no library fetches Hub kernels")
    hub = SilentHub()
    env = {
        k: v
        for k, v in subprocess_env().items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", LOCAL_KERNELS_ENV, "HF_TOKEN")
    }
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"))  # an empty cache: nothing to find but on the Hub
    proc = subprocess.Popen(
        [sys.executable, "-c", ASK], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not hub.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        asked = len(hub.accepted)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    finally:
        hub.close()
    assert asked == 0, f"asked the Hub ({hub.url}) for a kernel, where it would wait forever:\n{err[-3000:]}"
    assert proc.returncode == 0, err[-3000:]
    # each one refused at once from LOCAL_KERNELS (FileNotFoundError: no build in os.devnull), which the libraries catch
    assert json.loads(out.strip().splitlines()[-1]) == dict.fromkeys(UNASKED_KERNELS, "FileNotFoundError")


def test_the_default_is_set_with_verbose_too_and_a_users_own_value_is_kept(monkeypatch):
    monkeypatch.delenv(LOCAL_KERNELS_ENV, raising=False)
    monkeypatch.setenv(VERBOSE_ENV, "1")  # -v shows messages; the network default is no message
    quiet.install()
    assert os.environ[LOCAL_KERNELS_ENV] == no_unasked_kernels()[LOCAL_KERNELS_ENV]
    monkeypatch.setenv(LOCAL_KERNELS_ENV, "me/mine=/opt/kernels/mine")
    quiet.install()
    assert os.environ[LOCAL_KERNELS_ENV] == "me/mine=/opt/kernels/mine"


def test_transformers_flash_attention_stand_ins_are_all_kept_off_the_hub():
    """transformers' table of them, as this version has it (a new one after a bump: add it to UNASKED_KERNELS)."""
    from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_FALLBACK

    assert set(FLASH_ATTN_KERNEL_FALLBACK.values()) <= set(UNASKED_KERNELS)


def test_models_are_not_kernelized_with_hub_kernels_unasked(monkeypatch, tiny_model_dir):  # noqa: F811
    """transformers >= 5.25 loads every model with use_kernels=True where `kernels` is installed: on a GPU its layers
    (Llama's rotary embedding ...) are swapped for Hub kernels, which failed every GPU run on a node without the Hub
    (bench/NOTES.md v86). After ftctl's defaults a model loads without them; a user's USE_HUB_KERNELS=1 is kept."""
    pytest.importorskip("kernels", reason="without `kernels` (transformers < 5.25) no model is kernelized")
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(HUB_KERNELS_ENV, "1")
    assert AutoModelForCausalLM.from_pretrained(tiny_model_dir).use_kernels  # what transformers does unasked
    monkeypatch.delenv(HUB_KERNELS_ENV)
    quiet.install()
    assert os.environ[HUB_KERNELS_ENV] == "0"
    assert not AutoModelForCausalLM.from_pretrained(tiny_model_dir).use_kernels
    monkeypatch.setenv(HUB_KERNELS_ENV, "1")
    quiet.install()
    assert os.environ[HUB_KERNELS_ENV] == "1"
