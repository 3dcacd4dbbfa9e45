"""What a run leaves, taken to the next tool (explore27): transformers' generate(), PEFT, `ftctl merge`'s output, and
what vLLM, TGI or transformers 4 read from the files. The base here is a tiny one shaped like Qwen2.5's base: its
tokenizer's eos is <|endoftext|> while its ChatML template ends a turn with <|im_end|>, so the run teaches answers to
end in a token its generation config did not stop at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def qwen_like_base(tmp_path_factory) -> Path:
    """The tiny model with the base's eos (<|endoftext|>, also its generation config's) and no pad token."""
    from tests.tiny_fixtures import make_tiny_model, make_tiny_tokenizer

    path = tmp_path_factory.mktemp("qwen-like-base")
    tokenizer = make_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|endoftext|>"]})
    tokenizer.eos_token, tokenizer.pad_token = "<|endoftext|>", None
    model = make_tiny_model(tokenizer)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tokenizer.eos_token_id, None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: tiny-license\nlicense_link: LICENSE\n---\n# tiny\n"
    )
    return path


def _trained(base, data, out, method):
    import torch

    from ftctl.trainer.run import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec, plan = make_run(base, data, out, method, max_steps=2, save_steps=2, lora_r=4)
        return Path(train(spec, plan, echo=lambda line: None).output_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fft_output(qwen_like_base, tiny_data, tmp_path_factory) -> Path:
    return _trained(qwen_like_base, tiny_data, tmp_path_factory.mktemp("fft") / "run", "fft")


@pytest.fixture(scope="module")
def lora_output(qwen_like_base, tiny_data, tmp_path_factory) -> Path:
    return _trained(qwen_like_base, tiny_data, tmp_path_factory.mktemp("lora") / "run", "lora")


def _ids(directory: Path) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    return tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")


def _new_tokens_until_stop(directory: Path, model) -> int:
    """How many tokens generate() gives, with the saved generation config, where the 3rd is the template's
    <|im_end|> (forced): 3 where it stops there, the 8 asked for where it does not."""
    import torch
    from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

    tokenizer = AutoTokenizer.from_pretrained(directory)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    class EndAtThird(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - prompt == 2:
                scores[:, :] = -float("inf")
                scores[:, end] = 0.0
            else:
                scores[:, end] = -float("inf")
            return scores

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, logits_processor=LogitsProcessorList([EndAtThird()])
        )
    return out.shape[1] - prompt


def test_a_full_model_stops_in_generate_where_its_chat_template_ends_a_turn(fft_output):
    """transformers' generate() (and vLLM) stop at generation_config.json's eos_token_id, not at `ftctl chat`'s
    stop ids: the base's <|endoftext|> alone let the tuned model run on past its answers."""
    from transformers import AutoModelForCausalLM

    eos, end = _ids(fft_output)
    assert json.loads((fft_output / "generation_config.json").read_text())["eos_token_id"] == [eos, end]
    checkpoint = json.loads((fft_output / "checkpoint-2" / "generation_config.json").read_text())
    assert checkpoint["eos_token_id"] == [eos, end]  # a checkpoint-N served as it is stops there too
    model = AutoModelForCausalLM.from_pretrained(fft_output).eval()
    assert _new_tokens_until_stop(fft_output, model) == 3


def test_the_runs_card_carries_its_bases_license(fft_output, lora_output):
    """A tuned model is under its base's terms: the Hub showed the card of one without them as of unknown license."""
    from huggingface_hub import ModelCard

    for output in (fft_output, lora_output):
        card = ModelCard.load(output / "README.md").data
        assert (card.license, card.license_name, card.license_link) == ("other", "tiny-license", "LICENSE")


def test_the_saved_tokenizer_reads_alike_in_transformers_4(fft_output):
    """transformers 5 saves extra special tokens as a list under extra_special_tokens, which transformers 4 (vLLM
    or TGI on it, mlx-lm) refuses ("'list' object has no attribute 'keys'"), and the chat template only as
    chat_template.jinja, which tokenizer_config.json's readers (TGI, transformers before 4.43) do not see."""
    from transformers import AutoTokenizer

    config = json.loads((fft_output / "tokenizer_config.json").read_text())
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|endoftext|>"]
    assert config["chat_template"] == (fft_output / "chat_template.jinja").read_text()
    tokenizer = AutoTokenizer.from_pretrained(fft_output)  # and transformers 5 reads the same tokenizer
    assert {"<|im_start|>", "<|endoftext|>"} <= set(tokenizer.all_special_tokens)
    assert tokenizer.chat_template == config["chat_template"] and tokenizer.pad_token == "<|endoftext|>"


