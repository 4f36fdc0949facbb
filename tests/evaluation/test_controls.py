"""Which control tokens the sampler is prompted with and which it may never sample, and the table label."""

from prefer.controls import BAD, GOOD, resolve_controls
from prefer.data.tokenizer import train_tokenizer
from prefer.experiments.pretraining import _rows


def test_headline_protocol_prompts_good_and_blocks_bad():
    assert resolve_controls(prompt="auto", block="auto", conditional=True) == resolve_controls(
        prompt="good", block="bad", conditional=True
    )
    assert resolve_controls(prompt="auto", block="auto", conditional=False).block == "both"


def test_bad_contrast_is_the_mirror_image_good_is_blocked():
    controls = resolve_controls(prompt="bad", block="auto", conditional=True)
    assert (controls.prompt, controls.block) == ("bad", "good")
    tokenizer = train_tokenizer(["some text to train a tokenizer on"] * 4, vocab_size=300)
    good, bad = tokenizer.convert_tokens_to_ids(GOOD), tokenizer.convert_tokens_to_ids(BAD)
    assert controls.prompt_ids(tokenizer) == [tokenizer.eos_token_id, bad]
    assert controls.blocked_ids(tokenizer) == [good]


def test_results_table_row_says_what_the_contrast_blocked():
    entry = {"evaluation": {}, "prompted_bad": {"blocked": "good"}}
    labels = [label for label, *_ in _rows({"models": {"conditional": entry}})]
    assert labels == ["conditional", "conditional, prompted `<|bad|>` (`<|good|>` blocked)"]
