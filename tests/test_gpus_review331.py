"""Review 331 #3: on a machine of mixed cards a plan for a card it lacks (--gpus 2xA100-80GB beside 2 RTX 4090s and
one RTX 3090) was told to use '--gpus 2xRTX4090 or --gpus 2xRTX3090': the machine has one 3090, and that --gpus is
refused in turn ('asks for 2 GPUs'). Only the kinds with that many cards are offered."""

from __future__ import annotations

from ftctl import preflight
from ftctl.plan import make_plan
from tests.render_fixtures import make_spec


def test_a_mixed_machine_offers_only_the_kinds_with_that_many_cards():
    plan = make_plan(make_spec(model_name_or_path="meta-llama/Llama-3.2-1B", method="lora", gpus="2xA100-80GB"))
    (finding,) = preflight.check_gpus(plan, "local", "2xRTX4090+1xRTX3090")
    assert "--gpus 2xRTX4090 so that" in str(finding) and "2xRTX3090" not in str(finding), str(finding)
