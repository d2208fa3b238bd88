"""Evaluation: optical flow, the metric functions and the evaluation that runs them all."""
