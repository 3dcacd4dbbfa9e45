"""ftctl.storage against a real S3 protocol server on loopback (moto_server) and file://."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl import storage
from ftctl.checkpoints.manifest import read_manifest
from ftctl.checkpoints.resume import list_checkpoints
from ftctl.errors import FtctlError
from tests.s3_fixtures import FAKE_SECRET, free_port, make_checkpoint, within


@pytest.fixture(params=["s3", "file"])
def root(request, tmp_path):
    """A run root in the store under test: s3://<bucket>/run or file:///tmp/.../run."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/run"
    return f"file://{tmp_path}/store/run"


def test_is_remote_and_paths(tmp_path):
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert storage.is_remote("az://c/k")
    assert not storage.is_remote("/x/y") and not storage.is_remote("file:///x/y")
    fs, path = storage.filesystem(f"file://{tmp_path}/a")
    assert path == f"{tmp_path}/a" and "file" in fs.protocol
    fs, path = storage.filesystem("rel/dir")
    assert path == os.path.abspath("rel/dir")
    assert storage.join("s3://b/run/", "checkpoint-1", "x") == "s3://b/run/checkpoint-1/x"


def test_delete_command_names_the_stores_own_cli_quoted():
    """A refusal that asks the user to delete something in a store gives the command (it said "delete it from the
    store"); a folder's ends in '/' so that it spares a sibling whose name it begins (run/merged-2 beside
    run/merged); odd values arrive as one word each in a shell."""
    d = storage.delete_command
    assert d("s3://b/run/merged") == "aws s3 rm --recursive s3://b/run/merged/"
    assert d("s3a://b/run/spec.json", "http://127.0.0.1:9000", folder=False) == (
        "aws s3 rm s3://b/run/spec.json --endpoint-url http://127.0.0.1:9000"
    )
    assert d("gcs://b/run/merged/") == "gcloud storage rm --recursive gs://b/run/merged/"
    assert d("az://c/run/merged") == "az storage blob delete-batch --source c --pattern 'run/merged/*'"
    assert d("abfs://c@acct.dfs.core.windows.net/r", folder=False) == (
        "az storage blob delete --container-name c --name r --account-name acct"
    )
    odd = "s3://b/it's a run; $(x)"
    shown = subprocess.run(
        ["bash", "-c", f'aws() {{ printf "%s\\n" "$@"; }}; {d(odd)}'], capture_output=True, text=True, check=True
    ).stdout
    assert shown.splitlines() == ["s3", "rm", "--recursive", odd + "/"]
    assert d("/tmp/a run") == d("file:///tmp/a run") == "rm -r '/tmp/a run'"


def test_unknown_scheme_says_what_works():
    with pytest.raises(FtctlError, match="s3://"):
        storage.filesystem("ftp://host/x")


def test_missing_store_package_says_how_to_install(monkeypatch):
    """gcsfs not importable (the dev extra installs it: here it is made unimportable, and fsspec's cache of the class
    it imported is dropped)."""
    import fsspec  # noqa: F401 (its registry module, below)

    imported = sys.modules["fsspec.registry"]._registry  # the classes fsspec imported (fsspec.registry: a view of it)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # `import gcsfs` raises ImportError
    for protocol in ("gs", "gcs"):
        monkeypatch.delitem(imported, protocol, raising=False)
    with pytest.raises(FtctlError, match=r"needs the gcsfs package: pip install 'ftctl\[gcs\]'"):
        storage.filesystem("gs://bucket/run")


