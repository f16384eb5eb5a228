"""Perceive-IR networks: quality prompts (stage 1) and the prior-guided restoration network (stage 2)."""
