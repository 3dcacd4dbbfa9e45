"""A real Hugging Face cache on disk for a test (HF_HOME / HF_HUB_CACHE in tmp_path: blobs, snapshots linking them,
refs, as huggingface_hub writes them), and a Hub that does not answer (HF_ENDPOINT at the discard port): a tiny random
Llama at two commits whose configs (1 layer, 2 layers) and tokenizers' eos (<eos1>, <eos2>) tell them apart. Helper
275's fixtures (tests/test_revision275.py), shared: `from tests.hf_cache_fixtures import hf_cache, two_commits`. And
hub_api: a stand-in of the Hub's model_info endpoint on loopback, which the real huggingface_hub client asks."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from ftctl import hub

REPO = "org-275/tiny"
ONE_LAYER = hashlib.sha1(b"one layer").hexdigest()  # main at first, and the tag v1.0
TWO_LAYERS = hashlib.sha1(b"two layers").hexdigest()  # main after it moved


def _tiny_model(out: Path, layers: int) -> Path:
    """A tiny random Llama (safetensors) with ``layers`` layers, and a word-level tokenizer whose eos is
    ``<eos{layers}>``: how the tests tell the commits apart."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    words = Tokenizer(models.WordLevel({"<unk>": 0, f"<eos{layers}>": 1, "hi": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token=f"<eos{layers}>", unk_token="<unk>").save_pretrained(out)
    return out


def _snapshot(cache: Path, repo: str, sha: str, files: Path) -> None:
    """``files`` as huggingface_hub's cache holds a commit: each file a blob, linked from snapshots/<sha>/."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for f in files.iterdir():
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / sha / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "blobs", blob.name))


def _ref(cache: Path, repo: str, name: str, sha: str) -> None:
    ref = cache / f"models--{repo.replace('/', '--')}" / "refs" / name
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(sha)  # (huggingface_hub writes it without a newline)


def _clear_caches():
    from ftctl.trainer import model

    hub.model_config.cache_clear()
    hub.unreachable.cache_clear()
    model._from_cache_offline.cache_clear()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own, and a Hub that does not answer."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(home))  # (huggingface_hub reads both at import)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused, at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    _clear_caches()
    yield cache
    _clear_caches()


@pytest.fixture
def two_commits(hf_cache, tmp_path_factory):
    """REPO in the cache at two commits: main and the tag v1.0 at ONE_LAYER's, TWO_LAYERS' beside them."""
    models = tmp_path_factory.mktemp("models")
    _snapshot(hf_cache, REPO, ONE_LAYER, _tiny_model(models / "one", 1))
    _snapshot(hf_cache, REPO, TWO_LAYERS, _tiny_model(models / "two", 2))
    _ref(hf_cache, REPO, "main", ONE_LAYER)
    _ref(hf_cache, REPO, "v1.0", ONE_LAYER)
    _ref(hf_cache, REPO, "refs/pr/1", TWO_LAYERS)
    return hf_cache


class _ModelInfo(BaseHTTPRequestHandler):
    """The Hub's model_info (GET /api/models/ORG/NAME/revision/REV) for REPO: the revisions of the server's
    ``commits`` known, others not (RevisionNotFound), other repositories none (RepoNotFound); each path asked is kept
    in the server's ``asked``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = unquote(self.path.split("?")[0])
        self.server.asked.append(path)
        prefix = f"/api/models/{REPO}/revision/"
        rev = path[len(prefix) :] if path.startswith(prefix) else None
        if rev is None:
            status, body, code = 404, {"error": "Repository not found"}, "RepoNotFound"
        elif rev in self.server.commits:
            status, body, code = 200, {"id": REPO, "sha": self.server.commits[rev], "siblings": []}, None
        else:
            status, body, code = 404, {"error": f"Invalid rev id: {rev}"}, "RevisionNotFound"
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def hub_api(hf_cache, monkeypatch):
    """The Hub answering (HF_ENDPOINT at a loopback stand-in of its model_info): REPO's main is TWO_LAYERS', its v2
    ONE_LAYER's (the server's ``commits``, which a test may change); ``asked`` lists the paths it was asked."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelInfo)
    server.commits, server.asked = {"main": TWO_LAYERS, "v2": ONE_LAYER}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    _clear_caches()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