def test_put_get_ls_read(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01" * 1000)
    storage.put_dir(str(src), root)

    assert [(e["name"], e["type"]) for e in storage.ls(root)] == [
        ("a.txt", "file"),
        ("sub", "directory"),
    ]
    assert storage.file_sizes(root) == {"a.txt": 5, "sub/b.bin": 2000}
    assert storage.read_text(storage.join(root, "a.txt")) == "alpha"
    with storage.open_file(storage.join(root, "sub", "b.bin")) as f:
        assert f.read(4) == b"\x00\x01\x00\x01"
    assert storage.exists(storage.join(root, "a.txt"))

    dest = tmp_path / "dest"
    storage.get_dir(root, str(dest))
    assert (dest / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 1000

    storage.rm(root, recursive=True)
    assert storage.ls(root) == [] and storage.file_sizes(root) == {}


def test_missing_file_is_a_user_error(root):
    with pytest.raises(FtctlError, match="does not exist"):
        storage.read_text(storage.join(root, "nope.json"))


def test_endpoint_argument_beats_environment(s3_bucket, moto_s3, monkeypatch, tmp_path):
    # The environment points at a port nobody listens on; the argument at the real server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_text("x")
    storage.put_file(str(tmp_path / "f"), s3_bucket + "/f", endpoint_url=moto_s3.endpoint)
    assert storage.read_text(s3_bucket + "/f", endpoint_url=moto_s3.endpoint) == "x"
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL (boto3's own order)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    assert storage.s3_endpoint() == moto_s3.endpoint
    assert storage.read_text(s3_bucket + "/f") == "x"


def test_redact_masks_credentials(s3_env):
    assert FAKE_SECRET not in storage.redact(f"error: bad signature {FAKE_SECRET}")
    assert "<AWS_SECRET_ACCESS_KEY>" in storage.redact(f"x{FAKE_SECRET}x")


# ------------------------------------------------------------------------------- store errors
def sync_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    ftctl = Path(sys.executable).parent / "ftctl"
    return subprocess.run([str(ftctl), "sync", *args], capture_output=True, text=True, env=env, timeout=120)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    """The CLI failed with one line on stderr and no traceback; that line."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ")
    return r.stderr.strip()


def test_sync_store_errors_are_one_line(s3_bucket, moto_s3, tmp_path):
    """Regression (issue 8): `ftctl sync ls` without credentials printed a botocore traceback."""
    env = dict(os.environ)
    ok = sync_cli("ls", f"{s3_bucket}/run", env=env)
    assert ok.returncode == 0 and "no checkpoints under" in ok.stdout, ok.stderr

    no_creds = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    line = one_line_error(sync_cli("ls", f"{s3_bucket}/run", env=no_creds))
    assert f"No credentials for {s3_bucket}/run" in line and "AWS_ACCESS_KEY_ID" in line and "AWS_PROFILE" in line

    line = one_line_error(sync_cli("ls", "s3://no-such-bucket-q/run", env=env))
    assert "No bucket 'no-such-bucket-q'" in line and moto_s3.endpoint in line

    # the endpoint as a flag, as a run's -o s3_endpoint_url: the error named -o, which sync did not take
    unset = {k: v for k, v in env.items() if k != "AWS_ENDPOINT_URL"}
    named = sync_cli("ls", f"{s3_bucket}/run", "--endpoint-url", moto_s3.endpoint, env=unset)
    assert named.returncode == 0 and "no checkpoints under" in named.stdout, named.stderr
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    line = one_line_error(sync_cli("pull", f"{s3_bucket}/run", str(tmp_path / "got"), env=dead))
    assert "Cannot reach the S3 endpoint" in line and "AWS_ENDPOINT_URL" in line

    from ftctl.checkpoints import write_manifest

    write_manifest(str(make_checkpoint(tmp_path / "run", 5)), 5, 1, "spec")
    bucket = s3_bucket.split("://")[1]
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
    moto_s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
    line = one_line_error(sync_cli("push", str(tmp_path / "run"), f"{s3_bucket}/run", env=env))
    assert f"Access denied to {s3_bucket}/run" in line and FAKE_SECRET not in line


def test_sync_ls_tells_a_missing_directory_or_bucket_from_an_empty_one(s3_bucket, moto_s3, tmp_path):
    """`ftctl sync ls /tmp/nothing` (a typo) said "no checkpoints under /tmp/nothing" and exited 0, as for an empty run
    directory: now it says the directory does not exist (exit 2, one line). The same for a store: a bucket that does
    not exist is an error, an empty prefix of one that does lists no checkpoints."""
    env = dict(os.environ)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    for empty in (str(tmp_path / "empty"), f"file://{tmp_path}/empty", f"{s3_bucket}/no-run-here"):
        r = sync_cli("ls", empty, env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"no checkpoints under {empty}\n", ""), empty
    for typo in (str(tmp_path / "nothing"), f"file://{tmp_path}/nothing"):
        r = sync_cli("ls", typo, env=env)
        assert r.returncode == 2 and one_line_error(r) == (
            f"error: {typo} does not exist: give a run's output directory (or an s3:// gs:// az:// URI)."
        )
    r = sync_cli("ls", str(tmp_path / "a-file"), env=env)
    assert r.returncode == 2 and "a-file is a file, not a run's output directory" in one_line_error(r)
    r = sync_cli("ls", "s3://no-such-bucket-q/run", env=env)
    assert (
        r.returncode == 2 and f"No bucket 'no-such-bucket-q' at the S3 endpoint {moto_s3.endpoint}" in one_line_error(r)
    )


ASKS = {  # what ftctl asks a store, each with small answers: sync ls, status, a resume's listing, the uploader's checks
    "list_checkpoints": lambda uri, ep: list_checkpoints(uri, endpoint_url=ep),
    "read_manifest": lambda uri, ep: read_manifest(uri + "/checkpoint-5", endpoint_url=ep),
    "read_text": lambda uri, ep: storage.read_text(uri + "/trainer_state.json", ep),
    "exists": lambda uri, ep: storage.exists(uri + "/config.json", ep),
    "ls": lambda uri, ep: storage.ls(uri, ep),
    "rm": lambda uri, ep: storage.rm(uri + "/checkpoint-5", recursive=True, endpoint_url=ep),
}


@pytest.mark.parametrize("ask", sorted(ASKS))
def test_a_silent_store_costs_one_short_request_where_ftctl_only_asks(silent_s3, ask):
    """A store that accepts and never answers: each question is one request given up after the "ask" read limit,
    said as the timeout's line (`ftctl sync ls` waited over 15 min: reads of 120 s, 3 attempts, 5 tries each)."""
    uri = "s3://bucket/run"
    with pytest.raises(storage.StorageError) as err, storage.storage_errors(uri, silent_s3.endpoint):
        within(6, ASKS[ask], uri, silent_s3.endpoint)
    assert err.value.kind == "timeout" and f"S3 endpoint {silent_s3.endpoint} did not answer in time" in str(err.value)
    assert silent_s3.requests == 1  # botocore's max_attempts counts retries: 1 was two attempts


@pytest.mark.parametrize("command", ["ls", "push", "pull"])
def test_sync_against_a_silent_store_is_one_line_after_one_short_request(silent_s3, command, tmp_path, monkeypatch):
    """`ftctl sync ls / push / pull` against a store that accepts and never answers: the timeout's line, exit 2,
    after one request of the "ask" limit (each printed nothing for 15 min and more)."""
    from click.testing import CliRunner

    from ftctl.checkpoints import write_manifest
    from ftctl.cli import main

    write_manifest(str(make_checkpoint(tmp_path / "run", 5)), 5, 1, "spec")
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_s3.endpoint)
    args = {"ls": ["s3://bucket/run"], "push": [str(tmp_path / "run"), "s3://bucket/run"]}
    args["pull"] = ["s3://bucket/run", str(tmp_path / "got")]
    r = within(8, CliRunner().invoke, main, ["sync", command, *args[command]])
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert r.stderr.strip().splitlines() == [
        f"error: the S3 endpoint {silent_s3.endpoint} did not answer in time for s3://bucket/run: check -o "
        "s3_endpoint_url=URL (ftctl sync: --endpoint-url URL) or AWS_ENDPOINT_URL and the network (proxy, VPN, "
        "firewall)."
    ]
    assert silent_s3.requests == 1


def test_a_silent_store_costs_a_transfer_attempts_times_tries_requests(silent_s3, tmp_path):
    """An upload to a store that stops answering is given up, its limit's attempts x tries requests later."""
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"w" * 1000)
    uri = "s3://bucket/run/model.safetensors"
    with pytest.raises(storage.StorageError) as err, storage.storage_errors(uri, silent_s3.endpoint):
        within(20, storage.put_file, str(src), uri, silent_s3.endpoint)
    assert err.value.kind == "timeout"
    limits = storage.S3_LIMITS["transfer"]
    assert silent_s3.requests == limits.attempts * limits.tries


def test_store_error_kinds(s3_env, monkeypatch):
    class Boto(Exception):
        def __init__(self, code):
            self.response = {"Error": {"Code": code}}

    uri = "s3://b/run"
    assert storage.store_error(FileNotFoundError("b/run/x"), uri) is None  # a missing object is no store error
    assert storage.store_error(PermissionError("x"), "/local/path") is None
    for exc, kind in [
        (Boto("NoSuchBucket"), "no-bucket"),
        (Boto("InvalidAccessKeyId"), "bad-credentials"),
        (Boto("AccessDenied"), "denied"),
        (PermissionError("Forbidden"), "denied"),
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(), "unreachable"),
    ]:
        err = storage.store_error(exc, uri)
        assert err.kind == kind and "\n" not in str(err), (exc, err)
    with pytest.raises(storage.StorageError, match="No credentials"):
        with storage.storage_errors(uri):
            raise type("NoCredentialsError", (Exception,), {})("Unable to locate credentials")
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with storage.storage_errors(uri):
            raise KeyError("x")


