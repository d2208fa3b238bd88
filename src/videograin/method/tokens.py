"""Region prompts inside the global prompt: token spans and the regional embedding swap.

A span ``(start, end)`` indexes the padded token sequence the text encoder sees (after CLIP's start
token; T5 has none), so ``embeds[:, start:end]`` are the region prompt's words inside the global prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..values import is_edited

Span = tuple[int, int]


class PromptError(ValueError):
    """A prompt does not fit the tokenizer: ``region`` is the index of the region whose prompt (``part``
    "prompt") or word of interest (``part`` "word") is at fault, None for the global prompt;
    ``problem`` and ``fix`` in plain words."""

    def __init__(self, region: int | None, problem: str, fix: str, part: str = "prompt"):
        self.region, self.part, self.problem, self.fix = region, part, problem, fix
        where = "prompt" if region is None else f"region {region} {part}"
        super().__init__(f"{where}: {problem}; {fix}")


def _word_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without start/end tokens."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def start_tokens(tokenizer) -> int:
    """How many special tokens precede the words (CLIP: its start token, 1; T5/umT5: 0); both end
    with one end token."""
    return tokenizer.num_special_tokens_to_add() - 1


def _occurrences(sequence: list[int], sub: list[int]) -> list[int]:
    n = len(sub)
    return [i for i in range(len(sequence) - n + 1) if sequence[i : i + n] == sub]


def region_token_spans(tokenizer, prompt: str, region_prompts: list[str]) -> list[Span | None]:
    """Locate each region prompt as a token subsequence of ``prompt``.

    Returns one span per region (``None`` for an empty region prompt). When a region prompt occurs
    several times, regions take the occurrences in order (two regions "a dog" get the first and the
    second dog). Raises PromptError when ``prompt`` exceeds the encoder's length or a region prompt is
    not found.
    """
    ids = _word_ids(tokenizer, prompt)
    limit, first = tokenizer.model_max_length - tokenizer.num_special_tokens_to_add(), start_tokens(tokenizer)
    if len(ids) > limit:
        raise PromptError(None, f"is {len(ids)} tokens long, the text encoder reads at most {limit}",
                          "shorten the prompt")
    taken: set[int] = set()
    spans: list[Span | None] = []
    for i, region_prompt in enumerate(region_prompts):
        if not is_edited(region_prompt):
            spans.append(None)
            continue
        sub = _word_ids(tokenizer, region_prompt)
        starts = _occurrences(ids, sub)
        if not starts:
            raise PromptError(i, f"{region_prompt!r} does not occur in prompt {prompt!r} (compared as tokens)",
                              "write the region prompt word for word inside the global prompt")
        start = next((s for s in starts if s not in taken), starts[0])
        taken.add(start)
        spans.append((start + first, start + first + len(sub)))
    return spans


def word_token_indices(
    tokenizer, prompt: str, spans: list[Span | None], words: list[str | None]
) -> list[int | None]:
    """Each region's word of interest as a token index of the padded sequence (ReAtCo's j).

    The index is the word's last token inside the region's span (for a word split into several
    tokens, the one that has read the whole word); ``words[r]`` None takes the span's last token.
    None for regions without a span. Raises PromptError when a word is not found in its span.
    """
    ids = [None] * start_tokens(tokenizer) + _word_ids(tokenizer, prompt)
    indices: list[int | None] = []
    for i, (span, word) in enumerate(zip(spans, words)):
        if span is None:
            indices.append(None)
            continue
        if word is None:
            indices.append(span[1] - 1)
            continue
        sub = _word_ids(tokenizer, word)
        starts = [span[0] + s for s in _occurrences(ids[span[0] : span[1]], sub)]
        if not starts:
            raise PromptError(i, f"{word!r} is not among the tokens of the region prompt",
                              "name a word of the region prompt exactly as written there", part="word")
        indices.append(starts[-1] + len(sub) - 1)
    return indices


@torch.no_grad()
def encode_prompt(text_encoder, tokenizer, text: str) -> torch.Tensor:
    """CLIP embedding of ``text`` padded to the tokenizer's length: (1, L, D)."""
    ids = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


@torch.no_grad()
def regional_prompt_embeds(
    encode: Callable[[str], torch.Tensor], tokenizer, prompt: str, region_prompts: list[str], spans: list[Span | None]
) -> torch.Tensor:
    """Global prompt embedding with each region's span replaced by the region prompt encoded alone.

    The causal CLIP encoder lets earlier words colour later ones ("Spiderman and Polar Bear": the
    bear's tokens have seen Spiderman); T5's bidirectional one mixes them both ways. Encoding each
    region prompt on its own and writing its word embeddings into its span keeps every instance's
    words to their own meaning (VideoGrain (arXiv:2502.17258) §3.4). ``encode(text)``: the
    backbone's padded prompt embedding (1, L, D). Returns (1, L, D).
    """
    embeds = encode(prompt).clone()
    first = start_tokens(tokenizer)
    for region_prompt, span in zip(region_prompts, spans):
        if span is None:
            continue
        start, end = span
        embeds[:, start:end] = encode(region_prompt)[:, first : first + end - start]
    return embeds
