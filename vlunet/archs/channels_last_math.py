"""Small tensor helpers shared by the channels-last blocks: pixel rows of a map and per-head channel attention.

On a channels-last (B, C, H, W) map, (B, H*W, C) pixel rows are a free view, also of a channel slice.
"""
import torch


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): a view on channels-last maps and their channel slices (a copy otherwise)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def as_map(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) channels-last view, H and W from ``like``."""
    return tokens.view(tokens.shape[0], *like.shape[-2:], tokens.shape[-1]).permute(0, 3, 1, 2)


def head_grams(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """q, k (B, C, N) -> (B, heads, C/heads, C/heads): per head q @ k^T (channels grouped head-major)."""
    return torch.stack([q_head @ k_head.transpose(1, 2) for q_head, k_head in zip(q.chunk(heads, 1), k.chunk(heads, 1))],
                       dim=1)


def normalized_attention(grams: torch.Tensor, query_norm: torch.Tensor, key_norm: torch.Tensor,
                         temperature: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k^T / (|q| |k|^T) * temperature) from the float32 grams (B, heads, c, c) and norms (B, C)."""
    b, heads = grams.shape[:2]
    logits = grams / (query_norm.view(b, heads, -1, 1) * key_norm.view(b, heads, 1, -1))
    return (logits * temperature.view(1, heads, 1, 1)).softmax(dim=-1)


def attention_projection(attention: torch.Tensor, projection_weight: torch.Tensor) -> torch.Tensor:
    """(B, C, C_out): the per-head attention weights (B, heads, c, c), block-diagonal, times the 1x1 projection
    (C_out, C, 1, 1): one matrix that maps v's channels to the projected output."""
    b, heads, c = attention.shape[:3]
    projection = projection_weight.flatten(1).t().reshape(heads, c, -1)  # (heads, C/heads, C_out)
    return (attention.transpose(2, 3) @ projection).reshape(b, heads * c, -1)
