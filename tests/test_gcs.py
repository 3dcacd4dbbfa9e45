"""A gs:// output for real: the tiny model trains into a bucket of gcp-storage-emulator (tests/gcs_fixtures.py), reached
as a user on GCP reaches GCS, through gcsfs; `ftctl sync ls` lists it, a fresh node resumes from it, the trainer's
lease lives there, and a store that is missing or down is one line."""

from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from ftctl import lease, storage
from ftctl.cli import main
from ftctl.errors import FtctlError
from tests.gcs_fixtures import GcsEmulator, wait_until
from tests.trainer_fixtures import make_run


def test_a_run_into_gs_uploads_lists_and_resumes_on_a_fresh_node(
    tiny_model_dir, tiny_data, tmp_path, one_thread, gcs_bucket, monkeypatch, caplog
):
    from ftctl.trainer.run import train

    uri = f"{gcs_bucket}/run"
    caplog.set_level(logging.INFO)
    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=2, save_steps=1, resume="auto",
                          lora_r=4, lora_alpha=8)  # fmt: skip
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-a"))
    first = train(spec, plan, echo=lambda *_: None)
    assert first.status == "complete" and first.global_step == 2
    names = {e["name"] for e in storage.ls(uri)}
    assert {"checkpoint-1", "checkpoint-2", "adapter_model.safetensors"} <= names, names

    said = CliRunner().invoke(main, ["sync", "ls", uri])
    assert said.exit_code == 0, said.output
    rows = [line.split()[:4] for line in said.output.splitlines() if line.startswith("checkpoint-")]
    assert rows == [["checkpoint-1", "step", "1", "complete"], ["checkpoint-2", "step", "2", "complete"]], said.output

    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=3, save_steps=1, resume="auto",
                          lora_r=4, lora_alpha=8)  # fmt: skip
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-b"))  # a fresh node: nothing of the run on its disk
    second = train(spec, plan, echo=lambda *_: None)
    assert second.status == "complete" and second.global_step == 3
    assert "checkpoint-2" in caplog.text and "resum" in caplog.text.lower()
    assert "checkpoint-3" in {e["name"] for e in storage.ls(uri)}
    assert "Could not determine bucket type" not in caplog.text
    assert not storage.exists(lease.uri_of(uri))  # the trainer's lease let go as it ended


def put_lease(output: str, **record) -> None:
    fs, path = storage.filesystem(lease.uri_of(output))
    fs.pipe_file(path, json.dumps(record).encode())


def test_the_lease_in_gs_is_claimed_renewed_refused_to_a_second_trainer_and_released(gcs_bucket, monkeypatch):
    """The lease's version on GCS is its generation (ifGenerationMatch; this emulator ignores conditions: they are
    tested against fake-gcs-server in test_gcs_conditions.py, and the lease says so once here); its age is GCS's own clock (the metadata answer's Date less the object's ``updated``), as S3's Date less
    LastModified: a live trainer's lease whose writer's clock is 10 minutes behind was read as 600 s old, stale,
    and a second launch went ahead into its output."""
    out = f"{gcs_bucket}/runs/r1"
    first = lease.Holder(out, None, "r1", renew_s=0.3)
    first.take()
    try:
        held, etag = lease.read_tagged(out)
        assert held["holder"] == first.id and etag.isdigit() and held[lease.STORE_AGE] < 5
        renewed = held["renewed_unix"]
        assert wait_until(lambda: lease.read(out)["renewed_unix"] != renewed, 10)  # renewed by its thread

        monkeypatch.setattr(lease, "holder_id", lambda environ=None: "SkyPilot task sky-other_2")
        second = lease.Holder(out, None, "r1", renew_s=0.3)
        with pytest.raises(FtctlError, match=r"is being trained into by process .*: not training"):
            second.take()
        assert lease.refusal(out).startswith(f"{out} is being trained into by process ")
    finally:
        first.close()
    assert lease.read(out) is None and lease.refusal(out) is None  # released as it ended

    put_lease(out, holder="Slurm job 7", renewed_unix=time.time() - 600)  # a live writer whose clock is 10 min behind
    said = lease.refusal(out)
    assert said and said.startswith(f"{out} is being trained into by Slurm job 7 (renewed 0 s ago)"), said