def test_job_env_names_the_credentials_a_jobs_stores_need(tmp_path):
    """Which variables of the launching environment a job reaching its URIs needs, by name: the stores' own
    (an S3 bucket: AWS_*, Azure: AZURE_STORAGE_* ...), those set (non-empty) only; what names a file of this
    machine only where the job sees its files (docker), never elsewhere (a SkyPilot node)."""
    environ = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "",  # set but empty: as unset
        "AWS_REGION": "eu-west-1",
        "AWS_PROFILE": "team",
        "AWS_EC2_METADATA_DISABLED": "true",  # boto3's own setting, no credential
        "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json",
        "AZURE_STORAGE_ACCOUNT_NAME": "acct",
        "AZURE_STORAGE_SAS_TOKEN": "sv=x",
        "HF_TOKEN": "hf",
        "HOME": "/root",
    }
    s3 = ["s3://b/run", "/local/data.jsonl"]
    assert storage.job_env(s3, files=False, environ=environ) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_REGION",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert storage.job_env(s3, files=True, environ=environ) == [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_SECRET_ACCESS_KEY",
    ]
    assert storage.job_env(["gs://b/d.jsonl"], files=False, environ=environ) == []
    assert storage.job_env(["gcs://b/d.jsonl"], files=True, environ=environ) == ["GOOGLE_APPLICATION_CREDENTIALS"]
    az = storage.job_env(["az://c/run", "hf://datasets/o/n/f.json"], files=False, environ=environ)
    assert az == ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_SAS_TOKEN", "HF_TOKEN"]
    assert storage.job_env(["/local/out", "file:///x", "builtin:demo", None], files=True, environ=environ) == []
    (tmp_path / ".aws").mkdir()
    assert storage.home_credentials(s3, home=str(tmp_path)) == [".aws"]
    assert storage.home_credentials(["gs://b/x"], home=str(tmp_path)) == []  # no ~/.config/gcloud here


def test_resuming_a_named_checkpoint_into_an_unreachable_store_is_one_line(s3_bucket, tmp_path, monkeypatch):
    """resume=PATH with an object-store output whose endpoint is down ended in botocore's EndpointConnectionError
    as the error line, naming nothing to set."""
    from ftctl.spec import RunSpec
    from ftctl.trainer.run import resume_point

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text('{"global_step": 2}')
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    spec = RunSpec(resume=str(ckpt), output_dir=f"{s3_bucket}/run")
    with pytest.raises(FtctlError, match="Cannot reach the S3 endpoint") as e:
        resume_point(spec, str(tmp_path / "cache"), spec.output)
    assert "botocore" not in str(e.value)
