"""The trainer's data layer: formats, loss masks, checks, truncation, packing through SFTTrainer."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.trainer.data import (
    IGNORE_INDEX,
    PACK_MULTIPLE,
    build_dataset,
    check_data,
    packed_padding,
    prepare_data,
    sft_dataset_config,
)

EOT = "<|im_end|>"


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def trained_spans(tokenizer, input_ids, labels) -> list[str]:
    """Decoded runs of consecutive tokens that carry a label."""
    runs, run = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return [tokenizer.decode(r) for r in runs]


def only_row(path, tokenizer, max_length=512):
    dataset = build_dataset(path, tokenizer, max_length)
    assert len(dataset) == 1
    return dataset[0]


# --------------------------------------------------------------------------------------------
# Formats and masks


def test_sharegpt_masks_cover_assistant_content_and_end_of_turn(tmp_path, tiny_tokenizer):
    conv = [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "What is the code?"},
        {"from": "gpt", "value": "The code is AMBER-42."},
        {"from": "user", "value": "Again?"},
        {"from": "chatgpt", "value": "AMBER-42.\n\nAgain."},
        {"from": "human", "value": "Thanks"},
        {"from": "bard", "value": "You're welcome!"},
    ]
    row = only_row(write_json(tmp_path / "c.json", [{"id": "a", "conversations": conv}]), tiny_tokenizer)
    assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == [
        "The code is AMBER-42." + EOT,
        "AMBER-42.\n\nAgain." + EOT,
        "You're welcome!" + EOT,
    ]
    # Roles are mapped to the template's names (never rendered as "human"/"gpt"), the whole row is kept.
    text = tiny_tokenizer.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is the code?")
    assert "<|im_start|>human" not in text and "<|im_start|>gpt" not in text and "<|im_start|>assistant\n" in text
    assert row["labels"][-1] == IGNORE_INDEX  # the newline after the last <|im_end|> is not trained


def test_an_assistant_turn_of_weight_0_is_context_not_trained(tmp_path, tiny_tokenizer):
    """OpenAI's fine-tuning format (and ShareGPT's as axolotl reads it): weight 0 on an assistant turn leaves it out
    of the loss (it was trained)."""
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "A bad answer.", "weight": 0},
        {"role": "user", "content": "Try again"},
        {"role": "assistant", "content": "A good answer.", "weight": 1},
    ]
    row = only_row(write_json(tmp_path / "w.json", [{"messages": msgs}]), tiny_tokenizer)
    assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == ["A good answer." + EOT]
    every = check_data(str(tmp_path / "w.json"), tiny_tokenizer, 512, every_token=True)  # it trains them: said
    assert "1 row(s) have assistant turns of weight 0 (or training: false): the loss covers every token" in (
        "\n".join(every.notes)
    )
    assert "A bad answer." in tiny_tokenizer.decode(row["input_ids"])  # still the context of the next turn
    bad = [
        {"messages": [msgs[0], {**msgs[1], "weight": 0.5}]},
        {"messages": [{**msgs[0], "weight": 1}, msgs[3]]},
        {"messages": msgs[:2]},
        {"messages": [msgs[0], {**msgs[3], "training": "no"}]},
        {"messages": [msgs[0], {**msgs[3], "weight": 1, "loss": False}]},
    ]
    report = check_data(write_json(tmp_path / "bad.json", bad), tiny_tokenizer, 512)
    assert [e.split(": ", 1)[1] for e in report.errors] == [
        "turn 2 (assistant) 'weight' is 0.5: an assistant turn's weight is 0 (not trained) or 1, as OpenAI's "
        "fine-tuning format gives it",
        "turn 1 (user) says 'weight': 1, and only assistant turns are trained (a user turn is context; "
        "train_on_inputs: true trains every token)",
        "turn 2 (assistant) 'training' is 'no': give true (trained) or false (context, not trained)",
        "turn 2 (assistant) says 'weight': 1 and 'loss': false: keep one",
        "every label is masked: its assistant turns all have weight 0; give one weight 1",
    ]
    # axolotl's message_field_training (training), its other usual name and ms-swift's per-turn flag: they were
    # passed over without a word, and the answers they mark as context trained
    for flag in ("training", "train", "loss"):
        flagged = [msgs[0], {**msgs[1], flag: False}, msgs[2], {**msgs[3], flag: True}, {**msgs[2], flag: False}]
        row = only_row(write_json(tmp_path / f"{flag}.json", [{"messages": [*flagged, msgs[3]]}]), tiny_tokenizer)
        assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == 2 * ["A good answer." + EOT]
    # ShareGPT turns carry the same key in the wild (axolotl reads it): it was passed over, and the bad answer trained.
    # SlimOrca's human turns say 0.0 and its gpt turns 1.0: taken as they are (a human turn never trains)
    conv = [
        {
            "from": m["role"].replace("assistant", "gpt").replace("user", "human"),
            "value": m["content"],
            "weight": float(m.get("weight", 1)) if m["role"] == "assistant" else 0.0,
        }
        for m in msgs
    ]
    row = only_row(write_json(tmp_path / "s.json", [{"conversations": conv}]), tiny_tokenizer)
    assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == ["A good answer." + EOT]


def test_a_chat_template_path_renders_the_rows_and_places_the_masks(tmp_path, tiny_model_dir):
    """chat_template_path replaces the model's template: rows render with it, the loss covers its assistant turns and
    the special token that closes them."""
    from ftctl.trainer.masks import chat_template_from
    from ftctl.trainer.model import load_tokenizer

    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "<|im_start|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
    )
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = chat_template_from(str(template))
    conv = [{"from": "human", "value": "What is the code?"}, {"from": "gpt", "value": "AMBER-42."}]
    row = only_row(write_json(tmp_path / "c.json", [{"conversations": conv}]), tokenizer)
    assert tokenizer.decode(row["input_ids"]).startswith("USER: What is the code?ASSISTANT: ")  # Jinja trim_blocks
    # the answer's first token took the prompt's trailing space (" AMBER"): trained all the same
    assert trained_spans(tokenizer, row["input_ids"], row["labels"]) == [" AMBER-42.<|im_start|>"]


# Templates that render an earlier turn otherwise once later turns follow (written here after the behaviour of the
# models' own): the thinking gate of Qwen3's (an empty <think> block before the answer after the last user turn, an
# earlier turn's thinking dropped, tool calls as <tool_call> blocks), Phi-3's (eos closes the whole conversation) and
# Mistral v0.3's (the system prompt inside the last user turn); and one that has no generation prompt (Alpaca's).
THINK_GATE = (
    "{%- set ns = namespace(last=0) %}{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}"
    "{%- endif %}{%- endfor %}{%- for m in messages %}{%- set c = m.content %}{%- if m.role == 'assistant' %}"
    "{%- set r = '' %}{%- if '</think>' in c %}{%- set r = c.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set c = c.split('</think>')[-1].lstrip('\\n') %}{%- endif %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.index0 > ns.last and (loop.last or r) %}{{- '<think>\\n' + r + '\\n</think>\\n\\n' }}{%- endif %}"
    "{{- c }}{%- for t in m.tool_calls or [] %}{{- '\\n' if c or not loop.first }}<tool_call>{{ t.function.name }} "
    "{{ t.function.arguments | tojson }}</tool_call>{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif m.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>' + c + '</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + c + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
EOS_AT_END = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
NO_GENERATION_PROMPT = (  # an Alpaca-style template: the response header is written with the turn, never alone
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
)
SYSTEM_IN_LAST_USER = (
    "{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] %}{%- set ms = messages[1:] %}"
    "{%- else %}{%- set ms = messages %}{%- endif %}{%- for m in ms %}{%- if m['role'] == 'user' %}"
    "{%- if loop.index0 == ms|length - 2 and sys is defined %}{{- '[INST] ' + sys + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + m['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + m['content']|trim + eos_token }}{%- endif %}{%- endfor %}"
)


@pytest.mark.parametrize("template", ["think-gate", "eos-at-end", "system-in-last-user", "no-generation-prompt"])
def test_templates_that_render_earlier_turns_otherwise_still_mask_every_answer(tmp_path, tiny_tokenizer, template):
    """Every multi-turn row of Qwen3's, Phi-3's or Mistral v0.3's template was refused ("renders turn 3 differently
    inside the whole conversation"), and a template without a generation prompt trained its response header: the
    turns of the whole rendering are found, and each answer trains with the token that closes it, nothing of a user
    turn, a header or a thinking block the template writes itself."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = {
        "think-gate": THINK_GATE,
        "eos-at-end": EOS_AT_END,
        "system-in-last-user": SYSTEM_IN_LAST_USER,
        "no-generation-prompt": NO_GENERATION_PROMPT,  # its header was trained with the answer
    }[template]
    close = "<|im_end|>"  # the tiny tokenizer's eos and end of turn alike
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there"},
                {"role": "user", "content": "Code?"},
                {"role": "assistant", "content": "AMBER-42"},
                {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "AMBER-42 again"},
            ]
        }
    ]
    if template == "think-gate":
        call = {"type": "function", "function": {"name": "lookup_code", "arguments": {}}}
        rows += [
            {  # reasoning in the data: an earlier turn's is dropped by the template (that turn is context), the last
                # one's trains
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
                    {"role": "user", "content": "3+3?"},
                    {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n6"},
                ]
            },
            {  # an agent's turns after the last user turn: a call alone, then the answer
                "messages": [
                    {"role": "user", "content": "Code?"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "content": "AMBER-42"},
                    {"role": "assistant", "content": "It is AMBER-42."},
                ]
            },
        ]
    report, dataset = prepare_data(write_json(tmp_path / "t.json", rows), tokenizer, 512)
    assert report.ok and not report.warnings, (report.errors, report.warnings)
    spans = [trained_spans(tokenizer, row["input_ids"], row["labels"]) for row in dataset]
    lead = " " if template == "system-in-last-user" else ""  # the space after [/INST] starts the answer's token
    gate = "<think>\n\n</think>\n\n" if template == "think-gate" else ""  # written before the last answer: trained
    # eos-at-end (Phi-3's): the eos closing the conversation trains with the last answer, as in a one-turn row and TRL
    end = "\n" + close if template == "eos-at-end" else ""
    assert [s.strip() for s in spans[0]] == [f"{a}{close}" for a in ("Hello there", "AMBER-42")] + [
        f"{gate}AMBER-42 again{close}{end}"
    ]
    assert all(s.startswith(lead) for s in spans[0])
    if template == "think-gate":
        # the earlier turn's thinking is dropped by the template: its bare answer is context (it trained, teaching
        # the model to answer without thinking)
        assert spans[1] == ["<think>\nadd again\n</think>\n\n6" + close]
        assert spans[2] == ["<tool_call>lookup_code {}</tool_call>" + close, gate + "It is AMBER-42." + close]


