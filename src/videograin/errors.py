"""The project's errors: what the user gave is wrong (SpecError in a config, SettingError in a Python
call), a model cannot be had (WeightsUnavailable), or the caller cancelled an edit (EditCancelled).

Library code raises ValueError/TypeError with plain messages; the config layer and the CLI turn them into
SpecError, which names the config field (or flag), the problem and the fix in one line.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A problem with the user's input: names the config field, what is wrong and how to fix it.

    ``str(err)`` is one line: ``"<field>: <problem>; fix: <fix>"``.
    """

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}; fix: {fix}")


class SettingError(ValueError):
    """A value or setting an edit cannot take, found by the rules every entrance shares (``values``, the
    settings dataclasses, ``backbones.base.check_settings``). ``name`` is its path in the Python call
    ("num_inference_steps", "modulation.levels", "modulation.levels[1]"); str(): "name: problem; fix". The
    config layer maps the name to its YAML field (``config.spec.config_field``)."""

    def __init__(self, name: str, problem: str, fix: str):
        self.name, self.problem, self.fix = name, problem, fix
        super().__init__(f"{name}: {problem}; {fix}")


class EditCancelled(Exception):
    """The edit was cancelled by its caller (``videograin.edit(cancel=...)``); nothing was written."""


class WeightsUnavailable(OSError):
    """A model or package could not be loaded; ``str(err)`` says which and why, in one line."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
