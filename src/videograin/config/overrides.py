"""Config values set on top of a config file, the one way for every entrance: a CLI flag (``--seed``),
a keyword of ``videograin.edit`` (``seed=3``) and a batch job's keys (``seed: 1``, ``set:
{edit.modulation.cross_strength: 2.0}``). Each names a config key (``SHORTCUTS`` name the common ones);
the result is parsed again as if written in the config, so errors name the config field."""

from __future__ import annotations

from typing import Any

from ..errors import SpecError
from .parse import spec_from_dict
from .spec import EditSpec

#: Names a caller may use without the config's section, and the key each stands for.
SHORTCUTS = {"steps": "edit.steps", "seed": "edit.seed", "guidance_scale": "edit.guidance_scale",
             "method": "edit.method", "prompt": "prompt", "source_prompt": "source_prompt",
             "negative_prompt": "negative_prompt"}


def shortcut_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``SHORTCUTS`` names -> their config keys; a None value (a flag or keyword not given) is left out,
    keeping the config's value. TypeError for a name that is not a shortcut."""
    unknown = set(values) - set(SHORTCUTS)
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; known: {', '.join(SHORTCUTS)}")
    return {SHORTCUTS[name]: value for name, value in values.items() if value is not None}


def with_overrides(spec: EditSpec, values: dict[str, Any], field: str = "set") -> EditSpec:
    """``spec`` with ``values`` ({dotted config key: value}, null included) set and parsed again. A
    dotted key whose section is not a section of the config is a SpecError(``field.key``)."""
    if not values:
        return spec
    data = spec.to_dict()
    for dotted, value in values.items():
        *path, last = dotted.split(".")
        node = data
        for key in path:
            node = node.setdefault(key, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise SpecError(f"{field}.{dotted}", f"{key} is not a section of the config",
                                "name a key of the config, e.g. edit.modulation.cross_strength")
        node[last] = value
    return spec_from_dict(data, spec.base_dir)