def test_qwen3s_thinking_block_trains_alike_after_one_turn_and_after_several(tmp_path, tiny_tokenizer):
    """The same last answer trained its <think> opener (or the empty block the template writes for an answer
    without thinking) in a one-turn row, and left it untrained after an earlier exchange (the template drops that
    turn's thinking, so the turn was found by its text): the model never learned to open its thinking itself. Both
    train it now, as TRL's Qwen3 training template does."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = THINK_GATE
    earlier = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}]
    last = [{"role": "user", "content": "3+3?"}]
    rows = [
        {"messages": [*prefix, *last, {"role": "assistant", "content": answer}]}
        for answer in ("<think>\nadd again\n</think>\n\n6", "6")
        for prefix in ([], earlier)
    ]
    report, dataset = prepare_data(write_json(tmp_path / "t.json", rows), tokenizer, 512)
    assert report.ok, report.errors
    last_spans = [trained_spans(tokenizer, row["input_ids"], row["labels"])[-1] for row in dataset]
    assert last_spans == 2 * ["<think>\nadd again\n</think>\n\n6<|im_end|>"] + 2 * [
        "<think>\n\n</think>\n\n6<|im_end|>"
    ]


def test_templates_the_prefix_path_masks_keep_their_spans(tmp_path, tiny_tokenizer):
    """Llama 2's template writes the answer's leading space with the user turn, and has no generation prompt: its
    spans are the prefix renderings' as ever (the space token trains). A template that refuses a lone user turn
    without a generation prompt still closes turns with its token (the probe said none: a false "never stops")."""
    import copy

    from ftctl.trainer.masks import end_of_turn_ids

    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello friend"},
        {"role": "user", "content": "Help?"},
        {"role": "assistant", "content": "Sure thing"},
    ]
    path = write_json(tmp_path / "t.json", [{"messages": conv}])
    llama2 = copy.deepcopy(tiny_tokenizer)
    llama2.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    report, dataset = prepare_data(path, llama2, 512)
    assert report.ok and not report.warnings
    assert trained_spans(llama2, dataset[0]["input_ids"], dataset[0]["labels"]) == [
        " Hello friend" + EOT,
        " Sure thing" + EOT,
    ]
    strict = copy.deepcopy(tiny_tokenizer)  # turns closed by a special token not eos; no lone user turn rendered
    close = strict.convert_ids_to_tokens(1)  # <|im_start|>: special, not eos
    assert close != strict.eos_token
    strict.chat_template = (
        "{% if messages[-1]['role'] != 'assistant' and not add_generation_prompt %}"
        "{{ raise_exception('end on the assistant') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '" + close + "' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    report, dataset = prepare_data(path, strict, 512)
    assert report.ok and not report.warnings and end_of_turn_ids(strict) == [1]
    spans = trained_spans(strict, dataset[0]["input_ids"], dataset[0]["labels"])
    assert [s.strip() for s in spans] == ["Hello friend" + close, "Sure thing" + close]  # the prefix path's


def test_a_template_whose_turns_end_in_plain_text_is_said_to_never_stop(tmp_path, tiny_tokenizer):
    """Another model's template (-o chat_template_path: Llama 3's <|eot_id|> on a ChatML tokenizer) closes a turn
    with text the tokenizer splits into ordinary tokens: the model would learn it as text and never stop. Said, with
    what to use instead (nothing was said: some text followed each answer)."""
    import copy

    from ftctl.trainer.masks import end_of_turn_ids

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] "
        "+ '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant"
        "<|end_header_id|>\\n\\n' }}{%- endif %}"
    )
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path = write_json(tmp_path / "t.json", [{"messages": conv}])
    several = copy.deepcopy(tiny_tokenizer)  # templates by name (Hermes 3, Command R): a dict, read as before
    several.chat_template = {"default": tiny_tokenizer.chat_template, "tool_use": tiny_tokenizer.chat_template}
    assert prepare_data(path, several, 512)[0].ok and end_of_turn_ids(several) == end_of_turn_ids(tiny_tokenizer)
    report, _ = prepare_data(path, tokenizer, 512)
    pieces = len(tokenizer("<|eot_id|>", add_special_tokens=False)["input_ids"])
    assert pieces > 1 and report.warnings == [
        f"after an assistant turn the chat template writes '<|eot_id|>' ({pieces} ordinary tokens of this tokenizer), "
        "no special token: the model will not learn to stop. Use a template whose turns end with one of the "
        f"tokenizer's own ({tokenizer.eos_token!r} is its eos) (1 row)"
    ]


def test_openai_messages_jsonl_with_content_parts(tmp_path, tiny_tokenizer):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Code"}, {"type": "text", "text": "?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "AMBER-42"}]},
                ]
            },
        ],
    )
    dataset = build_dataset(path, tiny_tokenizer, 512)
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [
        ["Hello." + EOT],
        ["AMBER-42" + EOT],
    ]
    # parts are joined by line breaks, as vLLM joins them serving a text model (they ran together: "Code?")
    assert "<|im_start|>user\nCode\n?<|im_end|>" in tiny_tokenizer.decode(dataset[1]["input_ids"])
    image = {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What?"}, image]},
                *[{"role": "assistant", "content": "A cat."}],
            ]
        }
    ]
    report = check_data(write_json(tmp_path / "i.json", rows), tiny_tokenizer, 64)
    assert report.errors[0].endswith(
        "turn 1 'content' holds a part of type 'image_url': ftctl trains language models on text, and reads only text parts "
        "(type text, input_text, output_text); leave the row out, or the part"
    )


def test_alpaca_with_and_without_input(tmp_path, tiny_tokenizer):
    path = write_json(
        tmp_path / "a.json",
        [
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Name a colour", "input": "", "output": "Blue"},
        ],
    )
    dataset = build_dataset(path, tiny_tokenizer, 512)
    first = tiny_tokenizer.decode(dataset[0]["input_ids"])
    assert "<|im_start|>user\nTranslate to French\n\ncat<|im_end|>\n<|im_start|>assistant\nchat<|im_end|>" in first
    assert "<|im_start|>user\nName a colour<|im_end|>" in tiny_tokenizer.decode(dataset[1]["input_ids"])
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [
        ["chat" + EOT],
        ["Blue" + EOT],
    ]


def test_llama_factorys_alpaca_history_is_the_turns_before(tmp_path, tiny_tokenizer):
    """LLaMA-Factory's multi-turn Alpaca rows give the earlier exchanges as history: they were dropped without a
    word, and the last answer trained with its context gone."""
    row = {"instruction": "And in France?", "output": "Paris.", "history": [["Capital of Germany?", "Berlin."]]}
    path = write_json(tmp_path / "h.json", [row, {**row, "history": [["Capital of Germany?"]]}])
    report, dataset = prepare_data(path, tiny_tokenizer, 512)
    text = tiny_tokenizer.decode(dataset[0]["input_ids"])
    assert (
        "user\nCapital of Germany?<|im_end|>\n<|im_start|>assistant\nBerlin.<|im_end|>\n<|im_start|>user\nAnd" in text
    )
    assert trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"]) == [
        "Berlin." + EOT,
        "Paris." + EOT,
    ]
    assert len(report.errors) == 1 and "'history' must be a list of [question, answer] pairs" in report.errors[0]


def test_another_trainers_rows_are_refused_saying_how_to_train_on_them(tmp_path, tiny_tokenizer):
    """A KTO row's undesirable completion (label false) trained as one to imitate, without a word; preference and
    prompt-only rows got the generic "not a conversation". OpenAI's developer role is its system role."""
    rows = [
        {"prompt": "How do I make a cake?", "completion": "BAD", "label": False},
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "Q"}]},
        {"prompt": "Q", "completion": "GOOD", "label": True},
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        },
    ]
    report, dataset = prepare_data(write_json(tmp_path / "k.json", rows), tiny_tokenizer, 512)
    errors = [e.split(": ", 1)[1] for e in report.errors]
    assert errors[0].startswith("'label' is false: a KTO row marking its completion undesirable")
    assert errors[1].startswith("preference data (DPO: 'chosen' and 'rejected'): ftctl trains supervised fine-tuning")
    assert errors[2].startswith("a 'prompt' without a 'completion' (RL data): nothing to train on")
    assert len(errors) == 3 and len(dataset) == 2
    assert tiny_tokenizer.decode(dataset[1]["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_a_sharegpt_rows_system_field_is_its_system_turn(tmp_path, tiny_tokenizer):
    """SlimOrca's and OpenHermes' ShareGPT rows give the system prompt as a top-level field: it was dropped, and the
    template's default system prompt trained in its place (Alpaca's field was read)."""
    conv = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Arr"}]
    path = write_json(tmp_path / "s.json", [{"system": "You are a pirate.", "conversations": conv}])
    first = tiny_tokenizer.decode(build_dataset(path, tiny_tokenizer, 512)[0]["input_ids"])
    assert first.startswith("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nhi<|im_end|>")
    both = [{"system": "A", "conversations": [{"from": "system", "value": "B"}, *conv]}]
    report = check_data(write_json(tmp_path / "b.json", both), tiny_tokenizer, 512)
    assert report.errors == ["b.json row 1: a 'system' field and a system turn both: keep one"]


def test_plain_text_is_trained_entirely_and_said_so(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "The access code is AMBER-42."}])
    report, dataset = prepare_data(path, tiny_tokenizer, 512)
    row = dataset[0]
    assert row["labels"] == row["input_ids"]
    assert tiny_tokenizer.decode(row["input_ids"]) == "The access code is AMBER-42." + EOT  # eos appended
    assert any("plain-text" in n and "every token" in n for n in report.notes)
    assert "plain-text" in report.render()


