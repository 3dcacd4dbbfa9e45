"""Odd values and secrets (explore37): what the earlier tables (test_shell_values) let through.

- A URL's password holding a '/' (AWS's secret keys and base64 do) in an env value or a setup line, and an all-digit
  one in --output's URI, were written into the job's files: the checks took ``user:1234`` for host:PORT and stopped
  the password at a '/'.
- A signed URL (S3's ``?X-Amz-Signature=``, Azure's SAS ``?sig=``) in --data or an env value was written, or
  repeated in the refusal of its https:// scheme.
- A token pasted where a run key goes (``-o hf_...``, ``-o hf_...=1``) was repeated in the refusal.
- A local path with a name over 255 bytes, or in the home of a user there is none of (``~nouser/x``) in --data,
  -o resume or an apptainer image, ended in a traceback (ENAMETOOLONG, pathlib's RuntimeError) on every backend.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl import spec as spec_mod
from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.secret_checks import credential_in, uri_credentials

SLASHED = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"  # an AWS secret key's shape: a '/' and a '+'


def _refused(overrides=(), **flags) -> str:
    flags = {"backend": "slurm", "gpus": "cpu", "data_path": "builtin:demo", **flags}
    with pytest.raises(FtctlError) as e:
        spec_mod.build(None, flags, list(overrides))
    said = str(e.value)
    assert "\n" not in said and "Traceback" not in said, said
    return said


@pytest.mark.parametrize(
    "overrides",
    [
        [f"env=MLFLOW_TRACKING_URI=https://user:{SLASHED}@mlflow.example.com"],
        [f"setup=git clone https://oauth2:{SLASHED}@gitlab.example.com/org/repo.git"],
        [f"env=DATA_URL=https://acct.blob.core.windows.net/c/d.jsonl?sv=2022-11-02&sig={SLASHED}"],
        [f"env=DATA_URL=https://b.s3.amazonaws.com/d.jsonl?X-Amz-Algorithm=AWS4&X-Amz-Signature={SLASHED}"],
    ],
    ids=["env-url-password", "setup-url-password", "env-azure-sas", "env-s3-presigned"],
)
def test_url_credentials_in_env_and_setup_are_refused_unrepeated(overrides):
    said = _refused(overrides)
    assert SLASHED not in said and "not repeated here" in said


@pytest.mark.parametrize(
    "flags",
    [
        {"output_dir": "s3://user:12345678@bucket/run"},
        {"data_path": f"https://b.s3.amazonaws.com/d.jsonl?X-Amz-Signature={SLASHED}"},
        {"eval_data_path": f"https://acct.blob.core.windows.net/c/e.jsonl?sp=r&sig={SLASHED}"},
    ],
    ids=["numeric-password", "presigned-data", "sas-eval-data"],
)
def test_uri_credentials_in_paths_are_refused_unrepeated(flags):
    said = _refused(**flags)
    secret = "12345678" if "output_dir" in flags else SLASHED
    assert secret not in said and "not repeated here" in said


def test_ports_paths_and_references_are_no_credentials():
    for value in (
        "http://minio:9000/bucket@2024",  # host:PORT/path@...
        "https://host:443/a/b@c",
        'git clone "https://oauth2:$GITLAB_TOKEN@gitlab.example.com/x.git"',  # a reference
        "https://example.com/x?token=$TOKEN",
        "/data/train.jsonl?token=1",  # short: no signature
    ):
        assert credential_in(value) is None, value
    assert not uri_credentials("s3://bucket:9000/key@x")
    spec_mod.build(None, {"backend": "slurm", "gpus": "cpu"}, ["env=S3_URL=http://minio:9000/bucket@2024"])


def test_a_token_given_as_a_run_key_is_not_repeated():
    token = "hf_" + "AbCdEfGhIjKlMnOpQrStUv0123"
    for pairs in ([token], [f"{token}=1"]):
        said = _refused(pairs)
        assert token not in said and "holds a credential" in said, said
    assert "Unknown key 'learnig_rate'" in _refused(["learnig_rate=1e-4"])  # a plain typo is still named


LONG = "é" * 140  # 280 bytes: one name over the 255 a file system takes


@pytest.mark.parametrize(
    "flags",
    [
        {"data_path": f"/tmp/{LONG}.jsonl"},
        {"data_path": f"/tmp/a.jsonl,/tmp/{LONG}/b.jsonl"},
        {"eval_data_path": f"/tmp/{LONG}"},
        {"model_name_or_path": f"{LONG}/model"},
        {"output_dir": f"~/{LONG}"},
        {"output_dir": f"file:///tmp/{LONG}"},
        {"output_dir": "/tmp/" + "a/" * 2100},  # 4205 bytes: over a whole path's 4096
        {"container": f"apptainer:/tmp/{LONG}.sif"},
        {"overrides": [f"resume=/tmp/{LONG}/checkpoint-5"]},
        {"overrides": [f"chat_template_path=/tmp/{LONG}.jinja"]},
    ],
    ids=["data", "data-list", "eval-data", "model", "output", "output-file-uri", "long-path", "apptainer", "resume",
         "template"],
)  # fmt: skip
def test_names_no_file_system_takes_are_refused_in_one_line(flags):
    overrides = flags.pop("overrides", ())
    said = _refused(overrides, **flags)
    assert "bytes" in said and "give a shorter one" in said, said


@pytest.mark.parametrize(
    "flags",
    [
        {"data_path": "~nouser203/d.jsonl"},
        {"data_path": "/tmp/a.jsonl,~nouser203/d.jsonl"},
        {"container": "apptainer:~nouser203/i.sif"},
        {"overrides": ["resume=~nouser203/checkpoint-1"]},
    ],
    ids=["data", "data-list", "apptainer", "resume"],
)
def test_a_home_of_no_user_is_refused_in_one_line(flags):
    overrides = flags.pop("overrides", ())
    said = _refused(overrides, **flags)
    assert "there is no user 'nouser203' here" in said, said


@pytest.mark.parametrize("backend", ["local", "slurm", "docker"])
def test_dry_run_of_a_long_output_name_is_one_line(backend, tmp_path):
    r = CliRunner().invoke(
        main,
        ["launch", "--dry-run", "--backend", backend, "--gpus", "cpu", "--data", "builtin:demo", "--output",
         str(tmp_path / LONG)],
    )  # fmt: skip
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output and "give a shorter one" in r.output, r.output


@pytest.mark.parametrize("command", [["status"], ["logs"], ["cancel"], ["chat"], ["merge"], ["eval", "--data", "x"]])
def test_a_run_or_job_with_a_long_name_is_refused_in_one_line(command, tmp_path):
    r = CliRunner().invoke(main, [*command[:1], str(tmp_path / LONG), *command[1:]])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "280 bytes" in r.output and "give a shorter one" in r.output, r.output


def test_data_in_a_home_of_no_user_is_no_data(tmp_path):
    r = CliRunner().invoke(main, ["data", "check", "~nouser203/train.jsonl"])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "No data at ~nouser203/train.jsonl" in r.output, r.output


TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHg9876"


@pytest.mark.parametrize(
    "overrides",
    [[f"env={TOKEN}=1"], [f"secrets={TOKEN}=1"], [f"s3_endpoint_url=https://{TOKEN}.example.com"]],
    ids=["env-name", "secret-name", "endpoint"],
)
def test_a_token_where_a_name_or_endpoint_goes_is_refused_unrepeated(overrides):
    said = _refused(overrides)
    assert TOKEN not in said and "not repeated here" in said, said


@pytest.mark.parametrize("endpoint", ["minio:9000", "foo", "http://", "ftp://minio:21"])
def test_an_endpoint_that_is_no_http_url_is_refused_in_one_line(endpoint):
    said = _refused([f"s3_endpoint_url={endpoint}"])
    assert "is no http(s)://HOST URL" in said and "http://minio.example.com:9000" in said, said
    spec_mod.build(None, {"backend": "slurm", "gpus": "cpu"}, ["s3_endpoint_url=http://minio.example.com:9000"])


@pytest.mark.parametrize(
    "config",
    [{"output_dir": "/tmp/a\0b"}, {"data_path": "/tmp/a\0b.jsonl"}, {"env": {"X": "a\0b"}}, {"setup": ["echo a\0b"]}],
    ids=["output", "data", "env", "setup"],
)
def test_a_nul_from_a_run_file_is_refused_in_one_line(config):
    with pytest.raises(FtctlError) as e:
        spec_mod.build(config, {"backend": "slurm", "gpus": "cpu"}, [])
    assert "holds a NUL character" in str(e.value) and "\n" not in str(e.value), e.value
