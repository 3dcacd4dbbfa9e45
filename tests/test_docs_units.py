"""Sizes are said in the unit the code counts them in. The preflight's limits are MiB (ROW_CHECK_BYTES = 64 * 2**20):
its lines said "64 MB" and so did the docs (data.md, preflight.md); torch counts ddp_bucket_cap_mb in MiB, which
`ftctl keys` called MB. GB in the plan and storage.size_text are 1e9 bytes, and Slurm's and SkyPilot's GiB are said as
GiB (tests/test_slurm_*.py, test_sky_*.py); what is checked here is where the two were mixed."""

from __future__ import annotations

from ftctl import preflight
from ftctl.preflight import FEW_ROWS_BYTES, ROW_CHECK_BYTES, TOKENIZE_BYTES
from ftctl.spec import described_keys
from tests.render_fixtures import REPO


def test_the_preflight_says_its_sizes_in_mib():
    """Its limits are MiB; a size over one reads over it (4 MiB and a byte was '4 MB', as the limit itself)."""
    assert [preflight._size(n) for n in (ROW_CHECK_BYTES, FEW_ROWS_BYTES, TOKENIZE_BYTES)] == [
        "64 MiB",
        "1 MiB",
        "4 MiB",
    ]
    assert preflight._size(TOKENIZE_BYTES + 1) == "4.1 MiB"
    assert preflight._size(1536 * 2**20) == "1,536 MiB"
    assert preflight._size(2**20 - 1) == "1,048,575 bytes"


def test_the_docs_say_the_preflights_limits_as_it_does():
    data, checks = (REPO / "docs" / "data.md").read_text(), (REPO / "docs" / "preflight.md").read_text()
    rows, few, tokenized = (preflight._size(n) for n in (ROW_CHECK_BYTES, FEW_ROWS_BYTES, TOKENIZE_BYTES))
    assert f"reads local data of up to {rows} before the job" in data and f"Above {rows}, a warning" in data
    assert f"for data up to {few}: an `eval_split`" in data
    assert f"The training data (here, or in a store), up to {tokenized}," in checks


def test_ddp_bucket_cap_mb_is_said_in_torchs_mib():
    import torch.nn.parallel.distributed as ddp

    assert ddp._MB_TO_BYTES == 2**20  # torch's bucket_cap_mb, which the run passes on (trainer/run.py)
    said = {key: what for _, key, _, what in described_keys()}["ddp_bucket_cap_mb"]
    assert "MiB" in said and f"torch's {ddp._DEFAULT_BUCKET_CAP_MB}" in said, said
    assert (
        f"size in MiB (torch's default: {ddp._DEFAULT_BUCKET_CAP_MB})" in (REPO / "docs" / "performance.md").read_text()
    )