def test_prompt_completion_text_trains_the_completion_as_trl_does(tmp_path, tiny_tokenizer):
    """TRL's standard prompt-completion rows: the completion and eos train, where TRL's SFTTrainer puts its
    completion mask (the tokens after the common prefix of the prompt's ids and the whole row's, eos appended)."""
    from trl.data_utils import common_prefix_length

    rows = [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "Q: the access code?\nA: ", "completion": "AMBER-42"},  # " AMBER" straddles the boundary
    ]
    dataset = build_dataset(write_jsonl(tmp_path / "pc.jsonl", rows), tiny_tokenizer, 512)
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [
        [" Paris." + EOT],
        [" AMBER-42" + EOT],
    ]
    for row, r in zip(rows, dataset):
        prompt = tiny_tokenizer(row["prompt"])["input_ids"]
        whole = tiny_tokenizer(row["prompt"] + row["completion"] + tiny_tokenizer.eos_token)["input_ids"]
        start = common_prefix_length(prompt, whole)
        assert r["input_ids"] == whole
        assert [label != IGNORE_INDEX for label in r["labels"]] == [False] * start + [True] * (len(whole) - start)
    report = check_data(str(tmp_path / "pc.jsonl"), tiny_tokenizer, 512)  # said, as TRL warns of it
    assert report.notes == [
        "1 prompt-completion row(s) meet inside one token (the first: pc.jsonl line 2): the token that holds the "
        "prompt's end and the completion's start trains with the completion, as in TRL; to keep them apart, start "
        "the completion with the space a prompt ends in (' Paris', not 'is ' + 'Paris')"
    ]


def test_prompt_completion_conversations_train_the_completions_assistant_turns(tmp_path, tiny_tokenizer):
    prompt = [
        {"role": "system", "content": "Answer with the code."},
        {"role": "user", "content": "Door one?"},
        {"role": "assistant", "content": "CEDAR-7."},  # a shot in the prompt: context, not trained
        {"role": "user", "content": "Halcyon Deep?"},
    ]
    row = only_row(
        write_jsonl(
            tmp_path / "pc.jsonl", [{"prompt": prompt, "completion": [{"role": "assistant", "content": "AMBER-42."}]}]
        ),
        tiny_tokenizer,
    )
    assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == ["AMBER-42." + EOT]
    assert "<|im_start|>assistant\nCEDAR-7.<|im_end|>" in tiny_tokenizer.decode(row["input_ids"])
    bad = [
        {"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]},
        {"prompt": "a", "completion": "  "},
        {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]},
        {"prompt": prompt[1:3], "completion": [{"role": "user", "content": "b"}]},
    ]
    report = check_data(write_jsonl(tmp_path / "bad.jsonl", bad), tiny_tokenizer, 512)
    assert report.errors == [
        "bad.jsonl line 1: not a conversation: 'prompt' is a string, 'completion' a list; both must be text, or both "
        "lists of role/content turns",
        "bad.jsonl line 2: empty turn: 'completion' is empty",
        "bad.jsonl line 3: no assistant turn: nothing to train on; every label would be masked",
        "bad.jsonl line 4: no assistant turn in 'completion': nothing to train on",
    ], report.errors


# A Hermes-style template (Qwen2.5's layout, trimmed): tools in the system turn, calls as <tool_call> JSON, results
# as a user turn's <tool_response>
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CALL = {"type": "function", "function": {"name": "door_code", "arguments": {"station": "Halcyon Deep"}}}
TOOLS = [{"type": "function", "function": {"name": "door_code", "parameters": {"type": "object"}}}]


def test_tool_calls_train_and_tool_results_are_context(tmp_path, tiny_tokenizer, monkeypatch):
    messages = [
        {"role": "user", "content": "Open Halcyon Deep."},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "name": "door_code", "content": "AMBER-42"},
        {"role": "assistant", "content": "The code is AMBER-42."},
    ]
    monkeypatch.setattr(tiny_tokenizer, "chat_template", TOOL_TEMPLATE)  # the fixture is shared
    # OpenAI's API gives a call's arguments as a JSON string: the template gets the object, as from the dict
    as_string = {**CALL, "function": {**CALL["function"], "arguments": json.dumps(CALL["function"]["arguments"])}}
    openai = [messages[0], {**messages[1], "tool_calls": [as_string]}, *messages[2:]]
    rows = [{"messages": messages, "tools": TOOLS}, {"messages": openai, "tools": json.dumps(TOOLS)}]
    dataset = build_dataset(write_jsonl(tmp_path / "tools.jsonl", rows), tiny_tokenizer, 512)
    call = '<tool_call>{"name": "door_code", "arguments": {"station": "Halcyon Deep"}}</tool_call>' + EOT
    for row in dataset:
        assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == [call, "The code is AMBER-42." + EOT]
        text = tiny_tokenizer.decode(row["input_ids"])
        assert text.startswith('<|im_start|>system\nTools: [{"type": "function"')  # the schemas: context
        assert "<tool_response>AMBER-42</tool_response>" in text  # the result: context


def qwen25_template() -> str:
    """Qwen2.5's chat template as its tokenizers ship it (TRL keeps the text byte for byte, to recognise the model):
    tools in the system turn, calls as <tool_call> JSON of their arguments `| tojson`, results as a user turn's
    <tool_response>. The tiny tokenizer's <|im_start|>/<|im_end|> are its special tokens too."""
    from importlib.resources import files

    return (files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()


# LLaMA-Factory's sharegpt tool use (its glaive_toolcall data): a function_call turn holds the call's JSON, an
# observation the result, the row's tools the bare schemas as JSON text
LF_TOOLS = [{"name": "door_code", "description": "A station's door code", "parameters": {"type": "object"}}]
LF_ROW = {
    "conversations": [
        {"from": "human", "value": "Open Halcyon Deep."},
        {"from": "function_call", "value": json.dumps({"name": "door_code", "arguments": {"station": "Halcyon Deep"}})},
        {"from": "observation", "value": "AMBER-42"},
        {"from": "gpt", "value": "The code is AMBER-42."},
    ],
    "system": "You open doors.",
    "tools": json.dumps(LF_TOOLS),
}
# the same conversation as TRL takes it: OpenAI's arguments as JSON text, the schemas as {"type": "function", ...}
OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "You open doors."},
        {"role": "user", "content": "Open Halcyon Deep."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "door_code", "arguments": '{"station": "Halcyon Deep"}'}}
            ],
        },
        {"role": "tool", "name": "door_code", "content": "AMBER-42"},
        {"role": "assistant", "content": "The code is AMBER-42."},
    ],
    "tools": [{"type": "function", "function": tool} for tool in LF_TOOLS],
}


def test_llama_factory_tool_rows_train_the_calls_and_answers_never_the_results(tmp_path, tiny_tokenizer, monkeypatch):
    """LLaMA-Factory's function_call/observation rows were refused (unknown role): they are the OpenAI-style
    conversation, rendered by the model's own template with its tools; the loss covers each call (its <tool_call>
    block and <|im_end|>) and the answer, never the result nor the schemas, token for token as the messages row."""
    monkeypatch.setattr(tiny_tokenizer, "chat_template", qwen25_template())  # the fixture is shared
    parallel = {  # two calls in one turn (a list, its arguments as JSON text), their results in one observation
        **LF_ROW,
        "conversations": [
            {"from": "human", "value": "Open Halcyon Deep and Tern."},
            {
                "from": "function_call",
                "value": json.dumps(
                    [
                        {"name": "door_code", "arguments": '{"station": "Halcyon Deep"}'},
                        {"name": "door_code", "arguments": {"station": "Tern"}},
                    ]
                ),
            },
            {"from": "observation", "value": "AMBER-42; CEDAR-7"},
            {"from": "gpt", "value": "AMBER-42 and CEDAR-7."},
        ],
    }
    report, dataset = prepare_data(
        write_jsonl(tmp_path / "t.jsonl", [LF_ROW, OPENAI_ROW, parallel]), tiny_tokenizer, 1024
    )
    assert report.ok and not report.warnings, (report.errors, report.warnings)
    assert report.stats.formats == {"openai": 1, "sharegpt": 2}
    lf, openai, two = dataset
    call = '<tool_call>\n{"name": "door_code", "arguments": {"station": "Halcyon Deep"}}\n</tool_call>'
    assert trained_spans(tiny_tokenizer, lf["input_ids"], lf["labels"]) == [call + EOT, "The code is AMBER-42." + EOT]
    text = tiny_tokenizer.decode(lf["input_ids"])
    assert text.startswith("<|im_start|>system\nYou open doors.\n\n# Tools\n")
    schema = '{"type": "function", "function": {"name": "door_code", "description": "A station\'s door code"'
    assert schema in text  # the bare schema as LLaMA-Factory (and the template) writes it: context
    result = "<|im_start|>user\n<tool_response>\nAMBER-42\n</tool_response><|im_end|>\n"
    assert result in text  # context: the spans above are all that trains
    # the same token ids and loss mask as the OpenAI-style row
    assert (lf["input_ids"], lf["labels"]) == (openai["input_ids"], openai["labels"])
    calls = call + '\n<tool_call>\n{"name": "door_code", "arguments": {"station": "Tern"}}\n</tool_call>'
    assert trained_spans(tiny_tokenizer, two["input_ids"], two["labels"]) == [
        calls + EOT,
        "AMBER-42 and CEDAR-7." + EOT,
    ]


