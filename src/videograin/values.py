"""The value rules every entrance shares: types, finiteness and ranges of numbers, booleans, choices and
level lists. The settings dataclasses, the pipeline's ``check_inputs`` and the config parser call these;
each raises ``errors.SettingError`` naming the value, which the config layer maps to its field."""

from __future__ import annotations

import difflib
import math
from typing import Any

from .errors import SettingError

#: Guidance scales past this only blow the prediction up (SD uses 7.5, Wan 5).
MAX_GUIDANCE = 100.0
#: Characters a prompt may have: far more than any text encoder reads (CLIP 75 tokens, umT5 512), checked
#: before a tokenizer sees it (tokenizing a 20 MB prompt takes about a minute).
MAX_PROMPT_CHARS = 10_000


def is_edited(region_prompt: str) -> bool:
    """Whether a region changes: an empty (or blank) region prompt keeps the region as it is."""
    return bool(region_prompt.strip())


def describe(value: Any) -> str:
    """A value as an error message shows it: its repr (cut at 60 characters) and type."""
    text = " ".join(repr(value).split())  # one line, also for arrays
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def suggest(word: str, options: tuple[str, ...], lead: str) -> str:
    """A fix naming the closest of ``options`` to ``word`` (or ``lead`` and all of them)."""
    close = difflib.get_close_matches(word, options, n=1)
    listing = ", ".join(options)
    return f"did you mean {close[0]!r}? valid: {listing}" if close else f"{lead} {listing}"


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool, not a float) from ``minimum`` to ``maximum``."""
    if not is_whole(value):
        example = f", e.g. {int(value)}" if isinstance(value, float) and value.is_integer() else ""
        raise SettingError(name, f"must be an integer, got {describe(value)}", f"write a whole number >= {minimum}{example}")
    if value < minimum:
        raise SettingError(name, f"must be >= {minimum}, got {value}", f"use a value >= {minimum}")
    if maximum is not None and value > maximum:
        raise SettingError(name, f"must be <= {maximum}, got {value}", f"use a value from {minimum} to {maximum}")
    return value


def box(value: Any, name: str) -> tuple[int, int, int, int]:
    """A box [x0, y0, x1, y1] of whole, non-negative source-frame pixels with x0 < x1 and y0 < y1."""
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(is_whole(v) for v in value)):
        raise SettingError(name, f"must be a box of 4 integers [x0, y0, x1, y1], got {describe(value)}",
                           "write the box as [x0, y0, x1, y1] in whole source-frame pixels")
    x0, y0, x1, y1 = value
    if min(value) < 0:
        raise SettingError(name, f"box {list(value)} has a negative coordinate",
                           "use pixel coordinates >= 0 (clip the box to the frame)")
    if not (x0 < x1 and y0 < y1):
        raise SettingError(name, f"box {list(value)} is empty or flipped: needs x0 < x1 and y0 < y1",
                           "order the corners as [left, top, right, bottom]")
    return (x0, y0, x1, y1)


def number(value: Any, name: str, maximum: float | None = None, why: str = "") -> float:
    """A finite real number >= 0 (ints accepted, booleans not), at most ``maximum`` (``why`` says why)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(name, f"must be a finite number, got {describe(value)}", "write a number such as 1.0")
    if value < 0:
        raise SettingError(name, f"must be >= 0, got {value}", "use a value >= 0")
    if maximum is not None and value > maximum:
        raise SettingError(name, f"{value:g} is far outside the useful range{why}", f"use a value from 0 to {maximum:g}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SettingError(name, f"must be true or false, got {describe(value)}", "write true or false (unquoted)")
    return value


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise SettingError(name, f"unknown value {value!r}", suggest(str(value), options, "choose one of"))
    return value


def levels(value: Any, name: str, allow_all: bool = True) -> str | tuple[int, ...]:
    """"all" (when allowed) or a non-empty sequence of distinct level indices >= 0, as a tuple."""
    if value == "all" and allow_all:
        return "all"
    if not isinstance(value, (list, tuple)) or not value:
        lead, fix = ("'all' or ", "`levels: all`, or ") if allow_all else ("", "")
        raise SettingError(name, f"must be {lead}a non-empty list of level indices, got {describe(value)}",
                           f"write {fix}e.g. `levels: [0, 1, 2]` (0 = highest resolution or first block)")
    chosen = tuple(whole(v, f"{name}[{i}]", 0) for i, v in enumerate(value))
    repeated = sorted({level for level in chosen if chosen.count(level) > 1})
    if repeated:
        raise SettingError(name, f"repeats level(s) {repeated}", "list each level once")
    return chosen


def guidance(value: Any, name: str) -> float:
    """A classifier-free guidance scale: finite, from 0 to MAX_GUIDANCE."""
    return number(value, name, MAX_GUIDANCE, " (SD uses 7.5, Wan 5)")


def record_attention(value: Any, name: str) -> bool | str:
    """True, False or "compare" (also the maps without modulation)."""
    if value == "compare" or isinstance(value, bool):
        return value
    raise SettingError(name, f"must be true, false or compare, got {describe(value)}",
                       "write true, or compare to also see the maps without modulation")


def of_type(value: Any, name: str, kind: type, optional: bool = True):
    """``value`` unchanged when it is a ``kind`` (or None, when ``optional``); TypeError naming it else."""
    if (value is None and optional) or isinstance(value, kind):
        return value
    raise TypeError(f"{name} must be a {kind.__name__}{' or None' if optional else ''}, got {describe(value)}")


def prompt(value: Any, name: str) -> str:
    """A prompt: text of at most MAX_PROMPT_CHARS characters (the token limit is the model's, checked
    after this by its tokenizer)."""
    if not isinstance(value, str):
        raise SettingError(name, f"must be text, got {describe(value)}", "write it as text, in quotes if in doubt")
    if len(value) > MAX_PROMPT_CHARS:
        raise SettingError(name, f"is {len(value):,} characters long; no text encoder reads a tenth of that",
                           f"shorten it (at most {MAX_PROMPT_CHARS:,} characters; CLIP reads about 75 words)")
    return value
