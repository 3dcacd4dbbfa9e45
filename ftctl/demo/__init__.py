"""The bundled demo dataset (``--data builtin:demo``), shipped as package data.

``conversations.json``: a few hundred Vicuna/ShareGPT conversations teaching one made-up fact (the
access code of a fictional research station). ``questions.json``: held-out questions (not in the
training data) with the expected answer substring, and a control question the base model already
answers. Written by ``generate.py``; public domain (CC0, see LICENSE).
"""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_DEMO = "builtin:demo"
_HERE = Path(__file__).resolve().parent


def demo_data_path() -> Path:
    """Path of the demo conversations file (what ``builtin:demo`` resolves to)."""
    return _HERE / "conversations.json"


def demo_questions() -> dict:
    """``{"fact": str, "held_out": [{"question", "expect"}], "control": [{"question", "expect"}]}``."""
    return json.loads((_HERE / "questions.json").read_text())
