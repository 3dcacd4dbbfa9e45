"""Two holes the quoting fuzz found (explore21): a secret's value copied into env by the launching shell, and a data
path holding a comma beside other datasets or as an object key."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build, join_paths, split_paths

# W&B's key is 40 hex digits: no token prefix (credential_in) and, under a plain name, nothing of a credential's
WANDB_KEY = "0123456789abcdefdeadbeef0123456789abcdef"


# --- a secret's value, expanded by the shell, in env -----------------------------------------------------------
@pytest.mark.parametrize(
    "holder, env_value, flags",
    [
        ("WANDB_API_KEY", WANDB_KEY, None),  # -o env=X=$WANDB_API_KEY: a default secret
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),  # a store's (storage.SECRET_ENV)
        ("MY_SERVICE", "opensesame", {"secrets": ["MY_SERVICE"]}),  # a --secret name, a value of no shape
        ("WANDB_API_KEY", f"Bearer {WANDB_KEY}", None),  # held inside the value
    ],
)
def test_an_env_value_that_is_a_secrets_value_here_is_refused_by_name(monkeypatch, holder, env_value, flags):
    monkeypatch.setenv(holder, env_value.removeprefix("Bearer "))
    with pytest.raises(FtctlError) as e:
        build(None, flags, [f"env=X={env_value}"])
    said = str(e.value)
    assert said == (
        f"env X holds the value of {holder} (set here; not repeated), and env values are written into the rendered "
        f"job files and spec.json: pass it by name, --secret {holder} (the job reads {holder}), or, for the job to "
        f'read it as X, export X="${holder}" where you launch and pass --secret X (secrets pass by name only).'
    )
    assert env_value.removeprefix("Bearer ") not in said
    with pytest.raises(FtctlError, match="holds the value of"):  # a run file's env: the same
        build({"env": {"X": env_value}}, flags)


def test_the_fix_it_says_is_taken(monkeypatch):
    """export X="$WANDB_API_KEY" where you launch and --secret X: X is a name set here, passed by name."""
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("X", WANDB_KEY)
    assert build(None, {"secrets": ["X"]}).secrets[-1] == "X"


@pytest.mark.parametrize(
    "name, value, env_value",
    [
        ("HOME_DIR", "/home/me/projects", "/home/me/projects"),  # no secret's name: a setting
        ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1", "1"),  # a switch, whatever it is called
        ("WANDB_API_KEY", "abc", "abc"),  # under 4 characters: nobody's secret
        ("PGPASSWORD", "postgres", "postgres://db/app"),  # under 16 characters: only the whole value counts
        ("SSL_KEY", "/etc/ssl/private/key.pem", "/etc/ssl/private/key.pem"),  # a path: the key's file, not the key
    ],
)
def test_values_that_are_no_secret_pass(monkeypatch, name, value, env_value):
    monkeypatch.setenv(name, value)
    assert build(None, None, [f"env=X={env_value}"]).env == {"X": env_value}


def test_a_setup_line_with_a_secrets_value_is_refused(monkeypatch):
    """-o setup="export X=$WANDB_API_KEY" (double quotes: expanded where you launch): written into the script."""
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    with pytest.raises(FtctlError) as e:
        build(None, None, [f"setup=export X={WANDB_KEY}"])
    assert "setup line holds the value of WANDB_API_KEY (set here; not repeated)" in str(e.value)
    assert "-o setup='export NAME=\"$WANDB_API_KEY\"'" in str(e.value) and WANDB_KEY not in str(e.value)
    assert build(None, None, ['setup=export X="$WANDB_API_KEY"']).setup == ['export X="$WANDB_API_KEY"']
    monkeypatch.setenv("PGPASSWORD", "hunter22")  # a short one: a word of the line, or what a NAME= of it sets
    for line in ("echo hunter22 | db-login", "export PGPASS=hunter22"):
        with pytest.raises(FtctlError, match="setup line holds the value of PGPASSWORD"):
            build(None, None, [f"setup={line}"])
    assert build(None, None, ["setup=pip install hunter22-tools"]).setup == ["pip install hunter22-tools"]


@pytest.mark.parametrize("backend, gpus", [("slurm", "cpu"), ("sky", "1xL4"), ("docker", "cpu")])
def test_render_refuses_it_in_one_line_and_writes_nothing(monkeypatch, tmp_path, backend, gpus):
    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.chdir(tmp_path)
    args = ["render", "--backend", backend, "--gpus", gpus, "--output", str(tmp_path / "o"), "-o", f"env=X={WANDB_KEY}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "holds the value of WANDB_API_KEY" in r.output, r.output
    assert WANDB_KEY not in r.output and not [p for p in tmp_path.rglob("*") if p.is_file()]


# --- a data path holding a comma -------------------------------------------------------------------------------
@pytest.fixture
def comma_data(tmp_path, monkeypatch):
    """d/a,b.jsonl and d/c.jsonl, from tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for name in ("a,b.jsonl", "c.jsonl"):
        (tmp_path / "d" / name).write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    return tmp_path


