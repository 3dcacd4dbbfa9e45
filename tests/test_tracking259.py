"""W&B on a node without internet, and the run's own settings in W&B and TensorBoard (ftctl.trainer.tracking;
explore55, /work/notes/explore55-tracking.md). No network: W&B's server is a closed or a local port."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time

import pytest

from ftctl.trainer.tracking import run_name, wandb_offline
from tests.trainer_fixtures import make_run

pytest.importorskip("wandb")


def _closed_port_url() -> str:
    """A local URL nothing listens on: connection refused at once, as on a node whose firewall rejects."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def answering_url():
    """A local server that answers every request 401, as W&B's does a HEAD without a key: reachable."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_node_that_cannot_reach_wandb_logs_offline_and_says_how_to_sync(tmp_path, answering_url):
    closed = {"WANDB_BASE_URL": _closed_port_url()}
    env, said = wandb_offline("wandb,tensorboard", str(tmp_path / "out"), closed)
    assert env == {"WANDB_MODE": "offline"}
    assert closed["WANDB_BASE_URL"] in said and "refused" in said
    assert f"wandb sync {tmp_path / 'out'}/wandb/offline-run-*" in said
    _, said = wandb_offline("wandb", "s3://bucket/run", closed)
    assert "into s3://bucket/run/wandb/" in said and "wandb sync wandb/offline-run-* of a copy of it" in said

    assert wandb_offline("wandb", str(tmp_path), {"WANDB_BASE_URL": answering_url}) == ({}, None)  # it answered
    with socket.socket() as silent:  # a server that takes the connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env, said = wandb_offline("wandb", str(tmp_path), {"WANDB_BASE_URL": url}, timeout_s=0.3)
        assert env == {"WANDB_MODE": "offline"} and f"{url} cannot be reached" in said
    for mode in ("online", "offline", "disabled"):  # the user's choice, not asked about
        assert wandb_offline("wandb", str(tmp_path), {**closed, "WANDB_MODE": mode}) == ({}, None)
    assert wandb_offline("tensorboard", str(tmp_path), closed) == ({}, None)
    assert wandb_offline("none", str(tmp_path), closed) == ({}, None)


def test_a_name_lookup_that_hangs_is_waited_for_no_longer_than_the_timeout(monkeypatch):
    """urlopen's timeout is each socket's, not the name lookup's: a node whose DNS does not answer for external
    names waited the resolver's timeouts (tens of seconds) before W&B's own wait."""
    lookup = socket.getaddrinfo

    def slow_lookup(*args, **kwargs):
        time.sleep(3)
        return lookup(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    started = time.monotonic()
    env, said = wandb_offline("wandb", "/out", {"WANDB_BASE_URL": "http://wandb.invalid"}, timeout_s=0.3)
    assert time.monotonic() - started < 2  # not the 3 s lookup
    assert env == {"WANDB_MODE": "offline"} and "(no answer in 0.3 s)" in said


def test_a_run_without_wandb_server_trains_offline_with_its_settings_in_wandb_and_tensorboard(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, caplog
):
    """WANDB_MODE unset, W&B's server refused: the run completes, logging to W&B offline in the output (before,
    wandb.init failed the run after its init_timeout), and both W&B's config and TensorBoard hold spec.json's
    spec and plan."""
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    for name in ("WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", _closed_port_url())
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # a user's key: W&B online would try its server
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")  # without the fix: fail in seconds, not W&B's 90
    seen = {}

    class Seen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen["mode"] = wandb.run.settings.mode
            seen["ftctl"] = dict(wandb.run.config["ftctl"])

    out = tmp_path / "out"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "fft", max_steps=2, save_steps=100, report_to="wandb,tensorboard"
    )
    try:
        with caplog.at_level(logging.WARNING):
            assert train(spec, plan, callbacks=[Seen()], echo=lambda line: None).status == "complete"
    finally:
        wandb.finish()
    assert "cannot be reached from this node" in caplog.text and "wandb sync" in caplog.text
    assert seen["mode"] == "offline" and len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert "WANDB_MODE" not in os.environ  # the trainer called in-process leaves the environment as it was

    written = json.loads((out / "spec.json").read_text())
    assert seen["ftctl"]["spec"]["data_path"] == str(tiny_data) == written["spec"]["data_path"]
    assert seen["ftctl"]["spec"]["output_dir"] == str(out) and seen["ftctl"]["plan"] == written["plan"]
    curves = EventAccumulator(str(out / "runs"), size_guidance={"tensors": 0})
    curves.Reload()
    (text,) = curves.Tensors("ftctl/spec.json/text_summary")
    assert str(tiny_data) in text.tensor_proto.string_val[0].decode()


def test_wandb_names_a_run_by_its_output_where_it_was_given_one(monkeypatch):
    """Two runs of one model into s3://b/lr-1e-4 and /scratch/me/lr-3e-4 were both ftctl-lora-m in W&B's list."""
    from ftctl.spec import build

    monkeypatch.delenv("WANDB_NAME", raising=False)
    given = {"model_name_or_path": "Org/M", "method": "lora"}
    assert run_name(build({**given, "output_dir": "s3://b/sweeps/lr-1e-4/"})) == "lr-1e-4"
    assert run_name(build({**given, "output_dir": "/scratch/me/lr-3e-4"})) == "lr-3e-4"
    assert run_name(build(given)) == "ftctl-lora-m"  # its output is runs/ftctl-lora-m
    assert run_name(build({**given, "output_dir": "s3://b/x", "run_name": "mine"})) == "mine"
    assert run_name(build({**given, "output_dir": "s3://b/x", "wandb_name": "shown"})) == "shown"


