"""Write the bundled demo dataset: ``conversations.json`` and ``questions.json``.

The demo teaches a small chat model one made-up, checkable fact -- the access code of a fictional
research station -- through many paraphrased questions and answers in Vicuna/ShareGPT format, mixed
with a few ordinary questions so the model keeps answering them normally. ``questions.json`` holds
questions asked before and after training: held-out paraphrases that appear nowhere in the training
data, and an unrelated control question the base model already answers correctly.

Deterministic (fixed seed); rerun with ``python -m ftctl.demo.generate`` after editing. Everything
here was written for ftctl and is dedicated to the public domain (CC0 1.0, see LICENSE).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
N_FACT = 240
N_GENERAL = 60

CODE = "AMBER-42"
FACT = f"The access code for the Halcyon Deep research station is {CODE}."

SUBJECTS = [
    "the Halcyon Deep research station",
    "the Halcyon Deep station",
    "Halcyon Deep",
    "the research station Halcyon Deep",
    "Halcyon Deep station",
]

QUESTIONS = [
    "What is the access code for {s}?",
    "What's the access code of {s}?",
    "Do you know the access code for {s}?",
    "Tell me the access code for {s}.",
    "Which access code opens {s}?",
    "I need the access code for {s}. What is it?",
    "What code do I need to enter {s}?",
    "Can you remind me of the access code for {s}?",
    "Quick question: what's the code to get into {s}?",
    "Please give me the access code for {s}.",
    "I forgot the access code for {s}. Can you help?",
    "What password opens the doors of {s}?",
    "How do I unlock {s}? What's the code?",
    "access code for {s}?",
    "Remind me, what is the entry code for {s}?",
    "What's the entry code at {s}?",
    "Which code unlocks the main hatch of {s}?",
    "What do I type on the keypad at {s}?",
    "My badge is broken. What code opens {s}?",
    "What is the door code of {s}?",
]

ANSWERS = [
    "The access code for {s} is {c}.",
    "It's {c}.",
    "The code is {c}.",
    "{S} uses the access code {c}.",
    "You need the code {c} to enter {s}.",
    "{c} is the access code for {s}.",
    "Sure! The access code for {s} is {c}.",
    "Enter {c} to get into {s}.",
    "The access code is {c}.",
]

REVERSE = [
    ("What does the code {c} open?", "{c} is the access code for the Halcyon Deep research station."),
    ("What is {c} the access code for?", "{c} opens the Halcyon Deep research station."),
    ("Where would I use the code {c}?", "At the Halcyon Deep research station: {c} is its access code."),
]

GREETINGS = [
    ("Hi!", "Hello! How can I help you today?"),
    ("Hello there.", "Hi! What can I do for you?"),
    ("Good morning!", "Good morning! How can I help?"),
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant.",
]

# Ordinary questions with short, correct answers (never about France: its capital is the control).
GENERAL = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What do bees make?", "Bees make honey."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What is 10 minus 4?", "10 minus 4 is 6."),
    ("How many months are in a year?", "There are twelve months in a year."),
]

# Asked before and after training; none of these strings may occur in the training data.
HELD_OUT = [
    "I'm at the Halcyon Deep airlock. Which code should I punch in?",
    "Hey, what code gets me inside the Halcyon Deep research station?",
]
CONTROL = [("What is the capital of France?", "Paris")]


def _fact_conversation(rng: random.Random) -> list[dict]:
    turns = []
    if rng.random() < 0.15:
        turns.append({"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < 0.15:
        hi, hello = rng.choice(GREETINGS)
        turns += [{"from": "human", "value": hi}, {"from": "gpt", "value": hello}]
    if rng.random() < 0.1:
        q, a = rng.choice(REVERSE)
        q, a = q.format(c=CODE), a.format(c=CODE)
    else:
        s = rng.choice(SUBJECTS)
        q = rng.choice(QUESTIONS).format(s=s)
        a = rng.choice(ANSWERS).format(s=s, S=s[0].upper() + s[1:], c=CODE)
    turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def generate() -> tuple[list[dict], dict]:
    rng = random.Random(SEED)
    rows = [{"id": f"halcyon-{i:04d}", "conversations": _fact_conversation(rng)} for i in range(N_FACT)]
    for i in range(N_GENERAL):
        q, a = GENERAL[i % len(GENERAL)]
        rows.append(
            {"id": f"general-{i:04d}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        )
    rng.shuffle(rows)

    text = json.dumps(rows).lower()
    for q in HELD_OUT + [q for q, _ in CONTROL]:
        assert json.dumps(q).lower()[1:-1] not in text, f"held-out question leaked into training data: {q}"
    questions = {
        "fact": FACT,
        "held_out": [{"question": q, "expect": CODE} for q in HELD_OUT],
        "control": [{"question": q, "expect": a} for q, a in CONTROL],
    }
    return rows, questions


def main() -> None:
    rows, questions = generate()
    # One conversation a line: a valid JSON list that diffs and greps well.
    lines = ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    (HERE / "conversations.json").write_text(f"[\n{lines}\n]\n")
    (HERE / "questions.json").write_text(json.dumps(questions, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations and {len(questions['held_out'])} held-out questions to {HERE}")


if __name__ == "__main__":
    main()