def test_a_missing_bucket_and_a_down_emulator_are_one_line(gcs_bucket, gcs_emulator, tmp_path, monkeypatch, caplog):
    """`ftctl sync ls` of gs://: a bucket that is not there, then an emulator that is down (killed: its port refuses),
    each one line naming it and STORAGE_EMULATOR_HOST; gcsfs's own "out of retries" record (ERROR, with a traceback)
    is not printed before it."""
    import gcsfs.retry

    said = CliRunner().invoke(main, ["sync", "ls", "gs://no-such-bucket/run"])
    assert said.exit_code != 0 and said.output == (
        f"error: No bucket 'no-such-bucket' at the GCS emulator at {gcs_emulator.endpoint}: create it, or fix the "
        "bucket name in gs://no-such-bucket/run (or STORAGE_EMULATOR_HOST if it lives on another store).\n"
    ), said.output

    down = GcsEmulator(tmp_path / "down")
    down.start()
    down.kill()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", down.endpoint)

    async def no_pause(_seconds):  # gcsfs's 6 tries pause 1+2+4+8+16 s between them
        return None

    monkeypatch.setattr(gcsfs.retry, "asyncio", SimpleNamespace(sleep=no_pause))
    said = CliRunner().invoke(main, ["sync", "ls", "gs://b/run"])
    assert said.exit_code != 0 and said.output == (
        f"error: Cannot reach the GCS emulator at {down.endpoint} for gs://b/run: check STORAGE_EMULATOR_HOST (is "
        "the store running there?) and the network.\n"
    ), said.output
    assert not [r for r in caplog.records if r.name.startswith("gcsfs") and r.levelno >= logging.ERROR]


def test_a_job_elsewhere_gets_the_gcs_emulator_by_name():
    """docker (-e NAME) and SkyPilot (secrets) pass the store's variables by name: STORAGE_EMULATOR_HOST is gcsfs's
    endpoint, as AWS_ENDPOINT_URL is S3's (Slurm exports the environment)."""
    env = {"STORAGE_EMULATOR_HOST": "http://10.0.0.5:4443", "AWS_ENDPOINT_URL": "http://x"}
    assert storage.job_env(["gs://b/run"], files=False, environ=env) == ["STORAGE_EMULATOR_HOST"]


def test_gcs_itself_unreachable_names_the_network_not_an_emulator(gcs_env):
    said = str(storage.storage_error("unreachable", "gs://b/run"))
    assert said == (
        "Cannot reach Google Cloud Storage for gs://b/run: check the network (proxy, firewall: the nodes need "
        "storage.googleapis.com)."
    )


def test_a_silent_gcs_endpoint_is_given_up_on(gcs_env, monkeypatch):
    """A GCS endpoint that accepts and never answers (a hung emulator, a proxy that swallows requests) held a read of
    the lease or `ftctl sync ls` forever: gcsfs passes no timeout to aiohttp. Now S3_LIMITS' connect_s and read_s
    apply (here "ask": 0.5 s) to each of gcsfs's tries (their pauses left out here): given up after 12 waits."""
    import gcsfs.retry

    from tests.s3_fixtures import SilentEndpoint, within

    async def no_pause(_seconds):
        return None

    monkeypatch.setattr(gcsfs.retry, "asyncio", SimpleNamespace(sleep=no_pause))
    monkeypatch.setitem(storage.S3_LIMITS, "ask", storage.S3Limits(connect_s=0.5, read_s=0.5, attempts=1, tries=1))
    server = SilentEndpoint()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        with pytest.raises(Exception) as e:
            within(20, storage.read_text, "gs://b/run/trainer_state.json")
        said = storage.store_error(e.value, "gs://b/run/trainer_state.json")
        assert said is not None and said.kind == "timeout", repr(e.value)
        assert server.requests == 12  # gcsfs's 6 tries of the object's metadata, then 6 of its bytes
    finally:
        server.close()
