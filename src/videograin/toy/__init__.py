"""The toy world's trained models and demo clip, shipped inside the package: a real edit offline, anywhere.

Trained by this project on its synthetic world of coloured shapes (``toyworld``; how to retrain:
toyworld/TRAINING.md): small enough for a CPU, and the only offline evidence of edit quality.

- ``SD_MODEL``: the SD-architecture toy (UNet, 32x32, 8-frame clips); the demo's and the app's default.
- ``PARTS_MODEL``: the SD toy fine-tuned on part captions (a shape and its part, e.g. a dot on a circle).
- ``WAN_MODEL``: the Wan 2.1-architecture toy (10-block DiT, causal VAE, umT5), the best of its runs.
- ``DEMO_CONFIG`` / ``DEMO_WAN_CONFIG``: two blue squares, each edited into its own shape in one pass
  (``videograin demo``).
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SD_MODEL = HERE / "sd"
PARTS_MODEL = HERE / "parts"
WAN_MODEL = HERE / "wan"
DEMO = HERE / "demo"
DEMO_CONFIG = DEMO / "config.yaml"
DEMO_WAN_CONFIG = DEMO / "config_wan.yaml"
