"""Review 331: the step-time speeds named where they are said. 9e03153 removed plan.MFU (ADAPTER_MFU, by the model's
width, since 1e70ba9); ftctl.sky.cost's docstring still named it, and docs/skypilot.md priced every weight at its 35%
(fft's at 53% since v112, an 8B adapter's at 54% since v117)."""

from __future__ import annotations

import re
from pathlib import Path

from ftctl import plan

ROOT = Path(__file__).resolve().parent.parent


def test_every_plan_constant_named_in_ftctl_and_docs_is_one():
    named = re.compile(r"(?<![\w.])plan\.([A-Z][A-Z0-9_]+)\b")
    files = [*ROOT.joinpath("ftctl").rglob("*.py"), *ROOT.joinpath("docs").glob("*.md"), ROOT / "README.md"]
    missing = sorted(
        f"{path.relative_to(ROOT)}: plan.{name}"
        for path in files
        for name in set(named.findall(path.read_text()))
        if not hasattr(plan, name)
    )
    assert not missing, missing


def test_skypilot_docs_price_each_weight_at_its_own_speed():
    text = (ROOT / "docs" / "skypilot.md").read_text()
    bullet = text.split("- tokens per second = ", 1)[1].split("\n\n", 1)[0]
    low, high = plan.ADAPTER_MFU[0][1], plan.ADAPTER_MFU[-1][1]
    for said in (f"{plan.FULL_MFU:.0%}", f"{low:.0%} to {high:.0%}", f"{plan.ATTENTION_MFU:.0%}", "checkpointing"):
        assert said in bullet, (said, bullet)
