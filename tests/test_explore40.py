"""What a run leaves, used as its card says outside ftctl (explore40)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def qlora_output(tiny_model_dir, tiny_data, tmp_path_factory):
    """A qlora run of the tiny model (one step, on CPU): its output directory as the trainer leaves it."""
    import torch

    from ftctl.trainer.run import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path_factory.mktemp("qlora") / "run", "qlora", max_steps=1)
        return Path(train(spec, plan, echo=lambda line: None).output_dir)
    finally:
        torch.set_num_threads(threads)


def test_a_qlora_cards_snippet_loads_the_model_ftctl_chat_loads(qlora_output):
    """The card's PEFT snippet (AutoPeftModelForCausalLM.from_pretrained("DIR")) put a qlora adapter on its base's
    unquantized weights: another model than the one trained and than `ftctl chat` and `ftctl merge` use (the demo
    model's 3-step qlora run: 67% of next tokens alike). It loads the base in 4-bit NF4 now, as the run did."""
    import torch

    from ftctl.trainer.trained import find, load

    card = (qlora_output / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "quantization_config=nf4" in code and "bnb_4bit_compute_dtype=torch.float32" in code  # a CPU run's fp32
    scope: dict = {}
    exec(code.replace('"DIR"', repr(str(qlora_output))), scope)  # as a user runs it
    ids = torch.tensor([[5, 9, 20, 30, 40, 41, 42, 43]])
    with torch.no_grad():
        snippet = scope["model"].eval()(ids).logits
        chat = load(find(str(qlora_output)), "fp32", as_trained=True).eval()(ids).logits
    assert torch.allclose(snippet, chat, atol=0.02), (snippet - chat).abs().max()
