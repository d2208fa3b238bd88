"""Region prompts as token spans of the global prompt, and the regional embedding swap, on the tiny
model's tokenizer and text encoder (expected values computed directly with them here)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from videograin.method.tokens import PromptError, encode_prompt, region_token_spans, regional_prompt_embeds


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")


@pytest.fixture(scope="module")
def text_encoder(tiny_model_dir):
    return CLIPTextModel.from_pretrained(tiny_model_dir, subfolder="text_encoder").eval()


def padded_ids(tokenizer, text):
    return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def word_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_spans_cover_the_region_prompt_tokens(tokenizer):
    prompt = "a dog in a red jacket and a polar bear under a cherry tree"
    regions = ["a dog in a red jacket", "polar bear", "cherry tree"]
    spans = region_token_spans(tokenizer, prompt, regions)
    ids = padded_ids(tokenizer, prompt)[0].tolist()
    assert ids[0] == tokenizer.bos_token_id
    for region, span in zip(regions, spans):
        start, end = span
        assert ids[start:end] == word_ids(tokenizer, region)
    # known answer: these words are one token each (checked), start token at 0
    assert len(word_ids(tokenizer, prompt)) == len(prompt.split())
    assert spans == [(1, 7), (9, 11), (13, 15)]


def test_spans_of_spelled_out_words(tokenizer):
    """Words outside the tiny vocabulary become several tokens; spans still match token for token."""
    prompt = "a zebra and a dog"
    spans = region_token_spans(tokenizer, prompt, ["a zebra", "dog"])
    ids = padded_ids(tokenizer, prompt)[0].tolist()
    assert ids[spans[0][0] : spans[0][1]] == word_ids(tokenizer, "a zebra")
    assert spans[0][1] - spans[0][0] > 2
    assert ids[spans[1][0] : spans[1][1]] == word_ids(tokenizer, "dog")


def test_tiny_vocabulary_words_are_single_tokens(tokenizer):
    from videograin.testing import WORDS

    split = [w for w in dict.fromkeys(WORDS) if len(word_ids(tokenizer, w)) != 1]
    assert split == []


def test_repeated_region_prompts_take_successive_occurrences(tokenizer):
    prompt = "a dog and a bird and a dog"
    assert len(word_ids(tokenizer, prompt)) == len(prompt.split())
    spans = region_token_spans(tokenizer, prompt, ["a dog", "a bird", "a dog"])
    assert spans == [(1, 3), (4, 6), (7, 9)]


def test_empty_region_prompt_gives_none(tokenizer):
    spans = region_token_spans(tokenizer, "a dog on the grass", ["", "grass", "   "])
    assert spans == [None, (5, 6), None]


def test_region_prompt_not_found(tokenizer):
    with pytest.raises(PromptError) as err:
        region_token_spans(tokenizer, "a dog on the grass", ["dog", "a cat"])
    assert err.value.region == 1 and err.value.part == "prompt"
    # a word prefix is not a token match
    with pytest.raises(PromptError) as err:
        region_token_spans(tokenizer, "a dogs on the grass", ["dog"])
    assert err.value.region == 0 and err.value.part == "prompt"


def test_prompt_over_75_tokens(tokenizer):
    ok = " ".join(["dog"] * 75)
    assert len(word_ids(tokenizer, ok)) == 75
    assert region_token_spans(tokenizer, ok, ["dog"]) == [(1, 2)]
    too_long = " ".join(["dog"] * 76)
    with pytest.raises(PromptError) as err:
        region_token_spans(tokenizer, too_long, ["dog"])
    assert err.value.region is None  # the global prompt


@torch.no_grad()
def test_regional_prompt_embeds_swaps_spans_only(tokenizer, text_encoder):
    prompt = "spiderman and a polar bear on the beach"
    regions = ["spiderman", "a polar bear", "", "beach"]
    spans = region_token_spans(tokenizer, prompt, regions)
    got = regional_prompt_embeds(lambda text: encode_prompt(text_encoder, tokenizer, text), tokenizer, prompt, regions, spans)

    plain = text_encoder(padded_ids(tokenizer, prompt))[0]  # (1, 77, 32)
    assert got.shape == plain.shape
    inside = torch.zeros(77, dtype=torch.bool)
    for region, span in zip(regions, spans):
        if span is None:
            continue
        start, end = span
        inside[start:end] = True
        own = text_encoder(padded_ids(tokenizer, region))[0]
        n = len(word_ids(tokenizer, region))
        assert end - start == n
        torch.testing.assert_close(got[:, start:end], own[:, 1 : 1 + n], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, ~inside], plain[:, ~inside], atol=1e-6, rtol=0)
    # the swap is visible where the causal encoder mixed earlier words in ("a polar bear" saw spiderman)
    start, end = spans[1]
    assert (got[:, start:end] - plain[:, start:end]).abs().max() > 1e-3