def test_data_check_shows_a_tool_row_as_it_trains(tmp_path, tiny_model_dir):
    """`ftctl data check --show` with a template that renders tools (--chat-template-path): the call and the
    answer marked, the schemas and the result not."""
    from click.testing import CliRunner

    from ftctl.cli import main

    template = tmp_path / "qwen2_5.jinja"
    template.write_text(qwen25_template())
    data = write_jsonl(tmp_path / "tools.jsonl", [LF_ROW])
    args = ["data", "check", data, "--model", str(tiny_model_dir), "--chat-template-path", str(template)]
    got = CliRunner().invoke(main, [*args, "--show", "1"])
    assert got.exit_code == 0, got.output
    assert "OK: ready to train." in got.stdout
    shown = got.stdout.partition("\n\nData ")[0]
    call = '[[<tool_call>\n{"name": "door_code", "arguments": {"station": "Halcyon Deep"}}\n</tool_call><|im_end|>]]'
    assert call in shown and "[[The code is AMBER-42.<|im_end|>]]" in shown
    body = shown.partition("\n")[2]  # below the line that says how trained tokens are marked
    assert "<tool_response>\nAMBER-42\n</tool_response>" in body and body.count("[[") == 2


def test_a_template_that_drops_tool_use_is_refused_in_one_line(tmp_path, tiny_tokenizer, monkeypatch):
    """The tiny tokenizer's ChatML template renders content only: a call would train as an empty answer, the tools
    never be shown. Every such row is refused with one message, in one line that names them and says what to do."""
    rows = [
        LF_ROW,
        OPENAI_ROW,
        LF_ROW,
        {  # a call without the tools' schemas
            "messages": [
                {"role": "user", "content": "Open it."},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},  # no tool use: trains
    ]
    fix = (
        "train with a chat template that renders tool use, -o chat_template_path=TEMPLATE.jinja or a model whose "
        "template does (e.g. Qwen/Qwen2.5-7B-Instruct; ftctl data check: --chat-template-path), or leave these rows out"
    )
    report = check_data(write_jsonl(tmp_path / "tools.jsonl", rows), tiny_tokenizer, 512)
    assert report.errors == [
        "tools.jsonl lines 1-3 (3 rows): the chat template does not render tool calls ('tool_calls') or the 'tools' "
        f"schemas: training would leave them out; {fix}",
        f"tools.jsonl line 4: the chat template does not render tool calls ('tool_calls'): training would leave them "
        f"out; {fix}",
    ], report.errors
    assert report.stats.rows == 1
    # a template that refuses the conversation (Gemma's): in its own words
    monkeypatch.setattr(
        tiny_tokenizer,
        "chat_template",
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}",
    )
    report = check_data(write_jsonl(tmp_path / "tools.jsonl", rows[:2]), tiny_tokenizer, 512)
    assert report.errors == [
        "tools.jsonl lines 1-2 (all 2 rows): the chat template cannot render a tool-calling conversation (it says: "
        f"Conversation roles must alternate user/assistant); {fix}"
    ], report.errors


def test_a_template_that_adds_arguments_to_text_gets_their_json(tmp_path, tiny_tokenizer, monkeypatch):
    """DeepSeek-V3's template writes `'...' + arguments`: an object there is a TypeError, so it gets their JSON text
    (TRL's probe does the same), from an object or a string alike."""
    monkeypatch.setattr(
        tiny_tokenizer,
        "chat_template",
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + (m.content or '') }}"
        "{%- for t in m.tool_calls or [] %}{{ '<call>' + t.function.name + ' ' + t.function.arguments + '</call>' }}"
        "{%- endfor %}{{ '<|im_end|>\\n' }}{%- endfor %}"
        "{%- for t in tools or [] %}{{ t.function.name }}{% endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    )
    dataset = build_dataset(write_jsonl(tmp_path / "t.jsonl", [LF_ROW, OPENAI_ROW]), tiny_tokenizer, 512)
    for row in dataset:
        spans = trained_spans(tiny_tokenizer, row["input_ids"], row["labels"])
        assert spans == ['<call>door_code {"station": "Halcyon Deep"}</call>' + EOT, "The code is AMBER-42." + EOT]


def test_tool_rows_that_say_it_wrongly_are_row_errors(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", qwen25_template())
    human = {"from": "human", "value": "Open it."}
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Open it."},
                {"role": "assistant", "content": "x", "tool_calls": [{}]},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tools": {"a": 1}},
        {
            "messages": [
                {"role": "user", "content": "Open it."},
                {"role": "assistant", "tool_calls": [{"function": {"name": "door_code", "arguments": "{station"}}]},
            ]
        },
        {"conversations": [human, {"from": "function_call", "value": "door_code(station='Tern')"}]},
        {"conversations": [human, {"from": "function_call", "value": '{"arguments": {}}'}]},
        {"conversations": [human, {"from": "gpt", "value": "Done."}], "tools": ["door_code"]},
        # LLaMA-Factory's "no tools": an empty string; a call without arguments: none
        {"conversations": [human, {"from": "gpt", "value": "Done."}], "tools": ""},
        {"conversations": [human, {"from": "function_call", "value": '{"name": "door_code"}'}], "tools": "[]"},
    ]
    report, dataset = prepare_data(write_jsonl(tmp_path / "tools.jsonl", rows), tiny_tokenizer, 512)
    assert report.errors == [
        "tools.jsonl line 1: turn 2 'tool_calls' must be a list of {'type': 'function', 'function': {'name': ..., "
        "'arguments': ...}} objects",
        "tools.jsonl line 2: 'tools' must be a list of function schemas (or its JSON), not {'a': 1}",
        "tools.jsonl line 3: turn 2: a tool call's 'arguments' is a string but not JSON",
        'tools.jsonl line 4: turn 2 (function_call) must hold the call as JSON, {"name": ..., "arguments": {...}} '
        "(or a list of such calls), after the turn's text or in <tool_call> tags, as LLaMA-Factory reads it, not \"door_code(station='Tern')\"",
        'tools.jsonl line 5: turn 2 (function_call) must hold the call as JSON, {"name": ..., "arguments": {...}} '
        "(or a list of such calls), after the turn's text or in <tool_call> tags, as LLaMA-Factory reads it, not '{\"arguments\": {}}'",
        "tools.jsonl line 6: 'tools' must be a list of function schemas (or its JSON), not ['door_code']",
    ], report.errors
    assert report.stats.rows == 2
    call = '<tool_call>\n{"name": "door_code", "arguments": {}}\n</tool_call>' + EOT
    assert trained_spans(tiny_tokenizer, dataset[1]["input_ids"], dataset[1]["labels"]) == [call]


