"""A multi-node Slurm job's torchrun waits for the first node's rendezvous store as long as torch's rendezvous does
(helper 242, explore48): with torch's c10d default (read_timeout, 60 s), a node whose torchrun started a minute or
two before the first node's (its container imported or torch imported sooner) failed "The client socket has timed out
after 60000ms while trying to connect" (pytorch/pytorch#107021; measured here: a head 240 s late failed the job)."""

from __future__ import annotations

from ftctl.launch import RDZV_READ_TIMEOUT_S
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.1-8B"


def _torchruns(gpus: str) -> list[str]:
    text = prepared(["preflight_network=true"], backend="slurm", gpus=gpus, model_name_or_path=MODEL,
                    output_dir="/fixed/o").text  # fmt: skip
    return [line for line in text.splitlines() if line.startswith("srun ")]


def test_every_torchrun_of_a_multi_node_job_waits_for_the_head_nodes_store():
    probe, train = _torchruns("2x8xA100")
    for line in (probe, train):
        assert f'-"$SLURM_JOB_ID" --rdzv-conf read_timeout={RDZV_READ_TIMEOUT_S} -m ftctl.trainer' in line, line
    assert RDZV_READ_TIMEOUT_S >= 600  # torch's join_timeout: the rendezvous as a whole waits as long


def test_a_one_node_job_hosts_its_own_store_and_is_left_as_it_was():
    assert not any("--rdzv-conf" in line for line in _torchruns("8xA100"))


def test_a_multi_node_skypilot_task_waits_as_long():
    """The same launch line (launch.torchrun_argv): SkyPilot starts every node's run at once, and one node's may wait
    on its own image pull or imports as a Slurm node's."""
    text = prepared([], backend="sky", gpus="2x8xH100", model_name_or_path=MODEL, output_dir="s3://b/o").text
    assert f"--rdzv-conf read_timeout={RDZV_READ_TIMEOUT_S} -m ftctl.trainer" in text, text
