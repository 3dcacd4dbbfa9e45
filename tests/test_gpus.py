"""The GPU tier table and the --gpus grammar."""

from __future__ import annotations

import re

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
        # Slurm's gres and --gpus forms, with the type names Slurm's NVML autodetection gives
        ("gpu:a100:2", None, ("A100", 2, 1)),
        ("GPU:A40:4", 2, ("A40", 4, 2)),
        ("gpu:nvidia_a100-sxm4-80gb:8", None, ("A100-80GB", 8, 1)),
        ("gpu:rtx_a6000", None, ("RTXA6000", 1, 1)),
        ("nvidia_l40s:4", None, ("L40S", 4, 1)),
        ("2xnvidia_a100_80gb_pcie", None, ("A100-80GB", 2, 1)),
        ("2x4xtesla_v100-sxm2-32gb", None, ("V100-32GB", 4, 2)),
        ("2xA40", None, ("A40", 2, 1)),
        # spaces, as a card's name is written ("Cannot read" them before)
        ("RTX 4090", None, ("RTX4090", 1, 1)),
        ("8 x A100", None, ("A100", 8, 1)),
        ("2 x 8 x H100", None, ("H100", 8, 2)),
        ("NVIDIA A100 80GB", None, ("A100-80GB", 1, 1)),
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


def test_cards_that_are_not_nvidias_are_said_to_be_none():
    """An AMD Instinct (or a Gaudi, a TPU) was "Unknown GPU type ... name a listed one of its generation"."""
    for text in ("4xMI300X", "8xMI250", "gaudi2", "tpu-v5e"):
        with pytest.raises(FtctlError, match="is no NVIDIA card: ftctl trains with CUDA"):
            gpus.parse(text)


@pytest.mark.parametrize(
    "text, close",
    [
        ("8xA1000", "A100"),
        ("8xH10", "H100"),
        ("RTXA600", "RTXA6000"),
        ("a100-80:2", "A100-80GB"),  # a memory without its GB
        ("2x8xB100", None),  # None: either way
        ("8xH300", False),  # False: none; another number, another card (not a typo of the H200)
        ("2xRTX5050", False),  # the RTX 5060 Ti-5090 are listed since session 63
        ("A6000Ti", None),
    ],
)
def test_unknown_types_list_known_types(text, close):
    with pytest.raises(FtctlError) as e:
        gpus.parse(text)
    msg = str(e.value)
    assert "Unknown GPU type" in msg
    assert "Known types: " in msg
    for name in gpus.TIERS:
        assert name in msg
    if close is False:
        assert "Did you mean" not in msg
    if close:
        assert f"Did you mean {close!r}" in msg
    # how to go on: Slurm's names are read, and a card not listed has a stand-in
    assert "nvidia_a100-sxm4-80gb" in msg and "of its generation or older with no more memory" in msg


@pytest.mark.parametrize("text", ["1xP100", "tesla_p100-pcie-16gb", "gpu:p40:2", "K80", "8xGTX1080Ti", "M60"])
def test_cards_older_than_volta_are_said_to_be_older_not_offered_a_newer_one(text):
    """Pascal and older are not planned (the trainer's Triton kernels need sm70): P100 was "did you mean V100?"."""
    with pytest.raises(FtctlError) as e:
        gpus.parse(text)
    assert "is older than every card ftctl plans for (Volta's V100 is the oldest)" in str(e.value)
    assert "Did you mean" not in str(e.value)


@pytest.mark.parametrize(
    "text, said",
    [
        ("a100x8", "the count comes first, --gpus 8xA100 (A100:8 too)"),  # was "did you mean A100?", the 8 lost
        ("H100x2", "the count comes first, --gpus 2xH100 (H100:2 too)"),
        (
            "cpu:2",
            "a CPU run is --gpus cpu (its processes take the node's cores) or Nxcpu for N nodes, e.g. --gpus 2xcpu",
        ),
    ],
)
def test_a_count_after_the_type_is_answered_with_the_form_that_reads(text, said):
    with pytest.raises(FtctlError, match=re.escape(said)):
        gpus.parse(text)
    assert gpus.parse(said.split("--gpus ")[-1].split(" ")[0].rstrip(".")).per_node in (8, 2, 1)


