"""Losses: pure functions of features plus thin modules holding precomputed targets."""