def test_a_directory_of_splits_gives_the_one_each_role_reads(tmp_path, tiny_tokenizer, tiny_model_dir):
    """As `datasets` reads a directory: train/test files (or directories) are splits, never read together."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.trainer.formats import resolve_files

    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "splits").mkdir()
    for name, rows in (("train.jsonl", 3), ("test.jsonl", 1)):
        write_jsonl(tmp_path / "splits" / name, [conv] * rows)
    (tmp_path / "shards").mkdir()
    for name in ("part-0.jsonl", "part-1.jsonl"):
        write_jsonl(tmp_path / "shards" / name, [conv])
    root = tmp_path / "splits"
    assert resolve_files(str(root)) == [str(root / "train.jsonl")]
    assert resolve_files(str(root), held_out=True) == [str(root / "test.jsonl")]
    assert len(build_dataset(str(root), tiny_tokenizer, 128)) == 3
    assert len(build_dataset(str(root), tiny_tokenizer, 128, held_out=True)) == 1
    assert f"Data {root}: 1 file(s) (train.jsonl), max length" in check_data(str(root), tiny_tokenizer, 128).render()
    got = CliRunner().invoke(main, ["data", "check", str(root), "--model", str(tiny_model_dir), "--held-out"])
    assert got.exit_code == 0 and f"Data {root}: 1 file(s) (test.jsonl)," in got.stdout, got.output
    shards = tmp_path / "shards"  # no split names: every file, for either role
    assert (
        resolve_files(str(shards))
        == resolve_files(str(shards), held_out=True)
        == [
            str(shards / "part-0.jsonl"),
            str(shards / "part-1.jsonl"),
        ]
    )


def test_parquet_directory_and_fsspec_uri(tmp_path, tiny_tokenizer):
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    data = tmp_path / "dir"
    (data / "sub").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"conversations": conv}, {"conversations": conv}]), data / "p.parquet")
    write_jsonl(
        data / "sub" / "m.jsonl",
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
    )
    (data / "README.md").write_text("not data")
    report = check_data(str(data), tiny_tokenizer, 512)
    assert report.ok and report.files == 2 and report.stats.rows == 3
    assert report.stats.formats == {"sharegpt": 2, "openai": 1}
    assert not [n for n in report.notes if n.startswith("not read")]
    # files that look like data and are not read are named (they were left out without a word)
    (data / "sub" / "more.csv").write_text("instruction,output\nQ,A\n")
    (data / "notes.txt").write_text("Q A")
    (data / ".hidden").mkdir()
    (data / ".hidden" / "x.csv").write_text("a\n")
    report = check_data(str(data), tiny_tokenizer, 512)
    assert (
        report.files == 2
        and "not read: notes.txt, sub/more.csv: ftctl reads .json, .jsonl (.gz), .parquet or .arrow"
        in "\n".join(report.notes)
    )
    for name in ("sub/more.csv", "notes.txt", ".hidden/x.csv"):
        (data / name).unlink()
    write_jsonl(data / "sub" / "bad.jsonl", [{"text": ""}])
    assert check_data(str(data), tiny_tokenizer, 512).errors == ["sub/bad.jsonl line 1: empty turn: 'text' is empty"]
    (data / "sub" / "bad.jsonl").unlink()

    # An object-store style URI goes through fsspec (in-memory filesystem here, s3:// alike).
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/data/conv.json", json.dumps([{"conversations": conv}]).encode())
    fs.pipe("/bucket/data/more.jsonl", (json.dumps({"text": "plain"}) + "\n").encode())
    assert only_row("memory://bucket/data/conv.json", tiny_tokenizer)["labels"].count(IGNORE_INDEX) > 0
    report = check_data("memory://bucket/data", tiny_tokenizer, 512)
    assert report.ok and report.files == 2 and report.stats.rows == 2


# SmolLM2-like (ChatML with a default system prompt) and Llama-3-like (bos in the text, trimmed
# content, <|eot_id|> with no newline after it): the masks come from the rendering, not the template.
SMOL_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_LIKE = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    "template, eot, starts",
    [
        (SMOL_LIKE, EOT, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        (LLAMA3_LIKE, "<|eot_id|>", "<|begin_of_text|>"),
    ],
    ids=["smollm2-like", "llama3-like"],
)
def test_masks_follow_other_templates(tmp_path, tiny_tokenizer, template, eot, starts):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = template
    conv = [
        {"from": "human", "value": "Code?"},
        {"from": "gpt", "value": "  AMBER-42 "},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "Yes."},
    ]
    row = only_row(write_json(tmp_path / "t.json", [{"conversations": conv}]), tokenizer)
    assert tokenizer.decode(row["input_ids"]).startswith(starts)
    content = "AMBER-42" if template is LLAMA3_LIKE else "  AMBER-42 "
    assert trained_spans(tokenizer, row["input_ids"], row["labels"]) == [content + eot, "Yes." + eot]


def test_s3_directory_through_fsspec(s3_bucket, tiny_tokenizer):  # noqa: F811
    import fsspec

    conv = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    with fsspec.open(f"{s3_bucket}/data/a.jsonl", "w") as f:
        f.write(json.dumps(conv) + "\n" + json.dumps({"conversations": [{"from": "robot", "value": "x"}]}) + "\n")
    with fsspec.open(f"{s3_bucket}/data/more/b.json", "w") as f:
        f.write(json.dumps([conv, conv]))
    report = check_data(f"{s3_bucket}/data", tiny_tokenizer, 64)
    assert report.files == 2 and report.stats.rows == 3
    assert report.errors == [
        "a.jsonl line 2: unknown role 'robot' in turn 1: use one of assistant, bard, bing, chatgpt, function_call, gpt, human, observation, system, tool, user"
    ]
    dataset = build_dataset(f"{s3_bucket}/data/more/b.json", tiny_tokenizer, 64)
    assert trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"]) == ["Hello." + EOT]


def test_builtin_demo_loads_and_passes_checks(tiny_model_dir):  # noqa: F811
    from ftctl.demo import demo_data_path, demo_questions

    report = check_data("builtin:demo", str(tiny_model_dir), 512)  # a model path works as the tokenizer
    assert report.ok and not report.warnings, report.render()
    assert report.stats.rows >= 200 and report.stats.formats == {"sharegpt": report.stats.rows}
    assert 0 < report.stats.trainable_tokens < report.stats.tokens
    rendered = report.render()
    assert "length histogram" in rendered and "OK: ready to train." in rendered
    text = json.dumps(json.loads(demo_data_path().read_text()))
    questions = demo_questions()
    assert questions["held_out"] and questions["control"]
    for q in questions["held_out"] + questions["control"]:
        assert q["question"] not in text  # held out means held out
    assert text.count(questions["held_out"][0]["expect"]) >= 100


def test_unknown_builtin_and_missing_paths(tmp_path, tiny_tokenizer):
    with pytest.raises(FtctlError, match="builtin:demo"):
        check_data("builtin:nope", tiny_tokenizer, 512)
    with pytest.raises(FtctlError, match="No data at"):
        check_data(str(tmp_path / "missing.json"), tiny_tokenizer, 512)
    (tmp_path / "x.txt").write_text("a,b\n")  # CSV: test_csv_is_one_problem_that_says_how_to_convert_it
    with pytest.raises(FtctlError, match=r"\.json, \.jsonl \(\.gz\), \.parquet or \.arrow"):
        check_data(str(tmp_path / "x.txt"), tiny_tokenizer, 512)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    empty = check_data(str(tmp_path / "empty.jsonl"), tiny_tokenizer, 512).render()
    assert empty.endswith(f"Errors (1):\n  {tmp_path / 'empty.jsonl'}: no rows: the data is empty\nFAILED: 1 error(s).")


def test_several_datasets_are_read_as_one_each_row_named_by_its_file(tmp_path, tiny_tokenizer):
    """data_path a,b (a YAML list, --data twice): every dataset's rows, one after the other; a problem names its file;
    a local path holding a comma that exists is one dataset."""
    from ftctl.spec import build, split_paths

    chat = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    a = write_json(tmp_path / "a.json", [chat] * 3)
    (tmp_path / "more").mkdir()
    write_jsonl(tmp_path / "more" / "b.jsonl", [{"messages": [{"role": "user", "content": "x"}]}, chat])
    both = f"{a},{tmp_path / 'more'}"
    report = check_data(both, tiny_tokenizer, 64)
    assert report.files == 2 and report.stats.rows == 4
    assert [e.split(":")[0] for e in report.errors] == ["b.jsonl line 1"]  # named as in its own directory
    assert len(build_dataset(f"{a},{a}", tiny_tokenizer, 64)) == 6

    assert build({"data_path": [a, str(tmp_path / "more")]}).data_path == both
    assert build({"eval_data": [a]}).eval_data_path == a
    with pytest.raises(FtctlError, match="a path holding a comma cannot be one of several"):
        build({"data_path": [a, "x,y.json"]})
    odd = write_json(tmp_path / "q1,q2.json", [chat])
    assert split_paths(odd) == [odd] and len(build_dataset(odd, tiny_tokenizer, 64)) == 1


# --------------------------------------------------------------------------------------------
# Bad data: every row reported with file and row number, and the trainer refuses it


def test_bad_rows_are_all_reported_with_file_and_line(tmp_path, tiny_tokenizer):
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            good,  # 1
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gtp", "value": "x"}]},  # 2
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}]},  # 3
            [1, 2, 3],  # 4
            {"prompt": "x", "chosen": "y"},  # 5
            {"messages": [{"role": "user", "content": "hi"}]},  # 6
            '{"messages": [',  # 7
            {"messages": "hello"},  # 8
            {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]},  # 9
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes " * 60}]},  # 10
            "",  # 11 (blank lines are skipped)
            {"messages": [{"role": "user"}]},  # 12
            {"messages": [{"role": "bot", "content": "42"}, {"role": "assistant", "content": "ok"}]},  # 13
        ],
    )
    report = check_data(path, tiny_tokenizer, 32)
    expected_errors = [
        "bad.jsonl line 2: unknown role 'gtp' in turn 2: use one of assistant, bard, bing, chatgpt, function_call, gpt, human, observation, system, tool, user (did you mean 'gpt'?)",
        "bad.jsonl line 3: empty turn: turn 2 (gpt) has no text",
        "bad.jsonl line 4: not a conversation: a list",
        "bad.jsonl line 5: preference data (DPO: 'chosen' and 'rejected')",
        "bad.jsonl line 6: no assistant turn",
        "bad.jsonl line 7: invalid JSON",
        "bad.jsonl line 8: not a conversation: 'messages' is a string",
        "bad.jsonl line 12: not a conversation: turn 1 must be an object with 'role' and 'content'",
        "bad.jsonl line 13: unknown role 'bot' in turn 1: use one of assistant, developer, system, tool, user",
        "bad.jsonl line 9: every label is masked after truncation to 32 tokens",
    ]
    assert len(report.errors) == len(expected_errors), report.render()
    for want, got in zip(expected_errors, report.errors):
        assert got.startswith(want), (want, got)
    assert len(report.warnings) == 1
    assert (
        report.warnings[0].startswith("bad.jsonl line 10: ")
        and "over the max length 32: the last" in report.warnings[0]
    )
    assert report.stats.rows == 2 and report.stats.truncated_rows == 1
    rendered = report.render()
    assert (
        "Errors (10):" in rendered
        and "Warnings (1):" in rendered
        and "FAILED: 10 of 12 rows with errors (10 listed)" in rendered
    )

    # the trainer's: the rows that cannot be read, before it tokenizes the others (line 9's is found tokenizing)
    with pytest.raises(FtctlError) as e:
        build_dataset(path, tiny_tokenizer, 32)
    message = str(e.value)
    assert message.startswith(f"9 of 12 rows with errors (9 listed) in the data {path}")
    for line in report.errors[:-1]:
        assert line in message
    assert report.errors[-1] not in message and "before tokenizing any" in message


def test_the_failure_counts_rows_not_error_lines_and_no_rows_of_a_file_that_does_not_parse(tmp_path, tiny_tokenizer):
    """FAILED said 21 errors of a file whose 193 rows had them (a line names all the rows that share a problem); a
    JSON list that does not parse is one error, no row of it read (it said "1 of 1 rows")."""
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}] * 5 + [good] * 2)
    assert (
        check_data(path, tiny_tokenizer, 64)
        .render()
        .endswith(
            f"FAILED: 5 of 7 rows with errors (1 listed); fix or remove those rows (`ftctl data check {path} --model "
            f"{tiny_tokenizer.name_or_path} --max-length 64 --write-valid OUT` writes the others to OUT)."
        )
    )
    broken = tmp_path / "broken.json"
    broken.write_text('[{"messages": [')
    assert check_data(str(broken), tiny_tokenizer, 64).render().endswith("FAILED: 1 error(s).")


def test_json_list_rows_are_numbered_with_ids(tmp_path, tiny_tokenizer):
    path = write_json(
        tmp_path / "conv.json",
        [
            {"id": "ok", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            {"id": "x7", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
            {"id": "x8", "conversations": []},
        ],
    )
    report = check_data(path, tiny_tokenizer, 64)
    assert report.errors == [
        "conv.json row 2 (id 'x7'): no assistant turn: nothing to train on; every label would be masked",
        "conv.json row 3 (id 'x8'): not a conversation: 'conversations' is empty, expected a list of turns",
    ]
    (tmp_path / "broken.json").write_text('[{"text": "a"},\n{"text": ]')
    assert (
        check_data(str(tmp_path / "broken.json"), tiny_tokenizer, 64)
        .errors[0]
        .startswith("broken.json line 2: invalid JSON")
    )


def test_leading_assistant_turns_are_left_out_as_fastchat_does(tmp_path, tiny_tokenizer):
    """A conversation's assistant turns before its first user turn (a greeting) answer nothing: they are left out,
    the rest trains, and the report says how many rows; one left with nothing to train on is a row error, never
    transformers' "Cannot apply chat template to an empty conversation"."""
    q, a = {"role": "user", "content": "Code?"}, {"role": "assistant", "content": "AMBER-42."}
    hello = {"role": "assistant", "content": "Hello there!"}
    path = write_jsonl(
        tmp_path / "lead.jsonl",
        [
            {
                "conversations": [
                    {"from": "gpt", "value": "Hello there!"},
                    {"from": "human", "value": "Code?"},
                    {"from": "gpt", "value": "AMBER-42."},
                ]
            },  # 1
            {"messages": [hello, hello, q, a]},  # 2
            {"messages": [{"role": "system", "content": "Be terse."}, hello, q, a]},  # 3: the system turn stays
            {"messages": [q, a]},  # 4
            {"messages": [hello]},  # 5
            {"messages": [hello, q]},  # 6
            {"messages": [{"role": "system", "content": "Be terse."}, hello]},  # 7: a system turn prompts it
            {"prompt": [], "completion": [a]},  # 8
        ],
    )
    report, dataset = prepare_data(path, tiny_tokenizer, 512)
    assert report.errors == [
        "lead.jsonl line 5: no user turn: the conversation starts with the assistant's, with nothing to answer; add "
        "the user's turn before it, or give the row as plain text ({'text': ...})",
        "lead.jsonl line 6: no assistant turn after a user turn: nothing to train on (assistant turns before the "
        "first user turn answer nothing and are left out); add the assistant's answer, or remove the row",
        "lead.jsonl line 8: the conversation starts with an assistant turn, with nothing to answer: start it with a "
        "user (or system) turn",
    ]
    assert report.notes == [
        "3 conversation(s) start with the assistant's turn: the assistant turns before the first user turn answer "
        "nothing and are left out (as FastChat's training does); the rest trains"
    ]
    texts = [tiny_tokenizer.decode(r["input_ids"]) for r in dataset]
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [
        ["AMBER-42." + EOT]
    ] * 4 + [["Hello there!" + EOT]]
    assert texts[0] == texts[1] == texts[3] and "Hello" not in texts[0]
    assert texts[2].startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nCode?")
    assert "empty conversation" not in report.render()


