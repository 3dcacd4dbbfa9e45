"""A checkpoint's files go to a store, and come back from it, several at once (storage.FILES_AT_ONCE), with what one
after another guaranteed: the manifest only after every file is in (and sized), a failed file one error and no
manifest, a download moved into place only whole, nothing left writing once it returns."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ftctl import storage
from ftctl.checkpoints import manifest, resume, upload, write_manifest
from tests.s3_fixtures import make_checkpoint

#: 3 large-ish files, a DeepSpeed-like folder of per-rank shards, and small ones
FILES = {
    "model-00001-of-00002.safetensors": 300_000,
    "model-00002-of-00002.safetensors": 200_000,
    "optimizer.pt": 150_000,
    **{f"global_step7/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt": 20_000 + r for r in range(8)},
    **{f"rng_state_{r}.pth": 100 + r for r in range(8)},
    "trainer_state.json": 40,
    "config.json": 30,
}


class Refused(Exception):
    """A store's failure of one file."""


def checkpoint(tmp_path: Path) -> Path:
    files = {rel: os.urandom(size) for rel, size in FILES.items()}
    ckpt = make_checkpoint(tmp_path / "run", 7, files=files)
    write_manifest(str(ckpt), 7, 1, "spec-232")
    return ckpt


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Watch:
    """Wraps ``module.name`` (a transfer of one file, ``local`` or ``uri`` its 1st or 2nd argument): notes the most
    under way at once, the order they finished, and raises ``Refused`` for a file whose name ends with ``fail``."""

    def __init__(self, mp: pytest.MonkeyPatch, module, name: str, fail: str | None = None, hold: float = 0.02):
        self.real, self.fail, self.hold = getattr(module, name), fail, hold
        self.lock, self.now, self.most, self.started, self.finished = threading.Lock(), 0, 0, [], []
        mp.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        path = str(args[1] if len(args) > 1 else args[0])
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(path)
        try:
            time.sleep(self.hold)
            if self.fail and path.endswith(self.fail):
                raise Refused(f"the store refused {self.fail}")
            out = self.real(*args, **kwargs)
            with self.lock:
                self.finished.append(path)
            return out
        finally:
            with self.lock:
                self.now -= 1


def test_a_checkpoint_of_many_files_goes_up_and_comes_down_several_at_once_whole(s3_bucket, tmp_path):
    ckpt = checkpoint(tmp_path)
    uri = f"{s3_bucket}/run/checkpoint-7"
    with pytest.MonkeyPatch.context() as mp:
        puts = Watch(mp, upload, "_put")
        upload.upload_checkpoint(str(ckpt), uri)
    assert puts.most == storage.FILES_AT_ONCE  # was 1: one file after another
    assert puts.finished[-1].endswith(manifest.MANIFEST)  # the manifest last, started once every file was in
    assert puts.started.index(puts.finished[-1]) == len(FILES)
    assert storage.file_sizes(uri) == {rel: len(data) for rel, data in tree(ckpt).items()}
    dest = tmp_path / "resumed"
    with pytest.MonkeyPatch.context() as mp:
        gets = Watch(mp, storage, "get_file")
        assert resume.download_checkpoint(uri, str(dest)) == []
    assert gets.most == storage.FILES_AT_ONCE
    assert tree(dest / "checkpoint-7") == tree(ckpt)  # byte for byte, its manifest too
    assert not (dest / manifest.DOWNLOAD_DIR).exists()


def test_a_file_the_store_refuses_fails_the_checkpoint_once_with_no_manifest_and_a_retry_sends_the_rest(
    s3_bucket, tmp_path
):
    ckpt = checkpoint(tmp_path)
    uri = f"{s3_bucket}/run/checkpoint-7"
    done: set[str] = set()
    with pytest.MonkeyPatch.context() as mp:
        puts = Watch(mp, upload, "_put", fail="optimizer.pt")
        with pytest.raises(Refused, match="refused optimizer.pt"):
            upload.upload_checkpoint(str(ckpt), uri, done=done)
    assert manifest.MANIFEST not in storage.file_sizes(uri)
    assert "optimizer.pt" not in done and len(done) == len(puts.finished)
    assert len(puts.started) < len(FILES)  # none more started after the failure
    with pytest.MonkeyPatch.context() as mp:
        again = Watch(mp, upload, "_put")
        upload.upload_checkpoint(str(ckpt), uri, done=done)  # the Uploader's next try: what is not in yet
    assert len(again.started) == len(FILES) - len(puts.finished) + 1  # and the manifest
    assert storage.file_sizes(uri) == {rel: len(data) for rel, data in tree(ckpt).items()}


def test_a_download_with_a_file_gone_leaves_nothing_and_nothing_writing_after_it_returns(s3_bucket, tmp_path):
    ckpt = checkpoint(tmp_path)
    uri = f"{s3_bucket}/run/checkpoint-7"
    upload.upload_checkpoint(str(ckpt), uri)
    storage.rm(f"{uri}/rng_state_3.pth")
    dest = tmp_path / "resumed"
    with pytest.MonkeyPatch.context() as mp:
        gets = Watch(mp, storage, "get_file", hold=0.2)
        problems = resume.download_checkpoint(uri, str(dest))
    assert len(problems) == 1 and "vanished" in problems[0] and "rng_state_3.pth" in problems[0]
    assert gets.most == storage.FILES_AT_ONCE and len(gets.started) < len(FILES)
    time.sleep(0.3)  # a transfer still under way would write into the download folder now
    assert not (dest / "checkpoint-7").exists() and not (dest / manifest.DOWNLOAD_DIR / "checkpoint-7").exists()


def test_each_at_once_raises_the_first_failure_in_order_once_those_under_way_are_done():
    started, finished = [], []

    def call(i: int) -> None:
        started.append(i)
        time.sleep(0.05 if i != 3 else 0.01)
        if i in (3, 2):
            raise Refused(f"item {i}")
        finished.append(i)

    with pytest.raises(Refused, match="item 2"):
        storage.each_at_once(call, range(20), 4)
    assert sorted(started) == [0, 1, 2, 3] and sorted(finished) == [0, 1]  # none started after item 3 failed


def test_a_final_model_goes_up_several_files_at_once_and_its_config_last(s3_bucket, tmp_path):
    run = tmp_path / "run"
    shards = {f"model-0000{i}-of-00006.safetensors": os.urandom(50_000) for i in range(1, 7)}
    for rel, data in {**shards, "tokenizer.json": b"{}", "config.json": b"{}"}.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        puts = Watch(mp, upload, "_put")
        up = upload.Uploader(f"{s3_bucket}/out", backoff=(0.1, 0.5))
        up.submit_final(str(run))
        assert up.close(30)
    assert puts.most == storage.FILES_AT_ONCE
    assert puts.started[-1].endswith("/config.json") and len(puts.finished) == len(puts.started) == 8
    assert storage.read_bytes(f"{s3_bucket}/out/model-00006-of-00006.safetensors") == shards[next(reversed(shards))]
