"""Helper 262: the preflight warning for a gated model where the Hub cannot be asked looks for a Hub token as
huggingface_hub does (get_token: HF_TOKEN, else the file `hf auth login` wrote: HF_TOKEN_PATH, else HF_HOME/token).
It looked at HF_TOKEN alone: a user who followed docs/configuration.md's Slurm advice (unset HF_TOKEN in the shell,
`hf auth login`, or -o env=HF_TOKEN_PATH=...) was told to export HF_TOKEN. A SkyPilot or docker job gets HF_TOKEN by
name only, so there it still asks for HF_TOKEN.

Each case runs in a process of its own environment (huggingface_hub reads its paths once, at its import), the Hub an
address nothing answers on, and the token files written where `hf auth login` writes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GATED = "meta-llama/Llama-3.1-8B"
NOBODY = "http://127.0.0.1:9"  # the Hub, unreachable: the gated-family check is what is left


def _env(tmp_path, **more) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"):
        env.pop(k, None)
    root = str(Path(__file__).resolve().parents[1])  # this checkout's ftctl, whatever the process's directory
    path = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": NOBODY, **more}


def _warnings(env: dict[str, str], **kwargs) -> list[str]:
    """check_model's warnings for the gated id, in a process of ``env``."""
    code = (
        "import json, sys; from ftctl.preflight import check_model; "
        f"print(json.dumps([f.what for f in check_model({GATED!r}, **json.loads(sys.argv[1]))]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _token(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hf_" + "Ab1" * 12)  # as `hf auth login` writes it: the token alone
    return str(path)


def test_the_token_hf_auth_login_saved_is_a_token(tmp_path):
    no_token = _env(tmp_path)
    (said,) = _warnings(no_token)
    assert said.endswith("no Hugging Face token is set (HF_TOKEN, or the one `hf auth login` saved)"), said
    elsewhere = _token(tmp_path / "secrets" / "hf-token")
    assert _warnings(no_token, job_vars={"HF_TOKEN_PATH": elsewhere}) == []  # -o env=HF_TOKEN_PATH=...
    (by_name,) = _warnings(no_token, token_by_name=True)
    assert by_name.endswith("is gated on the Hugging Face hub and HF_TOKEN is not set"), by_name

    _token(tmp_path / "hf-home" / "token")  # `hf auth login`: HF_HOME/token
    assert _warnings(no_token) == []
    assert _warnings(no_token, token_by_name=True) == [by_name]  # a SkyPilot job: the file stays here
    assert _warnings(_env(tmp_path / "other", HF_TOKEN_PATH=elsewhere)) == []


def test_a_slurm_launch_following_the_docs_is_not_told_to_export_hf_token(tmp_path):
    """docs/configuration.md: unset HF_TOKEN in the launching shell, keep the token in a file: -o env=HF_TOKEN_PATH."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    launch = [sys.executable, "-m", "ftctl", "launch", "--backend", "slurm", "--dry-run", "--model", GATED]
    launch += ["--data", str(data), "--gpus", "1xH100"]
    env = _env(tmp_path)  # no HF_TOKEN, no token file in HF_HOME (the warning then: the test above)
    path = _token(tmp_path / "secrets" / "hf-token")
    launch += ["-o", f"env=HF_TOKEN_PATH={path}"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "gated" not in done.stderr + done.stdout, done.stderr
