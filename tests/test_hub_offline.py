"""A base named by its Hub id, in the Hugging Face cache, on a node that cannot reach the Hub and has no
HF_HUB_OFFLINE (a university cluster's compute node): transformers asked the Hub of each of the model's files before
reading the cache, huggingface_hub trying each five times with backoff (169 s for the tiny model before a step). The
trainer now asks the Hub once, briefly, and loads the cached snapshot, saying so once."""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import threading

import pytest

from tests.s3_fixtures import free_port
from tests.trainer_fixtures import make_run

HUB_ID = "ftctl-test/tiny"


@pytest.fixture
def cached_hub_model(tiny_model_dir, tmp_path, monkeypatch):
    """``HUB_ID`` in a fresh Hugging Face cache (as `hf download` leaves it), HF_HUB_OFFLINE unset; the lookups of
    this test's process are forgotten before and after."""
    from ftctl import hub
    from ftctl.trainer import model

    snapshot = tmp_path / "hub" / "models--ftctl-test--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY", True)
    for cached in (hub.unreachable, hub.model_config, model._from_cache_offline):
        cached.cache_clear()
    yield snapshot
    for cached in (hub.unreachable, hub.model_config, model._from_cache_offline):
        cached.cache_clear()


def test_a_cached_hub_model_trains_at_once_on_a_node_without_the_hub(
    cached_hub_model, tiny_data, tmp_path, monkeypatch, caplog
):
    from ftctl.trainer.run import train

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    out = tmp_path / "run"
    spec, plan = make_run(HUB_ID, tiny_data, out, "lora", max_steps=1, save_steps=1, lora_r=4)
    with caplog.at_level(logging.WARNING, logger="ftctl.trainer.model"):
        train(spec, plan, echo=lambda line: None)
    said = [r.getMessage() for r in caplog.records if "Hugging Face cache" in r.getMessage()]
    assert len(said) == 1, said
    assert "did not answer" in said[0] and "HF_HUB_OFFLINE=1" in said[0] and str(cached_hub_model) in said[0]
    # the adapter still names its base as the user did, not the cache's directory on this node
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 - http.server's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_hub_that_answers_and_a_cache_without_weights_load_as_named(cached_hub_model, monkeypatch):
    """Where the Hub answers (whatever it says), transformers loads the id as before (newer files too); where the
    cache holds its config but not its weights (the planner's question), the id is loaded as named too."""
    from ftctl import hub
    from ftctl.trainer.model import _from_cache_offline, resolve_model

    server = http.server.HTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert resolve_model(HUB_ID) == HUB_ID
    finally:
        server.shutdown()
    hub.unreachable.cache_clear()
    _from_cache_offline.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert resolve_model(HUB_ID) == str(cached_hub_model)
    _from_cache_offline.cache_clear()
    (cached_hub_model / "model.safetensors").unlink()
    assert resolve_model(HUB_ID) == HUB_ID
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub reads its cache itself: nothing asked
    _from_cache_offline.cache_clear()
    hub.unreachable.cache_clear()
    assert resolve_model(HUB_ID) == HUB_ID and hub.unreachable.cache_info().currsize == 0
