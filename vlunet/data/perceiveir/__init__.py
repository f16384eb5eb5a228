"""Perceive-IR data: quality triplets and folds (stage 1) and the restoration set with proxies (stage 2)."""
