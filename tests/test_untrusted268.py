"""What others wrote, read safely (explore59: /work/notes/explore59-untrusted.md): a store's names never write outside
the directory a pull writes into, and a run file's YAML aliases cannot make a small file a huge value."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ftctl import storage
from ftctl.checkpoints import manifest, resume, sync
from ftctl.errors import FtctlError
from tests.s3_fixtures import make_checkpoint

ESCAPE = "../../../escaped.sh"
PAYLOAD = b"echo pwned\n"


def files_under(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}


def crafted_store(s3_bucket: str, tmp_path: Path) -> str:
    """A run in a bucket whose checkpoint's manifest (its sha256 right) and listing hold a key with '..' parts, as
    someone with write access to the bucket can make it: S3 keeps the key as written."""
    import boto3

    ckpt = make_checkpoint(tmp_path / "src" / "run", 7, files={"config.json": b"{}"})
    m = manifest.write_manifest(str(ckpt), 7, 1, "spec")
    m["files"].append({"path": ESCAPE, "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    (ckpt / manifest.MANIFEST).write_text(json.dumps(m))
    uri = f"{s3_bucket}/run"
    for rel in storage.local_files(str(ckpt)):
        storage.put_file(str(ckpt / rel), f"{uri}/checkpoint-7/{rel}")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=s3_bucket.removeprefix("s3://"), Key=f"run/checkpoint-7/{ESCAPE}", Body=PAYLOAD)
    return uri


def test_a_manifest_naming_a_file_outside_its_checkpoint_downloads_nothing(s3_bucket, tmp_path):
    uri = crafted_store(s3_bucket, tmp_path)
    dest = tmp_path / "home" / "runs" / "pulled"
    problems = resume.download_checkpoint(f"{uri}/checkpoint-7", str(dest))
    assert problems and "'../../../escaped.sh', a file outside the checkpoint" in problems[0]
    # was: home/runs/escaped.sh, written beside the pull's directory from the bucket's key before the check said
    # "missing", and left there
    assert files_under(tmp_path / "home") == set()
    assert sync.pull(uri, str(dest)) == []  # `ftctl sync pull`: the checkpoint not pulled, nothing outside
    assert not any("escaped" in rel for rel in files_under(tmp_path / "home"))


def test_a_listing_with_a_name_outside_the_directory_downloads_nothing(s3_bucket, tmp_path):
    uri = crafted_store(s3_bucket, tmp_path)
    dest = tmp_path / "home" / "runs" / "pulled" / "checkpoint-7"
    with pytest.raises(
        FtctlError, match=r"holds a file named '\.\./\.\./\.\./escaped\.sh', which would be written outside"
    ):
        storage.get_dir(f"{uri}/checkpoint-7", str(dest))  # `sync pull --include-incomplete`'s copy
    assert files_under(tmp_path / "home") == set()


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/x", "a/..", "..\\x", None])
def test_outside(rel):
    assert storage.outside(rel)


@pytest.mark.parametrize("rel", ["config.json", "global_step7/mp_rank_00_model_states.pt", "a..b", "..x/y"])
def test_not_outside(rel):
    assert not storage.outside(rel)


def laughs(levels: int) -> str:
    """A run file of ~50 bytes a level whose aliases expand to 9**levels values."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefghij", "bcdefghij"[: levels - 1]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join([*lines, "method: lora", f"model: *{'abcdefghij'[levels - 1]}"]) + "\n"


def test_a_run_file_of_nested_aliases_is_refused_before_it_is_expanded(tmp_path):
    from ftctl import spec

    path = tmp_path / "gist.yaml"
    path.write_text(laughs(9))  # 450 bytes: `ftctl plan` ran out of time (100 s here) writing its model into an error
    with pytest.raises(FtctlError, match=r"aliases \(\*NAME\) expand to [\d,]{11} values, over 100,000"):
        spec.load_yaml(str(path))
    path.write_text("common: &common {learning_rate: 1e-4}\nmethod: lora\n<<: *common\n")  # aliases as used: kept
    assert spec.load_yaml(str(path))["learning_rate"] in ("1e-4", 1e-4)


def test_a_run_file_nested_thousands_deep_is_one_error_line(tmp_path):
    from ftctl import spec

    path = tmp_path / "deep.yaml"
    path.write_text("method: lora\nmodel: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(FtctlError, match="nest too deep"):  # was a RecursionError's traceback
        spec.load_yaml(str(path))


GOOD_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


def test_a_downloaded_row_nested_100000_deep_is_that_rows_problem(tmp_path):
    from ftctl.trainer.formats import TOO_DEEP, load_rows

    deep = "[" * 100_000 + "]" * 100_000
    lines = tmp_path / "rows.jsonl"
    lines.write_text(f'{GOOD_ROW}\n{{"messages": {deep}}}\n{GOOD_ROW}\n')
    _, rows = load_rows(str(lines))  # was: RecursionError out of json.loads, the whole check or run ended in it
    assert [row.problems for row in rows] == [[], [TOO_DEEP], []]
    assert rows[1].where == "rows.jsonl line 2"
    whole = tmp_path / "rows.json"
    whole.write_text(deep)
    _, rows = load_rows(str(whole))
    assert [row.problems for row in rows] == [[TOO_DEEP]]


def test_a_dict_written_as_text_with_nested_aliases_is_refused(tmp_path, tiny_model_dir):
    from ftctl import spec

    flow = "{" + laughs(6).replace("\nmethod: lora\nmodel: *f\n", "").replace("\n", ", ") + "}"
    path = tmp_path / "gist.yaml"
    path.write_text(f"method: lora\nmodel: {tiny_model_dir}\ngpus: cpu\nlr_scheduler_kwargs: '{flow}'\n")
    # 9**9 in 370 bytes ran `ftctl plan` past 60 s here; this 9**6 was a dict of 531,441 values
    with pytest.raises(FtctlError, match=r"lr_scheduler_kwargs=.*its aliases \(\*NAME\) expand to [\d,]+ values"):
        spec.build(str(path))
    with pytest.raises(FtctlError, match="expand to"):
        spec.build(flags={"model": str(tiny_model_dir), "gpus": "cpu"}, overrides=[f"lr_scheduler_kwargs={flow}"])
