"""Perceive-IR models: quality prompts (stage 1) and the restoration model with its difficulty probe (stage 2)."""