@pytest.mark.parametrize(
    "name, want",
    [
        # Slurm's AutoDetect=nvml names (nvidia-smi's, lower case, spaces as underscores)
        ("nvidia_a100-sxm4-80gb", "A100-80GB"),
        ("nvidia_a100-sxm4-40gb", "A100"),
        ("nvidia_a100-pcie-40gb", "A100"),
        ("nvidia_a100_80gb_pcie", "A100-80GB"),
        ("tesla_v100-sxm2-32gb", "V100-32GB"),
        ("tesla_v100-sxm2-16gb", "V100"),
        ("tesla_v100s-pcie-32gb", "V100S"),
        ("tesla_t4", "T4"),
        ("nvidia_geforce_rtx_3090", "RTX3090"),
        ("nvidia_geforce_rtx_4090", "RTX4090"),
        ("nvidia_geforce_rtx_2080_ti", "RTX2080Ti"),
        ("nvidia_titan_rtx", "TITANRTX"),
        ("nvidia_rtx_a6000", "RTXA6000"),
        ("nvidia_rtx_a5000", "RTXA5000"),
        ("nvidia_rtx_a4000", "RTXA4000"),
        ("nvidia_rtx_6000_ada_generation", "RTX6000-Ada"),
        ("quadro_rtx_8000", "RTX8000"),
        ("quadro_rtx_6000", "RTX6000"),
        ("nvidia_a40", "A40"),
        ("nvidia_a30", "A30"),
        ("nvidia_a10", "A10"),
        ("nvidia_a10g", "A10G"),
        ("nvidia_l4", "L4"),
        ("nvidia_l40", "L40"),
        ("nvidia_l40s", "L40S"),
        ("nvidia_h100_80gb_hbm3", "H100"),
        ("nvidia_h100_pcie", "H100-PCIe"),  # a slower card than the SXM one (session 63: was H100)
        ("nvidia_h100_nvl", "H100-NVL"),
        ("nvidia_h200", "H200"),
        ("nvidia_b200", "B200"),
        # nvidia-smi's own spelling
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("Tesla V100-PCIE-32GB", "V100-32GB"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000-Ada"),
        ("Quadro RTX 8000", "RTX8000"),
        # what admins and users write: any case, with or without RTX and separators
        ("a100_80gb", "A100-80GB"),
        ("A100-40GB", "A100"),
        ("a6000", "RTXA6000"),
        ("rtx_a6000", "RTXA6000"),
        ("RTX-A6000", "RTXA6000"),
        ("rtx8000", "RTX8000"),
        ("rtx_3090", "RTX3090"),
        ("RTX-4090", "RTX4090"),
        ("rtx2080ti", "RTX2080Ti"),
        ("titan_rtx", "TITANRTX"),
        ("rtx6000ada", "RTX6000-Ada"),
        ("H100-80GB", "H100"),
        ("v100-16gb", "V100"),
        ("L40S", "L40S"),
    ],
)
def test_slurm_and_nvidia_smi_names(name, want):
    assert gpus.tier(name).name == want
    assert gpus.parse(f"gpu:{name.replace(' ', '_')}:2").tier.name == want


def test_every_tier_reads_back_by_its_name_in_any_case():
    for name, t in gpus.TIERS.items():
        assert gpus.tier(name) is t and gpus.tier(name.lower()) is t and gpus.tier(name.upper()) is t
        assert gpus.parse(str(gpus.GpuRequest(t, 8, 2))) == gpus.GpuRequest(t, 8, 2)
    models = [(gpus._model(n), gpus._FORMS.get(n)) for n in gpus.TIERS]  # a model and its form factor (H100-PCIe)
    assert len(set(models)) == len(models)  # no two tiers read as one card


def test_a_memory_word_picks_the_largest_variant_with_no_more_memory():
    assert gpus.tier("a100_80gb").name == "A100-80GB" and gpus.tier("a100_40gb").name == "A100"
    assert gpus.tier("a100_96gb").name == "A100-80GB"  # never more than the card has
    assert gpus.tier("v100_32gb").name == "V100-32GB" and gpus.tier("v100").name == "V100"
    # as people write them: 80g, 40G, 32gib (a100-40g was "Did you mean 'A100-80GB'?": twice its memory)
    assert gpus.tier("a100-80g").name == "A100-80GB" and gpus.tier("A100-40G").name == "A100"
    assert gpus.tier("v100-32gib").name == "V100-32GB"
    with pytest.raises(FtctlError, match="says 20 GB, less than ftctl's A100 40 GB, A100-80GB 80 GB"):
        gpus.tier("a100_20gb")


def test_a_mig_slice_is_refused_as_one():
    with pytest.raises(FtctlError, match="MIG slice of a GPU: ftctl plans whole GPUs") as e:
        gpus.parse("gpu:nvidia_a100_3g.20gb:1")
    assert "Accepted forms" in str(e.value)


@pytest.mark.parametrize("text", ["gpu:2", "GPU:8", "4"])
def test_a_count_without_a_type_asks_for_the_type(text):
    with pytest.raises(FtctlError, match="names no GPU type") as e:
        gpus.parse(text)
    assert "gpu:TYPE:" in str(e.value) and "sinfo" in str(e.value) and "A40" in str(e.value)


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


# the university cluster cards: (memory GB, compute capability, bf16 and FlashAttention 2, dense TFLOPS)
CLUSTER_CARDS = {
    "A40": (48, (8, 6), True, 149.7),
    "RTXA6000": (48, (8, 6), True, 154.8),
    "RTXA5000": (24, (8, 6), True, 111.1),
    "RTXA4000": (16, (8, 6), True, 76.7),
    "A30": (24, (8, 0), True, 165),
    "A10": (24, (8, 6), True, 125),
    "A10G": (24, (8, 6), True, 70),
    "L40": (48, (8, 9), True, 181),
    "L40S": (48, (8, 9), True, 362),
    "RTX6000-Ada": (48, (8, 9), True, 364.2),
    "RTX3090": (24, (8, 6), True, 71),
    "RTX8000": (48, (7, 5), False, 130.5),
    "RTX6000": (24, (7, 5), False, 130.5),
    "RTX2080Ti": (11, (7, 5), False, 53.8),
    "TITANRTX": (24, (7, 5), False, 130),
    "V100S": (32, (7, 0), False, 130),
    "V100-32GB": (32, (7, 0), False, 125),
}


@pytest.mark.parametrize("name", sorted(CLUSTER_CARDS))
def test_cluster_cards(name):
    t = gpus.TIERS[name]
    memory, capability, ampere, tflops = CLUSTER_CARDS[name]
    assert (t.memory_gb, t.compute_capability, t.bf16, t.flash_attn2, t.peak_tflops) == (
        memory,
        capability,
        ampere,
        ampere,
        tflops,
    )
    assert not t.flash_attn3


def test_features_follow_the_compute_capability():
    for t in gpus.TIERS.values():
        assert t.compute_capability >= (7, 0)  # no Pascal: the trainer's Triton kernels need sm70
        assert t.bf16 == t.flash_attn2 == (t.compute_capability >= (8, 0)), t.name
        assert t.flash_attn3 == (t.compute_capability[0] == 9), t.name
        assert t.peak_tflops > 0


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


def test_a_cards_number_alone_is_answered_with_the_card():
    """`--gpus 4090` read as 4090 GPUs of no type, with gpu:TYPE:4090 offered."""
    with pytest.raises(
        FtctlError, match=r"--gpus '4090' reads as a count of GPUs of no type: for the card, --gpus 1xRTX4090"
    ):
        gpus.parse("4090")


def test_a_cards_number_after_a_count_is_the_card():
    """explore16: `--gpus 2x4090` (and 1x3090) was "Cannot read --gpus", though `--gpus 4090` named RTX4090."""
    assert str(gpus.parse("2x4090")) == "2xRTX4090"
    assert str(gpus.parse("1x3090")) == "1xRTX3090"
    assert str(gpus.parse("2x8x4090")) == "2x8xRTX4090"
    with pytest.raises(FtctlError, match="--gpus '2x8' names no GPU type, and ftctl plans for one: 2x8xTYPE "):
        gpus.parse("2x8")
