"""A token pasted where a path goes is refused alike on every backend, and never written (task 211).

``-o resume=hf_...`` was refused on the local backend only by chance (no such checkpoint here); on slurm, sky and
docker the path keys skipped the token check (a path's name may begin as a token does: hf_cache), so the token went
into job.sbatch, task.yaml, the docker run line and spec.json. Now a path's names are checked for a token as issued
(secret_checks.TOKEN_IN_PATH: a random-case run that ends its name), and a URL's query parameter named as a
credential (``?token=``, ``&hf_token=``) is one: one line (secret_checks.written_credential_said) at spec.build, rc 2,
before anything renders. A name that merely begins as a token does renders as before.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.secret_checks import credential_in

TOKEN = "hf_" + "xQ7kLmP2vRtY9wZaBcDeFgHiJkLmNoPqRs"  # a Hugging Face token's shape (hf_ and 34)
SIGNED = "abcdEFGH12345678"
BACKENDS = {"local": "cpu", "slurm": "cpu", "docker": "cpu", "sky": "1xL4"}  # sky: its output an object store
# each path key the job's files hold, with a token where a user pasted it
PASTED = {
    "resume": [f"resume={TOKEN}"],
    "resume-dir": [f"resume=/ckpt/{TOKEN}/checkpoint-1"],
    "output": [f"output_dir=OUT/{TOKEN}"],
    "data": [f"data_path=/data/{TOKEN}.jsonl"],
    "data-list": [f"data_path=builtin:demo,/data/{TOKEN}"],
    "eval-data": [f"eval_data_path=hf://datasets/org/{TOKEN}"],
    "model": [f"model_name_or_path={TOKEN}"],
    "template": [f"chat_template_path=/t/{TOKEN}.jinja"],
}
IN_QUERY = {  # a token in a URL's query string
    "data-token": [f"data_path=https://host.example/d.jsonl?token={SIGNED}"],
    "data-hf-token": [f"data_path=https://host.example/d.jsonl?download=true&hf_token={SIGNED}"],
    "model-token": [f"model_name_or_path=https://host.example/m?token={TOKEN}"],
    "eval-private-token": [f"eval_data_path=https://gitlab.example/raw/e.jsonl?private_token={SIGNED}"],
}


def _render(backend: str, tmp_path, overrides) -> tuple[int, str]:
    out = "s3://bucket/run" if backend == "sky" else str(tmp_path / "out")
    argv = ["render", "--backend", backend, "--gpus", BACKENDS[backend], "--output", out]
    for o in overrides:
        argv += ["-o", o.replace("OUT", out)]
    r = CliRunner().invoke(main, argv, prog_name="ftctl")
    assert "Traceback" not in r.output and (r.exit_code == 0 or isinstance(r.exception, SystemExit)), r.output
    return r.exit_code, r.output


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("overrides", [*PASTED.values(), *IN_QUERY.values()], ids=[*PASTED, *IN_QUERY])
def test_a_token_in_a_path_is_refused_alike_on_every_backend(backend, overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, said = _render(backend, tmp_path, overrides)
    key = overrides[0].partition("=")[0]
    assert rc == 2 and said.count("\n") == 1 and TOKEN not in said and SIGNED not in said, said
    if "?" in overrides[0]:
        assert f"error: {key} holds a signed URL's signature or token (not repeated here), and {key} is written" in said
        assert "give the object's URI without it" in said, said
    else:
        assert said == (
            f"error: {key} holds a token (not repeated here), and {key} is written into the rendered job files and "
            f"spec.json: leave the credential out of {key}; export it where you launch as HF_TOKEN and pass --secret "
            "HF_TOKEN (the job reads it by name; secrets are never written).\n"
        )
    assert not list(tmp_path.iterdir())  # nothing written


# names that only begin as a token does: a cache, a run named by its model, a library's name, a long lower-case word
NEAR = [
    "/scratch/hf_cache/train.jsonl",
    "/runs/hf_llama3_8b_lora_2024",
    "/data/hf_finetuningexperimentnumberonetwothree.jsonl",
    "/data/sk-learn-experiments-2024-runs-final",
    "/mirror/ghp_pages/data",
    f"/data/{TOKEN}_v2",  # a token's run that does not end its name
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_name_that_only_begins_as_a_token_renders(backend, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = "/scratch/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"  # was refused as a token in an env value
    over = [f"eval_data_path={','.join(NEAR)}", f"env=HF_HOME={home}"]
    if backend == "slurm":  # local and docker ask for the checkpoint here; sky ships the local paths that are here
        over += ["resume=/ckpt/hf_llama3_8b_lora/checkpoint-5", "output_dir=OUT/hf_ModelRunsForLlamaThreeEightB"]
    rc, said = _render(backend, tmp_path, over if backend != "sky" else over[1:])
    assert rc == 0 and (backend == "local" or home in said), said  # local prints the command; spec.json holds it


def test_the_path_shape_of_each_token_kind():
    tokens = [
        TOKEN,
        "ghp_" + "aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uV1wX2",
        "sk-proj-" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2",
        "AKIAIOSFODNN7EXAMPLE",
        "github_pat_11ABCDEFG0123456789_abcdef",
        "glpat-" + "abcDEF123456ghiJKL78",
    ]
    for token in tokens:
        for path in (token, f"/x/{token}", f"/x/{token}/checkpoint-1", f"s3://b/{token}.jsonl", f"a,/d/{token}"):
            assert credential_in(path, path=True) == "a token", path
    for path in [*NEAR, "/x/AKIAFTCTLTESTKEYNAME", "org/hf_Llama3ChatFineTuned"]:
        assert credential_in(path, path=True) is None, path
        assert credential_in(path) in (None, "a token")  # outside a path, a token's shape as before