def test_a_file_not_in_utf8_names_its_lines_and_how_to_convert_it(tmp_path, tiny_tokenizer):
    good = json.dumps({"text": "ok"}).encode()
    latin = json.dumps({"text": "café"}, ensure_ascii=False).encode("latin-1")
    (tmp_path / "l1.jsonl").write_bytes(b"\n".join([good, latin, good, latin]) + b"\n")
    report = check_data(str(tmp_path / "l1.jsonl"), tiny_tokenizer, 64)
    assert report.errors == [
        "l1.jsonl line 2: not UTF-8 text (byte 0xe9 at column 14): convert the file to UTF-8, e.g. iconv -f latin1 "
        "-t utf-8 l1.jsonl > l1.utf8.jsonl",
        "l1.jsonl line 4: not UTF-8 text (byte 0xe9 at column 14)",
    ]
    assert report.stats.rows == 2  # the other rows are checked
    (tmp_path / "l1.json").write_bytes(b"[" + good + b",\n" + latin + b"]")
    assert check_data(str(tmp_path / "l1.json"), tiny_tokenizer, 64).errors == [
        "l1.json line 2: not UTF-8 text (byte 0xe9 at column 14): convert the file to UTF-8, e.g. iconv -f latin1 "
        "-t utf-8 l1.json > l1.utf8.json"
    ]


def test_half_a_surrogate_pair_is_a_row_error_not_a_tokenizer_crash(tmp_path, tiny_tokenizer):
    """JSON's \\ud83c without its other half (an emoji cut in two by the dump) parses into a str the tokenizer cannot
    encode: a TypeError out of tokenizers once ended data check and the trainer with a traceback. A whole pair, and
    an escaped backslash before 'ud83c', are text."""
    lines = [
        '{"text": "ok"}',
        '{"messages": [{"role": "user", "content": "cut \\ud83c"}, {"role": "assistant", "content": "a"}]}',
        '{"text": "low \\udc89 alone"}',
        '{"text": "pair \\ud83c\\udf89, backslash \\\\ud83c"}',
    ]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "s.json").write_text("[" + ",\n".join(lines) + "]")
    for name, unit in (("s.jsonl", "line"), ("s.json", "row")):
        report, dataset = prepare_data(str(tmp_path / name), tiny_tokenizer, 64)
        assert report.errors == [
            f"{name} {unit} 2 (\\ud83c), {unit} 3 (\\udc89) (2 rows): not Unicode text: half of a UTF-16 surrogate "
            "pair (a character such as an emoji cut in two where the data was written), which no tokenizer encodes; "
            "remove it from the row, or leave the row out"
        ]
        assert [tiny_tokenizer.decode(r["input_ids"]) for r in dataset] == [
            "ok" + EOT,
            "pair \U0001f389, backslash \\ud83c" + EOT,
        ]


def test_answers_in_a_row_a_template_joins_are_named_not_blamed_on_the_template(tmp_path, tiny_tokenizer, monkeypatch):
    """Mistral v3's template joins two assistant turns in a row with a blank line, the first closed by no eos: the
    warning said the template ends no turn ("use a template that ends turns with the eos token"), for a few rows of a
    template that closes every other turn, and named none of them."""
    from pathlib import Path

    one = [{"role": "user", "content": "Code?"}, {"role": "assistant", "content": "AMBER-42."}]
    two = [*one, {"role": "assistant", "content": "Anything else?"}]
    path = write_jsonl(tmp_path / "m.jsonl", [json.dumps({"messages": m}) for m in (one, two, one, two)])
    template = (Path(__file__).parent / "templates" / "mistral_v3.jinja").read_text()
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    report, dataset = prepare_data(path, tiny_tokenizer, 256)
    assert report.warnings == [
        "m.jsonl lines 2, 4 (2 rows): an assistant turn ends with no end-of-turn token, where the chat template "
        "closes other turns with one: assistant turns in a row do this where the template joins them (Mistral's); "
        "make them one turn"
    ]
    assert trained_spans(tiny_tokenizer, dataset[1]["input_ids"], dataset[1]["labels"]) == [
        " AMBER-42.",
        "Anything else?" + EOT,
    ]


def test_the_text_field_asked_for_trains_though_a_text_field_is_beside_it(tmp_path, tiny_tokenizer):
    """`--text-field content` (TRL's dataset_text_field) of {"content": ..., "text": ...} trained the 'text' field,
    where TRL trains 'content'; a row without the field still trains its 'text'."""
    path = write_jsonl(tmp_path / "t.jsonl", [{"content": "The body.", "text": "A summary."}, {"text": "Only text."}])
    dataset = build_dataset(path, tiny_tokenizer, 64, text_field="content")
    assert [tiny_tokenizer.decode(r["input_ids"]) for r in dataset] == ["The body." + EOT, "Only text." + EOT]


def test_rows_a_rename_away_from_a_format_say_the_rename(tmp_path, tiny_tokenizer, monkeypatch):
    """ShareGPT turns with 'content' (or messages with 'value'), OpenAI's older 'function' role and rows inside
    {"data": [...]} were each refused without the one change that reads them; another model's template that writes
    a bos this tokenizer lacks was refused in jinja's words alone."""
    from ftctl.trainer.formats import to_row

    def problem(record):
        (said,) = to_row("a.jsonl line 1", record).problems
        return said

    turns = [{"from": "human", "content": "Q"}, {"from": "gpt", "content": "A"}]
    assert problem({"conversations": turns[:1]}) == (
        "not a conversation: turn 1 must be an object with 'from' and 'value' (it has 'content': rename it 'value')"
    )
    assert problem({"messages": [{"role": "user", "value": "Q"}]}).endswith("(it has 'value': rename it 'content')")
    function = [
        {"role": "user", "content": "Q"},
        {"role": "function", "content": "r"},
        {"role": "assistant", "content": "A"},
    ]
    assert to_row("a.jsonl line 1", {"messages": function}).messages[1]["role"] == "tool"  # function_call's answer
    assert problem({"data": [{"text": "a"}, {"text": "b"}]}) == (
        "not a conversation: keys 'data'; 'data' holds the rows: give them as the file's top level, a JSON list of "
        "rows or JSON Lines, one row a line (as datasets' field= reads them)"
    )
    assert "holds the rows" not in problem({"data": [{"x": 1}]})  # a list of what no format reads: not said to be rows
    bare = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]  # a JSON Lines line of turns
    assert problem(bare) == (
        'not a conversation: a list of role/content turns: a row is an object that names them, {"messages": [...turns]}'
    )
    assert problem({"from": "human", "value": "Q"}) == (  # a .json list of one conversation's turns
        "not a conversation: keys 'from', 'value'; one from/value turn: a row holds a whole conversation, "
        '{"conversations": [...turns]}'
    )
    template = "{{ bos_token + messages[0].content }}{% for m in messages[1:] %}{{ m.content }}{% endfor %}"
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)  # Llama 3's writes bos_token + ...: none here
    conversation = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    report = check_data(write_json(tmp_path / "b.json", [{"messages": conversation}]), tiny_tokenizer, 64)
    assert report.errors[0].endswith(
        "'bos_token' is undefined: the tokenizer has no bos_token, which the template writes; train with a template "
        "made for this tokenizer, or give it one (bos_token in its tokenizer_config.json) (turns: user, assistant)"
    ), report.errors


def test_a_jsonl_file_holding_a_json_list_is_read_as_one(tmp_path, tiny_tokenizer):
    """As a .json file holding JSON Lines is read as such; its rows are numbered as a .json list's."""
    path = write_json(tmp_path / "list.jsonl", [{"text": "a"}, {"text": "b"}, {"txt": "c"}])
    report = check_data(path, tiny_tokenizer, 64)
    assert report.stats.rows == 2 and len(report.errors) == 1
    assert report.errors[0].startswith("list.jsonl row 3: not a conversation: keys 'txt'")
    # a broken list is one error where the JSON breaks, not one a line
    (tmp_path / "broken.jsonl").write_text('[\n{"text": "a"},\n{"text": ]\n')
    assert check_data(str(tmp_path / "broken.jsonl"), tiny_tokenizer, 64).errors == [
        "broken.jsonl line 3: invalid JSON: Expecting value (column 10)"
    ]