def test_each_checkpoint_reads_alike_in_transformers_4(fft_output, lora_output):
    """A checkpoint-N served as it is (vLLM or TGI on transformers 4, a best checkpoint picked by its held-out loss) had
    transformers 5's files only: no rope_theta (transformers 4 takes its default base: SmolLM2's 100000 read as 10000,
    other answers), no torch_dtype, a tokenizer class transformers 4 refuses and no chat template in
    tokenizer_config.json. Each save writes them as the final model's (explore40)."""
    for checkpoint in (fft_output / "checkpoint-2", lora_output / "checkpoint-2"):
        tokenizer = json.loads((checkpoint / "tokenizer_config.json").read_text())
        assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast", checkpoint
        assert not isinstance(tokenizer.get("extra_special_tokens"), list)
        assert tokenizer["chat_template"] == (checkpoint / "chat_template.jinja").read_text()
    config = json.loads((fft_output / "checkpoint-2" / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["torch_dtype"] == config["dtype"] == "float32"


def test_an_adapter_and_its_merge_stop_where_the_template_ends_a_turn(lora_output, tmp_path):
    """PEFT loads the base's generation config: the adapter's directory carries the one to stop with (the card says
    how to load it; vLLM takes it as --generation-config RUN), and `ftctl merge` writes it into the merged model."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, GenerationConfig

    from ftctl.trainer.merge import merge

    eos, end = _ids(lora_output)
    assert GenerationConfig.from_pretrained(lora_output).eos_token_id == [eos, end]
    card = (lora_output / "README.md").read_text()
    assert 'model.generation_config = GenerationConfig.from_pretrained("DIR")' in card  # DIR: this directory
    scope: dict = {}
    exec(re.search(r"```python\n(.*?)```", card, re.S).group(1).replace('"DIR"', repr(str(lora_output))), scope)
    model = scope["model"].eval()  # the card's code as written (device_map="auto": the CPU on a machine without GPUs)
    assert hasattr(model, "peft_config") and {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.generation_config.eos_token_id == [eos, end]  # as the card says
    assert _new_tokens_until_stop(lora_output, model) == 3

    merged = merge(str(lora_output), str(tmp_path / "merged"))
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [eos, end]
    assert "chat_template" in json.loads((merged / "tokenizer_config.json").read_text())
    card = ModelCard.load(merged / "README.md")  # what `hf upload` puts on the model's page
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "tiny-license", "LICENSE")
    assert f"The LoRA adapter `{lora_output.name}` merged into" in card.text  # no path of this machine
    assert _new_tokens_until_stop(merged, AutoModelForCausalLM.from_pretrained(merged).eval()) == 3


def test_each_save_of_a_model_in_training_stops_at_the_turns_end_and_names_the_base_as_the_user_did(
    qwen_like_base, tmp_path
):
    """What run.setup gives the model it trains (trained.as_saved_for_others) and what each save then writes
    (trained.adapter_stops, trained.name_base), so a checkpoint-N loads elsewhere as the final model does: PEFT records
    the base's path it loaded (the demo model's cache directory, a SkyPilot node's copy), not the name the user gave.
    Named in PEFT's config before the save instead, PEFT asked the Hub for that id's config.json at every save
    (warnings offline)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.trainer.trained import adapter_stops, as_saved_for_others, name_base

    tokenizer = AutoTokenizer.from_pretrained(qwen_like_base)
    eos, end = _ids(qwen_like_base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(qwen_like_base), LoraConfig(r=2))
    as_saved_for_others(model, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Could not find a config file in <id>": the Hub not asked
        model.save_pretrained(tmp_path / "adapter")
    adapter_stops(tmp_path / "adapter", model, tokenizer)
    name_base(tmp_path / "adapter", "HuggingFaceTB/SmolLM2-135M-Instruct")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((tmp_path / "adapter" / "generation_config.json").read_text())["eos_token_id"] == [eos, end]
    assert model.get_base_model().generation_config.eos_token_id == eos  # the base's own, as loaded
    full = AutoModelForCausalLM.from_pretrained(qwen_like_base)
    as_saved_for_others(full, tokenizer)
    full.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "generation_config.json").read_text())["eos_token_id"] == [eos, end]


def test_a_merge_of_a_hub_bases_adapter_names_its_base_for_the_hub():
    from huggingface_hub import ModelCard

    from ftctl.trainer.model_card import merged_text

    card = ModelCard(merged_text("s3://b/runs/r1", "Qwen/Qwen2.5-0.5B", "qlora", "its weights ..."))
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and "qlora" in card.data.tags
    assert card.text.lstrip().startswith("# r1\n\nThe QLoRA adapter `s3://b/runs/r1` merged into [Qwen/Qwen2.5-0.5B](")
