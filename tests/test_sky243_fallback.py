"""More GPU types and on-demand fallback for a SkyPilot run, opt-in (explore46 #8, helper 243): -o also_gpus offers
SkyPilot more types that run the plan as it is (the plan's architecture, at least its memory), -o on_demand_fallback
lets a --spot job run on on-demand instances where no spot ones are to be had. What SkyPilot makes of each task is
asked of the installed SkyPilot, offline: its reading of the task, and its optimizer on the fixture catalog with
A100-80GB rows added (prices in the shape of GCP's list prices)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from ftctl.errors import FtctlError
from ftctl.sky import cost
from ftctl.sky import render as sky_render
from tests.render_fixtures import REPO, prepared, sky_reads

MODEL = "meta-llama/Llama-3.1-8B"
# an a2-ultragpu-8g (8 A100-80GB) beside the fixture's a2-highgpu-8g: dearer on demand and on spot
ULTRA = [
    "a2-ultragpu-8g,96.0,1360.0,,,,us-central1,us-central1-a,5.91582,2.958",
    ",,,A100-80GB,8,A100-80GB,us-central1,us-central1-a,34.2,13.6",
]


def sky(overrides=(), **flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(list(overrides), **{**args, **flags})


def resources(prep) -> dict:
    return yaml.safe_load(prep.text.split("\n", 1)[1])["resources"]


def test_nothing_is_offered_beyond_the_plans_gpus_unless_asked():
    """As `sky launch --gpus A100:8` asks: a bigger card costs more, and on-demand up to three times spot."""
    assert resources(sky())["accelerators"] == "A100:8"
    spot = resources(sky(spot=True))
    assert spot["use_spot"] is True and "any_of" not in spot


def test_only_types_that_run_the_plan_as_it_is_are_taken():
    assert resources(sky(["also_gpus=A100-80GB"]))["accelerators"] == {"A100": 8, "A100-80GB": 8}
    assert resources(sky(["also_gpus=V100-32GB,V100S"], gpus="2xV100"))["accelerators"] == {
        "V100": 2,
        "V100-32GB": 2,
        "V100S": 2,
    }
    assert sky(["also_gpus=a100-80gb, A100"]).spec.also_gpus == "A100-80GB"  # its own kind dropped, spelled as ftctl's
    with pytest.raises(  # (the A800s are listed since session 63)
        FtctlError,
        match=r"H100 is another architecture \(sm90\) than A100's \(sm80\)\..*\(here: A100-80GB, A800, A800-80GB\)",
    ):
        sky(["also_gpus=H100"])
    with pytest.raises(FtctlError, match=r"A100 has 40 GB, less than the 80 GB the plan fits within"):
        sky(["also_gpus=A100"], gpus="8xA100-80GB")
    with pytest.raises(FtctlError, match=r"GH200 sits on another kind of host CPU than H100"):
        sky(["also_gpus=GH200"], gpus="8xH100")
    with pytest.raises(FtctlError, match=r"-o also_gpus=L4 with --gpus cpu"):
        sky(["also_gpus=L4"], gpus="cpu", infra="k8s", model_params="0.5b")
    with pytest.raises(FtctlError, match=r"does not take also_gpus \(sky\)"):
        prepared(["also_gpus=A100-80GB"], backend="slurm", gpus="8xA100", output_dir="/tmp/t243")


def test_on_demand_fallback_is_only_for_spot():
    with pytest.raises(FtctlError, match=r"on_demand_fallback=true falls back from spot instances.*--managed runs"):
        sky(["on_demand_fallback=true"], managed=True)
    with pytest.raises(FtctlError, match=r"on_demand_fallback=true falls back"):  # no spot market on Slurm
        sky(["on_demand_fallback=true"], spot=True, infra="slurm/c")
    res = resources(sky(["on_demand_fallback=true"], spot=True))
    assert res["any_of"] == [{"use_spot": True}, {"use_spot": False}] and "use_spot" not in res


_SKY_READS = r"""
import json, sys
from tests.sky_validate import _import_sky
sky = _import_sky()
from ftctl.sky import sdk
cases = json.load(sys.stdin)
out = {"tasks": [], "optimized": []}
for text in cases["tasks"]:
    task = sky.Task.from_yaml_str(text)  # SkyPilot's schema, and each candidate's Resources validated
    out["tasks"].append({
        "options": sorted([sorted(r.accelerators.items())[0][0], bool(r.use_spot)] for r in task.resources),
        "recoveries": sorted({json.dumps(r.job_recovery, sort_keys=True) for r in task.resources}),
        "set": isinstance(task.resources, set),
    })