def test_a_comma_path_that_exists_is_one_dataset_beside_others(comma_data):
    assert split_paths("d/a,b.jsonl") == ["d/a,b.jsonl"]  # alone, as before
    assert split_paths("d/a,b.jsonl,d/c.jsonl") == ["d/a,b.jsonl", "d/c.jsonl"]
    assert split_paths("d/c.jsonl, d/a,b.jsonl") == ["d/c.jsonl", "d/a,b.jsonl"]
    assert split_paths("file://d/a,b.jsonl,s3://b/x.json") == ["file://d/a,b.jsonl", "s3://b/x.json"]
    assert split_paths("d/c.jsonl,d/nope.jsonl") == ["d/c.jsonl", "d/nope.jsonl"]  # nothing here: split, as before
    # --data twice (or a YAML list): each one, and spec.json's data_path reads back as the same two
    spec = build(None, {"data_path": ("d/a,b.jsonl", "d/c.jsonl"), "data_weights": "1,2"})
    assert split_paths(spec.data_path) == ["d/a,b.jsonl", "d/c.jsonl"] and spec.data_mix == [
        ("d/a,b.jsonl", 1.0),
        ("d/c.jsonl", 2.0),
    ]
    assert split_paths(build({"data_path": {"d/a,b.jsonl": 1, "d/c.jsonl": 0.5}}).data_path) == [
        "d/a,b.jsonl",
        "d/c.jsonl",
    ]
    # made absolute for the nodes (backend.absolute_paths joins them again), then read by the trainer's spec.json
    from ftctl.backend import absolute_paths

    on_nodes = absolute_paths(spec)
    assert split_paths(on_nodes.data_path) == [str(comma_data / "d" / "a,b.jsonl"), str(comma_data / "d" / "c.jsonl")]
    assert split_paths(build(json.loads(json.dumps({"data_path": on_nodes.data_path}))).data_path) == split_paths(
        on_nodes.data_path
    )


def test_a_fragment_here_alone_is_not_joined(comma_data):
    """d/a and d/a,b.jsonl both exist: d/a,b.jsonl,d/c.jsonl given once reads d/a first (what precedes a comma that
    is here is one); given as two, the two would not read back: said, not changed."""
    (comma_data / "d" / "a").write_text("")
    assert split_paths("d/a,b.jsonl,d/c.jsonl") == ["d/a", "b.jsonl", "d/c.jsonl"]
    assert split_paths("d/a,b.jsonl") == ["d/a,b.jsonl"]  # the whole value is here: one, as before
    with pytest.raises(ValueError, match="would read as"):
        join_paths(["d/a,b.jsonl", "d/c.jsonl"])


def test_an_object_key_holding_a_comma_is_said_with_how_to_give_it(comma_data):
    with pytest.raises(FtctlError) as e:
        build(None, {"data_path": ("s3://bk/a,b.jsonl",)})
    assert str(e.value) == (
        "data_path=('s3://bk/a,b.jsonl',) (flag): a comma separates datasets, and 'b.jsonl' after 's3://bk/a' is no "
        "file or directory here: for one object whose key holds a comma, write ? in the comma's place (--data "
        "'s3://bk/a?b.jsonl', a pattern that matches it); for a local file, check its path."
    )
    with pytest.raises(FtctlError, match=r"\(--eval-data 's3://bk/e\?f.jsonl'"):  # -o eval_data_path=..., a run file
        build({"eval_data": "s3://bk/e,f.jsonl"})
    with pytest.raises(FtctlError, match=r"\(--data 's3://bk/a\?b.jsonl'"):  # beside another (--data twice)
        build(None, {"data_path": ("s3://bk/a,b.jsonl", "d/c.jsonl")})
    with pytest.raises(ValueError, match=r"write \? in the comma's place \('s3://bk/a\?b.jsonl'"):  # eval, data check
        join_paths(["s3://bk/a,b.jsonl", "d/c.jsonl"])
    # --data twice: a missing local file after a URI is that (the preflight says it by its flag), not a key's comma
    assert build(None, {"data_path": ("s3://bk/x.jsonl", "gone.jsonl")}).data_path == "s3://bk/x.jsonl,gone.jsonl"
    # what it says is taken, and a URI then a local file (or another URI) are two, as before
    assert build(None, {"data_path": ("s3://bk/a?b.jsonl", "d/a,b.jsonl")}).data_path == "s3://bk/a?b.jsonl,d/a,b.jsonl"
    assert split_paths(build(None, {"data_path": "s3://bk/x.jsonl,d/c.jsonl,s3://bk/y"}).data_path) == [
        "s3://bk/x.jsonl",
        "d/c.jsonl",
        "s3://bk/y",
    ]
    with pytest.raises(FtctlError, match="'x,y.json' is none: check the path, or give each dataset its own --data"):
        build(None, {"data_path": ("d/c.jsonl", "x,y.json")})


def test_the_pattern_it_says_reads_the_key_holding_a_comma():
    """A ? in the comma's place is a pattern of the store (fsspec's glob, as s3fs's): it reads that one object."""
    import fsspec

    from ftctl.trainer.formats import resolve_files

    fs = fsspec.filesystem("memory")
    fs.pipe("/bk107/a,b.jsonl", b'{"messages": []}\n')
    fs.pipe("/bk107/ab.jsonl", b'{"messages": []}\n')  # ? is one character: not none
    try:
        assert resolve_files("memory://bk107/a?b.jsonl") == ["memory://bk107/a,b.jsonl"]
    finally:
        fs.rm("/bk107", recursive=True)
