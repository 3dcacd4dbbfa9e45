"""The nearest plans a refusal offers: more of the card asked for first, then a bigger card, an older one last."""

from __future__ import annotations

import json
import re

import pytest

from ftctl import gpus
from ftctl.plan import OFFLOAD_STRATEGIES, PlanError
from tests.test_plan import MOE_CONFIGS, _fits, plan


def _offered(model: str, method: str, asked: str) -> list[str]:
    with pytest.raises(PlanError) as e:
        plan(method=method, gpus=asked, model_name_or_path=model)
    return re.findall(r"--gpus (\S+) --method (\S+)", str(e.value).split("Nearest plans that fit: ")[1])


@pytest.mark.parametrize(
    "name,method,first",
    [
        # sorted by total GPU memory, these were offered 4xV100-32GB (fp16, no FlashAttention; 128 GB against 160) and
        # 4x8xV100-32GB before any H100
        ("Qwen3-30B-A3B", "lora", "2xH100"),
        ("Mixtral-8x7B", "fft", "2x8xH100"),
    ],
)
def test_h100s_asked_for_are_offered_more_h100s_first(tmp_path, name, method, first):
    (tmp_path / "config.json").write_text(json.dumps(MOE_CONFIGS[name][1]))
    offered = _offered(str(tmp_path), method, "1xH100")
    assert offered[0] == (first, method), offered
    p = plan(method=method, gpus=first, model_name_or_path=str(tmp_path))
    _fits(p)
    assert p.strategy not in OFFLOAD_STRATEGIES and p.precision == "bf16"


def test_the_card_order_is_the_asked_one_then_bigger_then_older():
    place = {t.name: n for n, t in gpus.offered_instead(gpus.TIERS["H100"])}
    assert place["H100"] == 0 and place["H200"] == place["B200"] == 1
    assert place["A100-80GB"] == place["V100-32GB"] == place["L40S"] == 2
    place = {t.name: n for n, t in gpus.offered_instead(gpus.TIERS["A10G"])}  # bigger Ampere on: bf16 kept
    assert place["A100"] == place["L40S"] == place["H100"] == 1 and place["V100-32GB"] == 2
    assert "RTXA4000" not in place  # offered only where asked for (gpus.SUGGESTED)
