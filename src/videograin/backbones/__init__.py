"""Backbones: what a denoiser family provides to the method (base.Backbone), one module each."""
