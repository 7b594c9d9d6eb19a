"""Offline evaluation: the per-user temporal split and ranking metrics against baselines."""