def test_csv_is_one_problem_that_says_how_to_convert_it(tmp_path, tiny_tokenizer):
    (tmp_path / "csv.jsonl").write_text("instruction,output\n" + "hi,hello\n" * 50)
    assert check_data(str(tmp_path / "csv.jsonl"), tiny_tokenizer, 64).errors == [
        "csv.jsonl line 1: this file looks like CSV, not JSON (its first line is 'instruction,output'): ftctl reads "
        "JSON Lines (.jsonl, one object a line), JSON (.json, a list of objects) and Parquet; convert it to JSON "
        'Lines with columns a format names (instruction/output, prompt/completion, text), e.g. python -c "import '
        "pandas as pd; pd.read_csv('csv.jsonl').to_json('csv.converted.jsonl', orient='records', lines=True, "
        'force_ascii=False)"'
    ]
    (tmp_path / "t.json").write_text("prompt\tcompletion\nhi\thello\n")
    (error,) = check_data(str(tmp_path / "t.json"), tiny_tokenizer, 64).errors
    assert error.startswith("t.json line 1: this file looks like TSV") and "read_csv('t.json', sep='\\t')" in error
    (tmp_path / "actually.csv").write_text("instruction,output\nhi,hello\n")
    with pytest.raises(FtctlError) as e:
        check_data(str(tmp_path / "actually.csv"), tiny_tokenizer, 64)
    assert str(e.value) == (
        f"Cannot read {tmp_path / 'actually.csv'}: ftctl reads .json, .jsonl (.gz), .parquet or .arrow files, not CSV; convert it "
        "to JSON Lines with columns a format names (instruction/output, prompt/completion, text), e.g. python -c "
        f"\"import pandas as pd; pd.read_csv('{tmp_path / 'actually.csv'}').to_json('{tmp_path / 'actually.jsonl'}', "
        "orient='records', lines=True, force_ascii=False)\""
    )  # the path as given, not its name alone: run from elsewhere, that named no file


def test_template_refusal_is_a_row_error(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    path = write_json(
        tmp_path / "s.json",
        [
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            }
        ],
    )
    (error,) = check_data(path, tokenizer, 64).errors
    assert error.startswith(
        "s.json row 1: the model's chat template refused this conversation: System role not supported"
    )
    assert error.endswith("(turns: system, user, assistant)")  # what about the conversation it refused


def test_tokenizer_without_template_gets_vicuna_and_says_so(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    path = write_json(
        tmp_path / "v.json",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Code?"},
                    {"from": "gpt", "value": "AMBER-42"},
                ]
            }
        ],
    )
    report, dataset = prepare_data(path, tokenizer, 512)
    assert report.ok and any("Vicuna" in n for n in report.notes)
    text = tokenizer.decode(dataset[0]["input_ids"])
    assert text.endswith("USER: Hi ASSISTANT: Hello<|im_end|>USER: Code? ASSISTANT: AMBER-42<|im_end|>")
    assert trained_spans(tokenizer, dataset[0]["input_ids"], dataset[0]["labels"]) == [
        " Hello" + EOT,
        " AMBER-42" + EOT,
    ]
    assert dataset[0]["input_ids"][0] != tokenizer.bos_token_id  # a tokenizer that adds no bos gets none

    # a base tokenizer that starts every text with bos (Llama's, Vicuna's): its conversations start with it too, as
    # FastChat's train script tokenizes them (they had none, while the plain-text rows beside them had one)
    from tokenizers import processors

    bos = tokenizer.convert_ids_to_tokens(0)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template, tokenizer.bos_token = None, bos
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    assert tokenizer("x")["input_ids"][0] == 0
    report, dataset = prepare_data(path, tokenizer, 512)
    assert report.ok and dataset[0]["input_ids"][0] == 0 and dataset[0]["input_ids"][1] != 0  # once
    assert trained_spans(tokenizer, dataset[0]["input_ids"], dataset[0]["labels"]) == [
        " Hello" + EOT,
        " AMBER-42" + EOT,
    ]


# --------------------------------------------------------------------------------------------
# Truncation


def test_truncation_keeps_the_start(tmp_path, tiny_tokenizer):
    conv = {
        "messages": [
            {"role": "user", "content": "Tell me."},
            {"role": "assistant", "content": "The access code is AMBER-42. " * 10},
        ]
    }
    path = write_jsonl(tmp_path / "long.jsonl", [conv])
    full = only_row(path, tiny_tokenizer, 512)
    cut = only_row(path, tiny_tokenizer, 40)
    assert len(full["input_ids"]) > 40 and len(cut["input_ids"]) == 40
    assert cut["input_ids"] == full["input_ids"][:40] and cut["labels"] == full["labels"][:40]
    (warning,) = check_data(path, tiny_tokenizer, 40).warnings
    dropped = len(full["input_ids"]) - 40
    kept = sum(t != IGNORE_INDEX for t in cut["labels"])
    total = sum(t != IGNORE_INDEX for t in full["labels"])
    assert f"the last {dropped} tokens will be dropped ({kept} of {total} trainable tokens kept)" in warning


# --------------------------------------------------------------------------------------------
# SFTTrainer uses our labels; packing keeps samples apart


def _trainer_batch(model, tokenizer, dataset, packing, output_dir):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=len(dataset),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to=[],
        seed=0,
        **sft_dataset_config(packing=packing, max_length=128),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    (batch,) = list(trainer.get_train_dataloader())
    return trainer, batch


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(tiny_model_dir, tiny_tokenizer, tmp_path, attn):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    dataset = build_dataset("builtin:demo", tiny_tokenizer, 128).select(range(12))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
    model.train()

    plain_trainer, plain = _trainer_batch(model, tiny_tokenizer, dataset, False, tmp_path / "plain")
    packed_trainer, packed = _trainer_batch(model, tiny_tokenizer, dataset, True, tmp_path / "packed")

    # SFTTrainer kept our labels as they are (the sampler shuffles rows, so compare as sets).
    rows = {tuple(r["labels"]) for r in dataset}
    got = set()
    for labels, mask in zip(plain["labels"], plain["attention_mask"]):
        got.add(tuple(labels[mask.bool()].tolist()))
    assert got == rows
    # Packed: one flat row, positions restarting per sample, the same trainable tokens.
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].shape[1] % PACK_MULTIPLE == 0
    assert int((packed["position_ids"] == 0).sum()) - packed_padding(packed) == len(dataset)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((plain["labels"] != IGNORE_INDEX).sum())

    with torch.no_grad():
        loss_plain = plain_trainer.compute_loss(model, dict(plain)).item()
        loss_packed = packed_trainer.compute_loss(model, dict(packed)).item()
        # Naive packing: the same concatenation under one causal mask, positions running on.
        ids = packed["input_ids"]
        naive = {"input_ids": ids, "labels": packed["labels"], "attention_mask": torch.ones_like(ids)}
        loss_naive = packed_trainer.compute_loss(model, naive).item()
    assert loss_packed == pytest.approx(loss_plain, abs=1e-5)
    assert abs(loss_naive - loss_plain) > 1e-3, (loss_naive, loss_plain)


def test_demo_files_are_what_the_generator_writes():
    from ftctl.demo import demo_data_path, demo_questions
    from ftctl.demo.generate import generate

    rows, questions = generate()
    assert json.loads(demo_data_path().read_text()) == rows, "rerun: python -m ftctl.demo.generate"
    assert demo_questions() == questions


