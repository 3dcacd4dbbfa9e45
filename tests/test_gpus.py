"""The GPU tier table and the --gpus grammar."""

from __future__ import annotations

import pytest

from ftctl import gpus
from ftctl.errors import FtctlError


@pytest.mark.parametrize(
    "text, nodes, want",
    [
        ("8xA100", None, ("A100", 8, 1)),
        ("2x8xH100", None, ("H100", 8, 2)),
        ("A100-80GB:8", None, ("A100-80GB", 8, 1)),
        ("H100", None, ("H100", 1, 1)),
        ("1xT4", None, ("T4", 1, 1)),
        ("8xa100", None, ("A100", 8, 1)),  # type names are case-insensitive
        ("4xa100-80gb", None, ("A100-80GB", 4, 1)),
        ("8xA100-40GB", None, ("A100", 8, 1)),  # alias
        ("l40s:4", None, ("L40S", 4, 1)),
        (" 8xA100 ", None, ("A100", 8, 1)),
        ("8xA100", 2, ("A100", 8, 2)),  # --nodes
        ("2x8xH100", 2, ("H100", 8, 2)),  # --nodes agreeing with the form
        ("H200:8", 4, ("H200", 8, 4)),
        ("cpu", None, (None, 1, 1)),
        ("CPU", 3, (None, 1, 3)),
        ("2xcpu", None, (None, 1, 2)),
        ("2xcpu", 2, (None, 1, 2)),
    ],
)
def test_accepted_forms(text, nodes, want):
    r = gpus.parse(text, nodes)
    assert (r.tier.name if r.tier else None, r.per_node, r.nodes) == want
    assert r.world_size == want[1] * want[2]
    assert r.is_cpu == (want[0] is None)
    # str() is the normalised form, and it parses back to the same request
    assert gpus.parse(str(r)) == r


def test_normalised_names():
    assert str(gpus.parse("A100-80GB:8")) == "8xA100-80GB"
    assert str(gpus.parse("8xA100", 2)) == "2x8xA100"
    assert str(gpus.parse("cpu", 2)) == "2xcpu"
    assert str(gpus.parse("cpu")) == "cpu"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8x",
        "x8",
        "8xx8",
        "eightxA100",
        "A100:x",
        "A100:",
        ":8",
        "8*A100",
        "2x8x",
        "A100 8",
        "8xA100:8",
        "-8xA100",
        "1.5xA100",
    ],
)
def test_malformed_strings_show_forms_and_types(text):
    with pytest.raises(FtctlError) as e:
        gpus.parse(text)
    msg = str(e.value)
    assert "8xA100" in msg and "2x8xH100" in msg and "A100-80GB:8" in msg
    assert "cpu" in msg


@pytest.mark.parametrize(
    "text, close", [("8xA1000", "A100"), ("8xH10", "H100"), ("L40", "L40S"), ("2x8xB100", None), ("4xMI300X", None)]
)
def test_unknown_types_list_known_types(text, close):
    with pytest.raises(FtctlError) as e:
        gpus.parse(text)
    msg = str(e.value)
    assert "Unknown GPU type" in msg
    assert "Known types: " in msg
    for name in gpus.TIERS:
        assert name in msg
    if close:
        assert f"Did you mean {close!r}" in msg


@pytest.mark.parametrize("text", ["0xA100", "17xA100", "A100:0", "2x0xH100"])
def test_gpu_count_out_of_range(text):
    with pytest.raises(FtctlError, match="1 to 16"):
        gpus.parse(text)


def test_nodes_conflict_names_both():
    with pytest.raises(FtctlError) as e:
        gpus.parse("2x8xH100", 3)
    assert "2 nodes" in str(e.value) and "--nodes says 3" in str(e.value)
    with pytest.raises(FtctlError, match="2 nodes but --nodes says 4"):
        gpus.parse("2xcpu", 4)


@pytest.mark.parametrize("nodes", [0, -1])
def test_nodes_must_be_positive(nodes):
    with pytest.raises(FtctlError, match="at least 1"):
        gpus.parse("8xA100", nodes)


@pytest.mark.parametrize("text", ["0x8xH100", "0xcpu"])
def test_node_count_in_the_form_must_be_positive(text):
    with pytest.raises(FtctlError, match="at least 1"):
        gpus.parse(text)


def test_tier_table_holds_the_required_tiers():
    for name in ["T4", "V100", "A10G", "L4", "L40S", "RTX3090", "RTX4090", "A100", "A100-80GB", "H100", "H200", "B200"]:
        t = gpus.TIERS[name]
        assert t.memory_gb >= 16
        assert t.sky_name == name
        assert t.compute_capability >= (7, 0)


def test_tier_facts():
    T = gpus.TIERS
    for old in ("T4", "V100"):
        assert not T[old].bf16 and not T[old].flash_attn2
    for new in ("A10G", "L4", "L40S", "RTX4090", "A100", "A100-80GB", "H100", "H200"):
        assert T[new].bf16 and T[new].flash_attn2
    assert T["H100"].flash_attn3 and T["H200"].flash_attn3 and not T["A100"].flash_attn3
    assert T["A100"].cuda_arch == "8.0" and T["H100"].cuda_arch == "9.0" and T["T4"].cuda_arch == "7.5"
    assert (T["T4"].memory_gb, T["A100"].memory_gb, T["A100-80GB"].memory_gb, T["H100"].memory_gb) == (16, 40, 80, 80)
    assert T["H200"].memory_gb > T["H100"].memory_gb
