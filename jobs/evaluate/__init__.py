"""Pairwise evaluation: a candidate against a baseline, judged by a model in both orders."""
