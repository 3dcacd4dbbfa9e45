"""`ftctl sync push` / `pull` of many checkpoints to and from a store send (fetch) several at once (sync.AT_ONCE), and
what they leave and say is what one after another left and said: each checkpoint's manifest after its files, the lines
in the checkpoints' order, one error where several fail, a failed checkpoint incomplete and the others complete."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl import storage
from ftctl.checkpoints import list_checkpoints, manifest, sync, upload, write_manifest
from tests.s3_fixtures import make_checkpoint

STEPS, STEPS40 = range(1, 25), range(1, 41)


class Refused(Exception):
    """A store's failure that no other test's store raises."""


def run_of(tmp_path: Path, steps) -> Path:
    run = tmp_path / "run"
    for step in steps:
        ckpt = make_checkpoint(run, step, files={"model.safetensors": os.urandom(64), "trainer_state.json": b"{}"})
        write_manifest(str(ckpt), step, 1, "spec-227")
    make_checkpoint(run, 99, files={"model.safetensors": b"w"})  # incomplete (no manifest): warned of, never sent
    return run


def at_most(mp: pytest.MonkeyPatch, module, name: str) -> list[int]:
    """Wrap ``module.name`` to note how many calls of it were under way at once (each held 10 ms more): [the most]."""
    real, lock, now, most = getattr(module, name), threading.Lock(), [0], [0]

    def counted(*args, **kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.01)
            return real(*args, **kwargs)
        finally:
            with lock:
                now[0] -= 1

    mp.setattr(module, name, counted)
    return most


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_push_and_pull_of_24_checkpoints_at_once_are_those_of_one_after_another(s3_bucket, tmp_path):
    run = run_of(tmp_path, STEPS)
    said, stores, pulled = {}, {}, {}
    for at_once in (1, sync.AT_ONCE):
        uri, dest = f"{s3_bucket}/run{at_once}", tmp_path / f"pulled{at_once}"
        lines: list[str] = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sync, "AT_ONCE", at_once)
            sends, fetches = at_most(mp, sync, "upload_checkpoint"), at_most(mp, sync, "download_checkpoint")
            sent = sync.push(str(run), uri, echo=lines.append)
            assert sent == [f"{uri}/checkpoint-{step}" for step in STEPS]
            sync.pull(uri, str(dest), echo=lines.append)
        assert sends[0] == fetches[0] == at_once  # one after another, or AT_ONCE at a time
        said[at_once] = [line.replace(uri, "URI").replace(str(dest), "DEST") for line in lines]
        assert [(c.step, c.complete) for c in list_checkpoints(uri)] == [(step, True) for step in STEPS]
        stores[at_once] = {rel: size for rel, size in storage.file_sizes(uri).items()}
        pulled[at_once] = tree(dest)
        assert not (dest / ".ftctl-download").exists()
    assert said[1] == said[sync.AT_ONCE]
    assert said[1][:2] == ["pushed checkpoint-1 -> URI/checkpoint-1", "pushed checkpoint-2 -> URI/checkpoint-2"]
    assert said[1][24:26] == [
        "pulled URI/checkpoint-1 -> DEST/checkpoint-1",
        "pulled URI/checkpoint-2 -> DEST/checkpoint-2",
    ]
    assert stores[1] == stores[sync.AT_ONCE] and len(stores[1]) == len(STEPS) * 3
    assert pulled[1] == pulled[sync.AT_ONCE] == {rel: data for rel, data in tree(run).items() if "-99" not in rel}


def test_a_checkpoint_that_fails_stays_incomplete_the_others_complete_and_one_error_is_raised(s3_bucket, tmp_path):
    """checkpoint-20's second file is refused, checkpoint-30 is cut off before its manifest: the push raises
    checkpoint-20's error alone; neither counts as complete in the store; every checkpoint before 20 (under way
    before it failed) is complete, each one it said it pushed too, and nothing after the failure started. A second
    push sends the rest."""
    run = run_of(tmp_path, STEPS40)
    uri = f"{s3_bucket}/run"
    refused = Refused("the store refused it")
    real_put = upload._put

    def put(fs, local, dest):
        if dest.endswith("checkpoint-20/trainer_state.json"):
            raise refused
        real_put(fs, local, dest)

    def hook(point, name):
        if (point, name) == ("remote-manifest", "checkpoint-30"):
            raise Refused("cut off")

    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Refused) as got:
        mp.setattr(upload, "_put", put)
        mp.setattr(manifest, "HOOKS", [*manifest.HOOKS, hook])
        sync.push(str(run), uri, echo=lines.append)
    assert got.value is refused
    state = {c.step: c.complete for c in list_checkpoints(uri)}
    assert state[20] is False and state.get(30) is not True
    assert all(state[step] for step in range(1, 20))
    pushed = [int(line.split()[1].split("-")[1]) for line in lines]
    assert pushed == sorted(pushed) and all(state[step] for step in pushed) and 20 not in pushed
    assert max(state) <= 20 + 2 * (sync.AT_ONCE - 1)  # nothing starts after the failure: those under way finish

    lines.clear()
    sync.push(str(run), uri, echo=lines.append)
    assert lines == [f"pushed checkpoint-{step} -> {uri}/checkpoint-{step}" for step in STEPS40 if step not in pushed]
    assert [(c.step, c.complete) for c in list_checkpoints(uri)] == [(step, True) for step in STEPS40]


def test_a_store_that_refuses_every_checkpoint_under_way_is_one_line(s3_bucket, moto_s3, tmp_path):
    """A store that refuses writes (a bucket policy): eight checkpoints fail at once, the push says it in one line."""
    import json

    from ftctl.cli import main

    run = run_of(tmp_path, range(1, 13))
    bucket = s3_bucket.split("://")[1]
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    moto_s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
    got = CliRunner().invoke(main, ["sync", "push", str(run), f"{s3_bucket}/run"])
    assert got.exit_code != 0 and got.exception is not None and isinstance(got.exception, SystemExit)
    errors = [line for line in got.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"Access denied to {s3_bucket}/run" in errors[0], got.output
    assert "Traceback" not in got.output and "pushed" not in got.output
