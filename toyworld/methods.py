"""The benchmark's methods: with and without ST-Layout modulation and ReAtCo's RAD, the grids the
strength sweeps score, and a model's own recommended strengths (``tuned``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from videograin.method.settings import Modulation, ReAtCoSettings


@dataclass(frozen=True)
class Method:
    name: str
    self_strength: float | None  # None: no modulation (baseline)
    cross_strength: float | None = None
    fraction: float = 0.3  # share of the denoising steps with modulation on
    reatco: bool = False  # ReAtCo's RAD on the first half of the steps (IRJS in place of blend)

    def reatco_spec(self, steps: int, blend: bool) -> ReAtCoSettings | None:
        return ReAtCoSettings(steps=round(0.5 * steps), irjs=blend) if self.reatco else None

    def modulation(self, steps: int) -> Modulation | None:
        if self.self_strength is None:
            return None
        return Modulation(steps=max(1, round(self.fraction * steps)), self_strength=self.self_strength,
                              cross_strength=self.cross_strength)


METHODS = (
    Method("baseline", None),
    Method("cross_only", 0.0, 1.0),
    Method("self_only", 0.3, 0.0),
    Method("videograin", 0.3, 1.0),
    Method("reatco", None, reatco=True),
    Method("videograin+reatco", 0.3, 1.0, reatco=True),
)
# Modulation strengths are hyper-parameters of the model they run on (the paper's were set for SD 1.5).
# ``--sweep`` scores SWEEP_GRID on the held-out VALIDATION_CASES (blend on) and names the best; that
# choice is written to the model folder's videograin.json (its recommended settings, which every edit
# on it uses when the config sets none) and run here as "videograin_tuned" (``tuned``), next to the
# paper's defaults (results/sd/sweep.md has the grid).
SWEEP_GRID = tuple((s, c, f) for s in (0.3, 0.6, 1.0) for c in (1.0, 2.0, 4.0) for f in (0.3, 0.5, 0.8))
# On the committed model the sweep put cross strength 4.0 first (0.88-0.91 on the held-out cases at any
# self strength and fraction; cross 2.0: 0.77-0.80); cross 1.0, the paper's, gave 0.45-0.47 whatever the rest.
# The Wan toy (``--backbone wan``): flow matching, guidance 5 as Wan's own pipelines use; its strengths
# from ``--backbone wan --sweep`` on the held-out random cases (toyworld/TRAINING.md, "Wan").


def tuned(model: str | Path) -> Method:
    """The model's recommended modulation (its videograin.json) as the "videograin_tuned" method: the
    strengths, and the share of the recommended steps it is active on."""
    from videograin.config.preflight import model_recommended

    recommended = model_recommended(str(model))
    modulation = recommended.modulation
    return Method("videograin_tuned", modulation.self_strength, modulation.cross_strength,
                  modulation.steps / recommended.steps)


# The DiT's self-attention gives the other instance less than its share of the tokens without modulation
# (``toyworld.wan_attention``), so its grid also tries self-attention modulation weak (0.1) and off (0.0).
WAN_SWEEP_GRID = tuple((s, c, f) for s in (0.0, 0.1, 0.3, 0.6) for c in (1.0, 2.0, 4.0) for f in (0.3, 0.5, 0.8))
