"""videograin: zero-shot multi-grained video editing on stock diffusers models."""

__version__ = "0.1.0"
