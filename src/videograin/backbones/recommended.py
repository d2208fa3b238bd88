"""A model's recommended edit settings, in one place: ``videograin.json`` beside its model_index.json
when the folder has one, else the backbone family's defaults.

The config gate (``config/preflight.py``), the CLI and the app (through the runner) and the pipeline
(for a Python caller) all resolve what their caller left unset (None) with ``recommended_settings``.
The file holds any of::

    {"steps": 25, "guidance_scale": 7.5, "modulation": {"steps": 12, "self_strength": 0.3, "cross_strength": 4.0},
     "solver": "euler", "inversion": "ode"}

and a key it leaves out takes the family's default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..method.sampling import SOLVERS
from ..method.settings import INVERSIONS, Modulation

#: The file of recommended settings in a model folder (beside model_index.json).
FILE = "videograin.json"


@dataclass(frozen=True)
class Recommended:
    """Edit settings a model is best used with: sampling ``steps``, ``guidance_scale``, the ST-Layout
    ``modulation`` (every field set), the samplers' ``solver`` and where the edit starts
    (``inversion``); ``source`` says where they come from."""

    steps: int
    guidance_scale: float
    modulation: Modulation
    source: str
    solver: str = "euler"
    inversion: str = "ode"


#: Each family's defaults: SD, the paper's (50 DDIM steps, guidance 7.5, modulation on the first 15
#: steps, strengths 0.3 and 1.0); Wan, its pipeline's documented call (50 steps, guidance 5.0) with the
#: paper's modulation.
FAMILY_DEFAULTS = {
    "sd": Recommended(50, 7.5, Modulation(steps=15, self_strength=0.3, cross_strength=1.0),
                      "the paper's settings (SD 1.5)"),
    "wan": Recommended(50, 5.0, Modulation(steps=15, self_strength=0.3, cross_strength=1.0),
                       "Wan's pipeline defaults (50 steps, guidance 5) with the paper's modulation"),
}


def _settings_file(model: str | Path) -> Path | None:
    """The model's videograin.json on disk: in its folder, or in the hub cache for a hub id (never
    downloaded); None when it has none."""
    local = Path(model)
    if local.is_dir():
        return local / FILE if (local / FILE).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), FILE)
    except Exception:  # noqa: BLE001 - not a hub id, or no cache: the family's defaults
        return None
    return Path(cached) if isinstance(cached, str) else None


def _number(data: dict, key: str, path: Path, integer: bool = False):
    value = data[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok or value < 0:
        kind = "a whole number" if integer else "a finite number"
        raise ValueError(f"{path}: {key} must be {kind} >= 0, got {value!r}")
    return value


def recommended_settings(model: str | Path, family: str) -> Recommended:
    """The recommended settings of ``model`` (a folder or hub id) of backbone ``family`` ("sd", "wan").
    ValueError naming the file and key when its videograin.json cannot be used."""
    default = FAMILY_DEFAULTS[family]
    path = _settings_file(model) if str(model) else None  # a pipeline built in code has no folder
    if path is None:
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from None
    modulation = data.get("modulation", {}) if isinstance(data, dict) else None
    if not isinstance(modulation, dict):
        raise ValueError(f"{path} must hold a mapping such as {{\"steps\": 25, \"modulation\": {{...}}}}")
    unknown = ((set(data) - {"steps", "guidance_scale", "modulation", "solver", "inversion"})
               | (set(modulation) - {"steps", "self_strength", "cross_strength"}))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
    for key, options in (("solver", tuple(SOLVERS)), ("inversion", INVERSIONS)):
        if key in data and data[key] not in options:
            raise ValueError(f"{path}: {key} must be one of {', '.join(options)}, got {data[key]!r}")
    return Recommended(
        steps=_number(data, "steps", path, integer=True) if "steps" in data else default.steps,
        guidance_scale=(float(_number(data, "guidance_scale", path)) if "guidance_scale" in data
                        else default.guidance_scale),
        modulation=dataclasses.replace(default.modulation, **{
            key: _number(modulation, key, path, integer=key == "steps") for key in modulation
        }),
        source=str(path),
        solver=data.get("solver", default.solver),
        inversion=data.get("inversion", default.inversion),
    )


def resolve_modulation(modulation: Modulation | None, recommended: Recommended) -> Modulation | None:
    """``modulation`` with its unset (None) fields from ``recommended``; None (modulation off) stays None."""
    if modulation is None:
        return None
    given = {f.name: getattr(modulation, f.name) for f in dataclasses.fields(modulation)
             if getattr(modulation, f.name) is not None}
    return dataclasses.replace(recommended.modulation, **given)
