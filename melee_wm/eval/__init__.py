"""Evaluation: metrics of predicted frames, and the baselines a model must beat, scored the same way."""