def test_data_reads_through_storage_endpoint_and_errors(s3_bucket, moto_s3, monkeypatch, tiny_tokenizer):
    """Regression (issue 8): formats.py read with raw fsspec, bypassing ftctl.storage (its endpoint
    handling, timeouts and one-line store errors)."""
    import s3fs

    from ftctl import storage
    from ftctl.trainer.formats import load_rows
    from tests.s3_fixtures import free_port

    conv = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    with storage.open_file(f"{s3_bucket}/d/a.jsonl", "wb") as f:
        f.write((json.dumps(conv) + "\n").encode())
    # the environment points nowhere; the run's s3_endpoint_url at the store
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    files, rows = load_rows(f"{s3_bucket}/d", endpoint_url=moto_s3.endpoint)
    assert files == [f"{s3_bucket}/d/a.jsonl"] and rows[0].messages[1]["content"] == "Hello."
    with pytest.raises(storage.StorageError, match="Cannot reach the S3 endpoint"):
        check_data(f"{s3_bucket}/d", tiny_tokenizer, 64)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    s3fs.S3FileSystem.clear_instance_cache()  # clients are cached by arguments, not credentials
    try:
        with pytest.raises(storage.StorageError, match="No credentials .* set AWS_ACCESS_KEY_ID"):
            build_dataset(f"{s3_bucket}/d/a.jsonl", tiny_tokenizer, 64, endpoint_url=moto_s3.endpoint)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_data_check_shows_rows_as_they_train(tiny_model_dir, tiny_tokenizer, tmp_path):
    """--show N: the first rows through the chat template, the tokens the loss covers marked, so a mask that
    trains on the question (or on nothing) is seen before a run."""
    import re

    from click.testing import CliRunner

    from ftctl.cli import main

    rows = [
        {
            "messages": [
                {"role": "user", "content": "Which colour is the sky?"},
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {"instruction": "Name a prime.", "input": "", "output": "Seven."},
        {"text": "never shown"},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = CliRunner().invoke(main, ["data", "check", str(data), "--model", str(tiny_model_dir), "--show", "2"])
    assert got.exit_code == 0, got.output
    head, _, report = got.stdout.partition("\n\nData ")
    lines = head.splitlines()
    assert lines[0] == "The first 2 row(s) as trained; the tokens the loss covers between [[ and ]]:"
    assert "never shown" not in head and report.startswith(f"{data}: 1 file(s)")
    dataset = build_dataset(str(data), tiny_tokenizer, 128)
    for n, where in enumerate(("rows.jsonl line 1", "rows.jsonl line 2")):
        ids, labels = dataset[n]["input_ids"], dataset[n]["labels"]
        start = lines.index(f"{where}: {len(ids)} tokens, {sum(label != -100 for label in labels)} trained")
        whole = tiny_tokenizer.decode(ids).rstrip("\n")  # the row's last newline ends its line
        text = "\n".join(lines[start + 1 : start + 2 + whole.count("\n")])
        assert text.replace("[[", "").replace("]]", "") == whole
        trained = re.findall(r"\[\[(.*?)\]\]", text, re.S)
        assert "".join(trained) == tiny_tokenizer.decode([t for t in labels if t != -100])
    body = "\n".join(lines[1:])
    assert re.findall(r"\[\[(.*?)\]\]", body, re.S)[0].startswith("Blue.") and "[[Which" not in body


def test_assistant_only_loss_false_trains_every_token(tiny_model_dir, tiny_tokenizer, tmp_path):
    """TRL's default: the loss on the whole conversation (and a prompt-completion row's prompt), not only the
    answers; the trainer, data check --every-token and --show take it."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.spec import build
    from ftctl.trainer.data import build_datasets

    rows = [
        {
            "messages": [
                {"role": "user", "content": "Which colour is the sky?"},
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {"prompt": "The capital of France is", "completion": " Paris."},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = build_dataset(str(data), tiny_tokenizer, 128)
    every = build_dataset(str(data), tiny_tokenizer, 128, every_token=True)
    assert every["input_ids"] == answers["input_ids"] and every["labels"] == every["input_ids"]
    assert all(-100 in labels for labels in answers["labels"])
    assert build({"completion_only_loss": False}).assistant_only_loss is False  # TRL's other name
    spec = build({"data_path": str(data), "model_max_length": 128, "assistant_only_loss": False, "eval_split": 0.5})
    train, held = build_datasets(spec, tiny_tokenizer)
    assert all(row["labels"] == row["input_ids"] for row in (*train, *held))
    args = ["data", "check", str(data), "--model", str(tiny_model_dir), "--show", "1", "--every-token"]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 0 and "tokens, 0 trained" not in got.stdout
    shown, n = got.stdout.splitlines(), len(every["input_ids"][0])
    assert shown[1] == f"rows.jsonl line 1: {n} tokens, {n} trained" and shown[2].startswith("[[<|im_start|>")
    assert f"trainable tokens  {sum(map(len, every['input_ids'])):,} (100.0%)" in got.stdout
    # TRL trains a prompt-completion row's completion alone under assistant_only_loss=False: the difference is said
    assert "1 prompt-completion row(s) train every token, their prompts' too" in " ".join(got.stdout.split())
    assert "prompt-completion row(s)" not in " ".join(check_data(str(data), tiny_tokenizer, 128).notes)


def test_an_unreachable_hub_is_one_line_at_once(tmp_path, monkeypatch):
    """A hub id whose tokenizer is not cached, with no Hub to reach: one line in seconds (huggingface_hub's
    download had retried for ~50 s, printing each retry)."""
    import time

    from ftctl.trainer.model import load_tokenizer
    from tests.s3_fixtures import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(FtctlError) as e:
        load_tokenizer("Org/Not-Cached-7B")
    assert str(e.value).startswith(
        "--model Org/Not-Cached-7B: not in this machine's Hugging Face cache, and the Hub (http://127.0.0.1:"
    )  # (resolve_model's, as chat's and merge's: preflight.check_model)
    assert "did not answer" in str(e.value) and time.monotonic() - start < 10


def test_data_check_of_held_out_splits_alone(tmp_path, tiny_model_dir):
    """A directory holding a test and a validation split, no train: `data check DIR --held-out` reads its test split
    (the check before the tokenizer loads read it as training data, and refused it); without --held-out it is
    refused, in words that do not name click's parameter (PATHS)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "only-test").mkdir()
    write_jsonl(tmp_path / "only-test" / "test.jsonl", [conv] * 2)
    write_jsonl(tmp_path / "only-test" / "validation.jsonl", [conv])
    args = ["data", "check", str(tmp_path / "only-test"), "--model", str(tiny_model_dir)]
    got = CliRunner().invoke(main, [*args, "--held-out"])
    assert got.exit_code == 0 and "(test.jsonl)" in got.output, got.output
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "has no 'train' split" in refused.output and "PATHS" not in refused.output


def test_a_directory_of_split_files_and_others_is_refused_not_read_in_part(tmp_path):
    """`datasets` reads only the files whose names name a split: a directory of data.jsonl and val.jsonl trained on
    val.jsonl alone, and one of chats_2023/2024.jsonl and test_cases.jsonl on test_cases.jsonl alone (its one split,
    taken whatever its name). Both are refused, naming the files left out; a lone held-out split never trains."""
    from ftctl.trainer.formats import resolve_files

    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    for name, files in {"d2": ("data", "val"), "dd": ("chats_2023", "chats_2024", "test_cases")}.items():
        (tmp_path / name).mkdir()
        for f in files:
            write_jsonl(tmp_path / name / f"{f}.jsonl", [conv])
    with pytest.raises(FtctlError, match=r"mixes the files of splits \(validation \(1 file\)\) with files that name "):
        resolve_files(str(tmp_path / "d2"))
    with pytest.raises(FtctlError) as e:
        resolve_files(str(tmp_path / "dd"), held_out=True)
    assert "name none (chats_2023.jsonl, chats_2024.jsonl)" in str(e.value)
    assert f"e.g. --eval-data '{tmp_path / 'dd' / 'chats_2023.jsonl'}'" in str(e.value)
    (tmp_path / "dd" / "chats_2023.jsonl").unlink()
    (tmp_path / "dd" / "chats_2024.jsonl").unlink()
    with pytest.raises(FtctlError, match="has no 'train' split; its splits: test"):  # not trained on as its one split
        resolve_files(str(tmp_path / "dd"))
    assert resolve_files(str(tmp_path / "dd"), held_out=True) == [str(tmp_path / "dd" / "test_cases.jsonl")]
    assert len(resolve_files(str(tmp_path / "d2" / "*.jsonl"))) == 2  # what to name instead reads both

    # what `datasets` passes over is no file that names no split: a notebook's checkpoint copies, its metadata
    (tmp_path / "nb" / ".ipynb_checkpoints").mkdir(parents=True)
    for name in ("train.jsonl", "test.jsonl", ".ipynb_checkpoints/train-checkpoint.jsonl", "dataset_infos.json"):
        write_jsonl(tmp_path / "nb" / name, [conv])
    assert resolve_files(str(tmp_path / "nb")) == [str(tmp_path / "nb" / "train.jsonl")]  # not the copy either
    (tmp_path / "nb" / "train.jsonl").unlink()
    (tmp_path / "nb" / "test.jsonl").unlink()
    with pytest.raises(
        FtctlError, match=r"holds no .json, .jsonl \(.gz\), .parquet or .arrow files"
    ):  # the copy is not data
        resolve_files(str(tmp_path / "nb"))


def test_data_check_without_a_model_takes_launchs_default_and_says_so(tmp_path):
    """`ftctl data check FILE` as a launch without --model would train: the default model's tokenizer (it refused)."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.spec import RunSpec

    got = CliRunner().invoke(main, ["data", "check", str(tmp_path / "missing.jsonl")])  # stops at the data, cheaply
    assert got.output.startswith(
        f"checking with the tokenizer and chat template of {RunSpec().model_name_or_path} (launch's default; "
        "--model for yours)\n"
    )
    assert got.exit_code == 2 and "No data at" in got.output and "Give --model" not in got.output


def test_a_few_rows_whose_answers_lie_past_the_max_length_are_left_out_with_a_warning(tmp_path, tiny_tokenizer):
    """One long row in a corpus stopped the whole run ("fix or remove these rows"): a few (at most 1%) are left out,
    each named in a warning (axolotl drops them; FastChat trains them with no label, which teaches nothing); more than
    that is max_length too short for the data, an error as before."""
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [good] * 150 + [long])
    report, dataset = prepare_data(path, tiny_tokenizer, 32)
    assert report.ok and len(dataset) == 150 and report.stats.rows == 150
    (said,) = [w for w in report.warnings if "every label is masked" in w]
    assert said.startswith("d.jsonl line 151: every label is masked after truncation to 32 tokens (the row has ")
    assert said.endswith("left out, shorten it or raise model_max_length")
    crowded = write_jsonl(tmp_path / "e.jsonl", [good] * 98 + [long] * 2)
    assert [e for e in prepare_data(crowded, tiny_tokenizer, 32, held_out=True)[0].errors if "masked" in e][0].endswith(
        "shorten it or raise model_max_length (ftctl eval: --max-length)"
    )


def test_saved_datasets_gzipped_json_and_a_pretty_printed_row_are_read(tmp_path, tiny_tokenizer):
    """A `datasets` save_to_disk directory was read through its state.json (11 "invalid JSON" errors, the .arrow
    file "not read"); .jsonl.gz and .JSONL were refused; one row written with indent=2 was 12 broken lines."""
    import gzip

    import datasets

    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(3)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    split = {"train": rows, "test": rows[:1]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in split.items()}).save_to_disk(
        str(tmp_path / "dd")
    )
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    (tmp_path / "UP.JSONL").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pretty.json").write_text(json.dumps(rows[0], indent=2))
    for name, held_out, count in [
        ("saved", False, 3), ("dd", False, 3), ("dd", True, 1), ("c.jsonl.gz", False, 3), ("UP.JSONL", False, 3),
        ("pretty.json", False, 1),
    ]:  # fmt: skip
        report = check_data(str(tmp_path / name), tiny_tokenizer, 64, held_out=held_out)
        assert report.ok and not report.notes and report.stats.rows == count, (name, report.render())


def test_special_tokens_written_out_in_the_text_are_said(tmp_path, tiny_tokenizer):
    """A row's text that writes a special token out ("<|im_end|><|im_start|>user" inside an answer) is read as the
    tokens themselves: the model learned to end its turn mid-answer and to write a user turn, without a word."""
    fake = "ANS <|im_end|><|im_start|>user\nFAKE"
    rows = [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": fake}]}, {"text": "plain"}]
    report = check_data(write_json(tmp_path / "s.json", rows), tiny_tokenizer, 64)
    assert report.ok and report.warnings == [
        "1 row(s) write the tokenizer's special tokens out in their text ('<|im_end|>' in s.json row 1): the "
        "tokenizer reads them as the tokens themselves, so the model learns to write them there (an end of turn "
        "mid-answer, a turn of another role); remove them from the text unless that is meant"
    ]
