"""An object written again while it is read (a lease its holder renews every renew_s): s3fs reads by the ETag its
HEAD answered and raises FileExpired when the bytes asked for are another version's. The reader asks again and gets
the new one; it failed test_lease's renewal check (and would fail a launch's look at a live lease) with a traceback."""

from __future__ import annotations

from ftctl import storage


def test_a_file_rewritten_between_its_head_and_its_read_is_read_again(s3_bucket, monkeypatch):
    uri = f"{s3_bucket}/runs/r/.ftctl/train-lease"
    fs, path = storage.filesystem(uri)
    fs.pipe_file(path, b'{"renewed_unix": 1}')
    real = storage.filesystem
    rewrites = []

    def rewriting(*args, **kwargs):  # the holder renews right after the reader's HEAD, once
        fs, path = real(*args, **kwargs)
        opened = fs.open

        def open_then_renew(p, mode="rb", **kw):
            f = opened(p, mode, **kw)
            if not rewrites:
                rewrites.append(p)
                fs.pipe_file(p, b'{"renewed_unix": 2}')
            return f

        monkeypatch.setattr(fs, "open", open_then_renew)
        return fs, path

    monkeypatch.setattr(storage, "filesystem", rewriting)
    assert storage.read_text(uri) == '{"renewed_unix": 2}'
    assert rewrites == [path]
