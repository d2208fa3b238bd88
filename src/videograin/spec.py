"""The edit spec: a YAML config validated into dataclasses, with one-line errors naming field and fix."""

from __future__ import annotations


class SpecError(ValueError):
    """A problem with the user's input: names the config field, what is wrong and how to fix it.

    ``str(err)`` is one line: ``"<field>: <problem>; fix: <fix>"``.
    """

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}; fix: {fix}")