for asked, nodes in cases["optimize"]:
    out["optimized"].append(sdk._cheapest(sky, asked, nodes))
print(json.dumps(out, default=list))
"""


def test_skypilot_reads_the_options_and_prices_the_cheapest_and_the_rest(tmp_path):
    home = tmp_path / "home"
    catalog = home / ".sky" / "catalogs" / "v8"
    shutil.copytree(REPO / "tests" / "sky" / "catalog" / "v8", catalog)
    with (catalog / "gcp" / "vms.csv").open("a") as f:
        f.write("\n".join(ULTRA) + "\n")
    both = sky(["also_gpus=A100-80GB", "on_demand_fallback=true"], spot=True, infra="gcp")
    bigger = sky(["also_gpus=A100-80GB"], infra="gcp")
    plain = sky(spot=True, infra="gcp")
    cases = {
        "tasks": [both.text, bigger.text],
        "optimize": [[sky_render.optimizer_resources(r.spec, r.plan), 1] for r in (both, bigger, plain)],
    }
    out = sky_reads(_SKY_READS, cases, home, tmp_path)
    managed, cluster = out["tasks"]
    # four candidates, one recovery for all (SkyPilot's StrategyExecutor.make refuses candidates that differ in it), a
    # set: its optimizer launches the cheapest it finds and fails over to the next
    assert managed["options"] == [["A100", False], ["A100", True], ["A100-80GB", False], ["A100-80GB", True]]
    assert len(managed["recoveries"]) == 1 and "EAGER_NEXT_REGION" in managed["recoveries"][0]
    assert managed["set"] and cluster["set"] and cluster["options"] == [["A100", False], ["A100-80GB", False]]
    priced_both, priced_bigger, priced_plain = out["optimized"]
    # the cheapest is what was asked before: the plan's card, on spot, at the same price
    assert (priced_both["accelerators"], priced_both["spot"]) == ({"A100": 8}, True)
    assert priced_both["hourly_per_node"] == priced_plain["hourly_per_node"] and "options" not in priced_plain
    assert priced_bigger["accelerators"] == {"A100": 8} and not priced_bigger["spot"]
    # each other option priced, cheapest first: the estimate says what a fallback costs
    prices = [(o["accelerators"], o["spot"], round(o["hourly_per_node"], 2)) for o in priced_both["options"]]
    assert prices == [
        ({"A100": 8}, True, 12.35),
        ({"A100-80GB": 8}, True, 16.56),
        ({"A100": 8}, False, 29.39),
        ({"A100-80GB": 8}, False, 40.12),
    ]
    said = cost.describe(priced_both, both.spec, both.plan).splitlines()
    assert said[0].startswith("cheapest       GCP us-central1 a2-highgpu-8g (A100:8) (spot): $12.35/h per node")
    assert said[1] == (
        "fallbacks      A100-80GB:8 (spot) $16.56/h, A100:8 (on-demand) $29.39/h, A100-80GB:8 (on-demand) $40.12/h per node"
    )
    bigger_said = cost.describe(priced_bigger, bigger.spec, bigger.plan).splitlines()
    assert bigger_said[1] == "fallbacks      A100-80GB:8 $40.12/h per node"  # on demand, as the run asks
