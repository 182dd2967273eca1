"""Scoring: the metric registry, the reward models (ICT, HP, baselines), preprocessing, tokenisation and the
batched / differentiable scorers. Every score the toolkit prints is computed here."""
