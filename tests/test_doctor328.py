"""doctor and the preflight on a machine of mixed cards (helper 328, after helpers 318 and 323's one kind a run):

1. `ftctl doctor --gpus 1xRTX3060` beside an RTX 4090 said "not on this machine": compared with the fastest kind only.
2. `ftctl doctor --network` compared with the fastest kind only, and pinned no cards: its processes ran on whichever
   cards CUDA put first, not the kind it checked.
3. A card ftctl does not list, planned as a listed one, was named by that one to the user: an 8 GB RTX 3060 (planned
   as an RTX3070) read "this machine has 1xRTX4090 and 1xRTX3070". (The 8 GB 3060 is listed since: RTX3060-8GB; an
   RTX 3050 is the unlisted card here.)

nvidia-smi is the one stand-in (no GPU here): tests/fake_gpus.py's. The probe's processes are real python processes
started by network_check; a sitecustomize on their PYTHONPATH writes down the cards they are given and ends them
before torch is imported (the all-reduce itself is test_local_backend's and the netcheck tests').
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.local.backend import LocalBackend, gpus_here_say, machine_gpus, network_check
from ftctl.plan import make_plan
from ftctl.preflight import ERROR, check_gpus
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec

RTX4090, RTX3090, RTX3060, RTX3050 = (
    "NVIDIA GeForce RTX 4090, 24564",
    "NVIDIA GeForce RTX 3090, 24576",
    "NVIDIA GeForce RTX 3060, 12288",
    "NVIDIA GeForce RTX 3050, 8192",  # not listed: planned as an RTX3070
)
LLAMA_1B = "meta-llama/Llama-3.2-1B"
NAMED = "1xRTX4090 and 1x RTX 3050 (8 GiB, planned as an RTX3070)"


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


# ------------------------------------------------------------------------------------- 1. doctor --gpus, every kind
def test_doctor_gpus_finds_a_kind_that_is_not_the_fastest(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060)
    assert gpus_here_say("1xRTX3060")  # was: "not on this machine" (the 4090 alone)
    assert gpus_here_say("1xRTX4090")
    assert not gpus_here_say("2xRTX3060")
    assert capsys.readouterr().out.splitlines() == [
        "asked:   1xRTX3060: here",
        "asked:   1xRTX4090: here",
        "asked:   2xRTX3060: not on this machine (it has 1xRTX4090 and 1xRTX3060)",
    ]


def test_the_doctor_command_reads_every_kind(tmp_path, monkeypatch):
    """The command itself, in this process (its packages' lines after it): local's and docker's doctor."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3090, RTX3090)
    out = CliRunner().invoke(main, ["doctor", "--backend", "local", "--gpus", "2xRTX3090"]).output
    assert "asked:   2xRTX3090: here" in out, out


# --------------------------------------------------------------------------------- 2. doctor --network, pinned
def _seen_by_the_probe(tmp_path, monkeypatch) -> dict[str, str]:
    """Run network_check's processes only to their start: each writes the CUDA_VISIBLE_DEVICES it was given (the
    launcher's, torchrun, is the first python started) and exits."""
    site, seen = tmp_path / "site", tmp_path / "seen"
    site.mkdir()
    seen.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        f"with open({str(seen / 'launcher')!r}, 'w') as f:\n"
        "    f.write(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset') + ' ' + os.environ.get('CUDA_DEVICE_ORDER', ''))\n"
        "os._exit(0)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    return seen


def test_doctor_network_runs_on_the_cards_of_the_kind_it_checks(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3090, RTX3090)
    seen = _seen_by_the_probe(tmp_path, monkeypatch)
    network_check("2xRTX3090", None)  # was: "this machine has 1xRTX4090"
    assert (seen / "launcher").read_text() == "1,2 PCI_BUS_ID"
    err = capsys.readouterr().err
    assert "all-reduce across 2 process(es) of 2xRTX3090 on this machine's GPUs 1,2 (CUDA_VISIBLE_DEVICES=1,2" in err


def test_doctor_network_without_gpus_pins_the_fastest_kind(tmp_path, monkeypatch, capsys):
    """`ftctl doctor --network`: the kind a run plans first; its cards pinned (CUDA's order may put the other first)."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3060, RTX4090, RTX4090)
    seen = _seen_by_the_probe(tmp_path, monkeypatch)
    rc = CliRunner().invoke(main, ["doctor", "--network"]).exit_code
    assert rc == 1  # no result: the probe was ended at its start
    assert (seen / "launcher").read_text() == "1,2 PCI_BUS_ID"  # was: unset
    # one kind here: every card, nothing pinned (as before)
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX4090)
    network_check("2xRTX4090", None)
    assert (seen / "launcher").read_text() == "unset "
    assert "on this machine\n" in capsys.readouterr().err


def test_doctor_network_refuses_what_no_kind_has(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3050)
    for asked, nodes in (("2xRTX4090", None), ("1xRTX4090", 2), ("2xRTX3060", None)):
        with pytest.raises(
            FtctlError, match="^" + re.escape(f"--gpus {asked}: this machine has {NAMED}, and doctor --network")
        ):
            network_check(asked, nodes)


# ------------------------------------------------------------------------- 3. a card by its own name, not its tier
def test_an_unlisted_card_is_named_by_its_own_name(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3050)
    here = LocalBackend().detected_gpus()
    assert here == "1xRTX4090+1xRTX3070"  # the tiers planned, as --gpus takes them
    [found] = check_gpus(
        make_plan(make_spec([], method="qlora", gpus="1xRTX3060", model_name_or_path=LLAMA_1B)), "local", here
    )
    assert (found.level, found.what) == (ERROR, f"--gpus 1xRTX3060 plans for 12 GB a GPU; this machine has {NAMED}")
    assert found.fix.startswith("use --gpus 1xRTX4090 or --gpus 1xRTX3070 so that memory")  # what --gpus takes
    [found] = check_gpus(
        make_plan(make_spec([], method="qlora", gpus="2xRTX3070", model_name_or_path=LLAMA_1B)), "local", here
    )
    assert found.what == f"--gpus 2xRTX3070 asks for 2 GPUs; this machine has {NAMED}"
    assert found.fix.startswith("use --gpus 1xRTX3070 (or leave")
    assert not gpus_here_say("1xRTX3060")
    assert capsys.readouterr().out == f"asked:   1xRTX3060: not on this machine (it has {NAMED})\n"


def test_one_kind_named_by_its_own_cards(tmp_path, monkeypatch):
    """The card alone, and beside a listed card planned as the same tier (an RTX 3090 Ti with an RTX 3090); an 8 GB
    RTX 3060 is its own tier (it was planned as an RTX3070: 1.6x its TFLOPS)."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3050)
    [found] = check_gpus(
        make_plan(make_spec([], method="qlora", gpus="1xRTX3060", model_name_or_path=LLAMA_1B)), "local", machine_gpus()
    )
    assert found.what == (  # was: "this machine has 1xRTX3070, 8 GB each"
        "--gpus 1xRTX3060 plans for 12 GB a GPU; this machine has 1x RTX 3050 (8 GiB, planned as an RTX3070)"
    )
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3060, 8192")
    assert (machine_gpus(), machine_gpus().words) == ("1xRTX3060-8GB", {})
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3090, "NVIDIA GeForce RTX 3090 Ti, 24564")
    here = machine_gpus()
    assert (here, here.words) == (
        "2xRTX3090",
        {"2xRTX3090": "1xRTX3090 and 1x RTX 3090 Ti (24 GiB, planned as an RTX3090)"},
    )
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3090)  # every card listed: the --gpus form, as before
    assert machine_gpus().words == {}