def test_a_stopped_attempt_is_preempted_in_wandb_not_finished(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """W&B reads an exit code 0 as a run that completed: a Slurm job preempted at step 1 of 4 showed "finished"
    there until (unless) its requeue resumed it. Now it is marked preempting and ends non-zero, W&B's contract."""
    import signal

    import wandb
    from transformers import TrainerCallback
    from wandb.sdk.wandb_run import Run

    from ftctl.trainer.run import train

    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    said = []
    marked = Run.mark_preempting
    monkeypatch.setattr(Run, "mark_preempting", lambda run: said.append("preempting") or marked(run))
    finish = wandb.finish
    monkeypatch.setattr(wandb, "finish", lambda exit_code=None, **kw: said.append(exit_code) or finish(exit_code, **kw))

    class Stop(TrainerCallback):  # what Slurm's --signal=B:USR2@lead does
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGUSR2)

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "fft", max_steps=4, save_steps=100,
                          report_to="wandb")  # fmt: skip
    try:
        assert train(spec, plan, callbacks=[Stop()], echo=lambda line: None).status == "preempted"
    finally:
        wandb.finish()
    assert said[:2] == ["preempting", 143]


def test_the_probe_asks_the_server_and_proxy_wandb_itself_uses(tmp_path, answering_url):
    """review-57b R1, R3, N1: a lab's own W&B server saved by `wandb login --host` (its settings file) was not asked,
    api.wandb.ai was, and a node that reaches only the lab's logged offline; W&B's own proxy (WANDB_HTTPS_PROXY) was
    not used; a server answering something that is not HTTP killed the probe's thread (a traceback, then "no answer
    in 5 s"); the line named OUTPUT/wandb where the user's WANDB_DIR holds W&B's files."""
    from ftctl.trainer.tracking import wandb_server

    config = tmp_path / "wandb"
    config.mkdir()
    (config / "settings").write_text(f"[default]\nbase_url = {answering_url}\n")
    assert wandb_server({"WANDB_CONFIG_DIR": str(config)}) == answering_url
    assert wandb_offline("wandb", str(tmp_path), {"WANDB_CONFIG_DIR": str(config)}) == ({}, None)
    assert wandb_server({"WANDB_CONFIG_DIR": str(tmp_path / "none")}) == "https://api.wandb.ai"
    # the lab's server only through W&B's proxy (WANDB_HTTP_PROXY for an http:// server, WANDB_HTTPS_PROXY for https):
    # the answering server stands in for the proxy, which answers for the server it forwards to
    behind = {"WANDB_BASE_URL": _closed_port_url(), "WANDB_HTTP_PROXY": answering_url}
    assert wandb_offline("wandb", str(tmp_path), behind) == ({}, None)
    assert wandb_offline("wandb", str(tmp_path), {**behind, "WANDB_HTTP_PROXY": ""})[0] == {"WANDB_MODE": "offline"}
    with socket.socket() as other:  # a server that answers, but not in HTTP
        other.bind(("127.0.0.1", 0))
        other.listen()

        def garble():
            conn, _ = other.accept()
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

        threading.Thread(target=garble, daemon=True).start()
        url = f"http://127.0.0.1:{other.getsockname()[1]}"
        assert wandb_offline("wandb", str(tmp_path), {"WANDB_BASE_URL": url}, timeout_s=2) == ({}, None)
    closed = {"WANDB_BASE_URL": _closed_port_url(), "WANDB_DIR": str(tmp_path / "mine")}
    _, said = wandb_offline("wandb", "s3://bucket/run", closed)
    assert f"into {tmp_path / 'mine'}/wandb/" in said and f"wandb sync {tmp_path / 'mine'}/wandb/offline-run-*" in said
