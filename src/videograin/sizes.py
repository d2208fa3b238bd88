"""The frame-size rule every entrance shares (config, Python API, app, backbones): frame sides are
multiples of the model's ``size_multiple`` (its total downsampling) and at most ``MAX_SIDE``; without a
requested size, an edit runs at the source's aspect ratio with the long side at most the model's native
size. Sizes are ``(width, height)``."""

from __future__ import annotations

#: Largest frame side written: H.264's highest level (6.2) covers 8192 pixels.
MAX_SIDE = 8192


def nearest_multiple(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (halves up), at least one multiple."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def side_problem(name: str, value: object, multiple: int) -> tuple[str, str] | None:
    """Why ``value`` cannot be the frame side ``name`` ("width", "height") and the nearest valid sides
    ("32 or 48"); None when it can."""
    if not isinstance(value, int) or isinstance(value, bool) or value < multiple or value % multiple:
        if not isinstance(value, (int, float)):
            return f"{name} {value!r} must be a positive multiple of {multiple}", str(multiple)
        low = min(max(multiple, int(value) // multiple * multiple), MAX_SIDE // multiple * multiple)
        near = f"{low} or {low + multiple}" if low < value and low + multiple <= MAX_SIDE else str(low)
        return f"{name} {value!r} must be a positive multiple of {multiple} (the model's total downsampling)", near
    if value > MAX_SIDE:
        return (f"{name} {value} is above {MAX_SIDE}, the most the mp4 writer (H.264) takes",
                str(MAX_SIDE // multiple * multiple))
    return None


def check_frame_size(width: int, height: int, multiple: int) -> None:
    """ValueError naming the side that breaks the rule and the nearest valid values."""
    for name, value in (("width", width), ("height", height)):
        found = side_problem(name, value, multiple)
        if found is not None:
            raise ValueError(f"frame size {width}x{height}: {found[0]}: use {found[1]}")


def default_size(source: tuple[int, int], multiple: int, long_side: int = 512) -> tuple[int, int]:
    """The edit size of a source ``(w, h)`` without a requested size: its aspect ratio, the long side
    at most ``long_side``, each side rounded to the nearest multiple."""
    scale = min(1.0, long_side / max(source))
    return nearest_multiple(source[0] * scale, multiple), nearest_multiple(source[1] * scale, multiple)


def edit_size(source: tuple[int, int], width: int | None, height: int | None, multiple: int,
              long_side: int = 512) -> tuple[int, int]:
    """The ``(w, h)`` an edit runs at: ``width``/``height`` when given (checked: ValueError naming the
    nearest valid values); a side left out keeps the source's aspect ratio; neither: ``default_size``."""
    if width is None and height is None:
        return default_size(source, multiple, long_side)
    if width is None:
        width = nearest_multiple(source[0] * height / source[1], multiple)
    if height is None:
        height = nearest_multiple(source[1] * width / source[0], multiple)
    for name, value in (("height", height), ("width", width)):
        found = side_problem(name, value, multiple)
        if found is not None:
            raise ValueError(f"{found[0]}: use {found[1]}")
    return width, height
