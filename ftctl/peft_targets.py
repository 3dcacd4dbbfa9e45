"""PEFT's own LoRA target modules by model type: what ``LoraConfig(target_modules=None)`` adapts, and so what TRL
adapts where its ``lora_target_modules`` is left out (spec.PEFT_TARGETS).

The table is PEFT's ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` (peft/utils/constants.py), read from the
installed PEFT's source as the literal it is there, not copied here and not imported: importing it imports torch,
transformers and bitsandbytes (seconds, on every `ftctl plan`), which the launcher's environment need not have.
Where the source holds it otherwise, it is imported; where PEFT is not installed, nothing is known.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

TABLE = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"


def default_targets(model_type: str) -> list[str] | str | None:
    """PEFT's target modules for ``model_type`` (a list of names; a pattern, a string, for a few multimodal ones);
    None where PEFT has none for it (PEFT then refuses: 'Please specify `target_modules`')."""
    table = lora_table()
    return None if table is None else table.get(model_type)


def installed() -> bool:
    return lora_table() is not None


@functools.cache
def lora_table() -> dict | None:
    """PEFT's table; None where PEFT is not installed."""
    found = importlib.util.find_spec("peft")
    if found is None or not found.submodule_search_locations:
        return None
    source = Path(next(iter(found.submodule_search_locations)), "utils", "constants.py")
    try:
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == TABLE for t in node.targets):
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    from peft.utils import constants  # not a literal there (a later PEFT): its own value

    return getattr(constants, TABLE)
