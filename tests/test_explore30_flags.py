"""SkyPilot's own `sky launch` flags on ftctl's command line (a SkyPilot user's first lines): each said as ftctl takes
it (helper 132, explore30; ftctl/foreign_args.py SKY_FLAGS)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main

RUN = ["--backend", "sky", "--gpus", "8xA100", "--model-params", "7b", "--output", "s3://b/o"]


@pytest.mark.parametrize(
    "args,said",
    [
        # click offered "Did you mean one of: '--account', '--cluster'?"
        (
            ["--cloud", "aws"],
            "--cloud is SkyPilot's (sky launch); here: --infra CLOUD (--infra aws), or -o cloud=CLOUD.",
        ),
        (
            ["--region", "us-east-1"],
            "here: --infra CLOUD/REGION (--infra aws/us-east-1)",
        ),  # was "Did you mean '--partition'?"
        (["--num-nodes", "2"], "here: --nodes N"),  # was "Did you mean one of: '--model', '--nodes'?"
        (["-i", "10"], "here: -o idle_minutes=N"),  # was "No such option '-i'."
        (["--image-id", "docker:x"], "here: --container docker:IMAGE"),  # was "Did you mean '--time'?"
        (["--cloud", "aws", "--region", "us-east-1"], "--cloud is SkyPilot's"),  # not "FastChat's and TRL's ..."
        (["--use_spot"], "spot is a run key: --spot, or -o spot=true"),  # "--spot VALUE" read VALUE as the run file
    ],
)
def test_skypilots_launch_flags_are_said_as_ftctl_takes_them(args, said):
    result = CliRunner().invoke(main, ["render", *RUN, *args])
    assert result.exit_code == 2 and said in result.output, result.output
    assert "FastChat" not in result.output and "Did you mean" not in result.output, result.output


def test_skypilots_cluster_flag_is_said_where_it_reads_as_a_run_file(tmp_path, monkeypatch):
    """`ftctl launch ... -c dev` (SkyPilot: `sky launch -c CLUSTER`) said only "Run file 'dev' does not exist. Pass an
    existing YAML file with -c."."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["render", *RUN, "-c", "dev"])
    assert result.exit_code != 0 and "(SkyPilot's -c CLUSTER is --cluster dev here.)" in result.output, result.output
