"""Dense softmax attention: the fast kernel (PyTorch SDPA) and its obviously-correct reference.

Shared conventions of every longctx attention kernel:
- q: (batch, heads, q_len, head_dim); k, v: (batch, heads, k_len, head_dim), k_len >= q_len.
- `key_padding_mask`: (batch, k_len) bool, True for real tokens, or None for no padding.
- `causal`: query i sits at absolute position k_len - q_len + i (the keys before the queries
  are a cache) and sees keys at positions <= its own.
- A query that sees no key at all (a left-pad position of a decoder) outputs zeros.
"""

import math

import torch
import torch.nn.functional as F


def visibility_mask(q_len: int, key_padding_mask: torch.Tensor | None, causal: bool,
                    k_len: int, device: torch.device) -> torch.Tensor | None:
    """(batch or 1, 1, q_len, k_len) bool, True where a query may attend a key; None if all may."""
    mask = None
    if causal:
        query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q_len, 1)
        # (1, 1, q_len, k_len)
        mask = (torch.arange(k_len, device=device)[None, :] <= query_pos)[None, None]
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :].bool()  # (batch, 1, 1, k_len)
        mask = keys if mask is None else mask & keys
    return mask


def dense_attention(q, k, v, *, key_padding_mask=None, causal=False, dropout_p=0.0, scale=None):
    """Softmax attention through `scaled_dot_product_attention`; see the module doc for shapes."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    if causal and q_len == 1:  # a decoding step: its one query is the last token, sees every key
        causal = False
    if key_padding_mask is None and causal and q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
                                              scale=scale)
    if key_padding_mask is None and not causal:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    mask = visibility_mask(q_len, key_padding_mask, causal, k_len, q.device)
    return masked_sdpa(q, k, v, mask, dropout_p=dropout_p, scale=scale)


def masked_sdpa(q, k, v, mask, *, dropout_p=0.0, scale=None, bias=None):
    """SDPA with a bool mask (True: may attend), where a query that sees no key outputs zeros;
    `bias`, if given, is added to the scaled scores (a float mask, e.g. Transformer-XL's position
    scores)."""
    sees_something = mask.any(dim=-1, keepdim=True)  # (..., q_len, 1)
    # A row with no visible key would be NaN in SDPA; let it see everything, then zero it.
    visible = mask | ~sees_something
    attn_mask = visible if bias is None else bias.masked_fill(~visible, float("-inf")).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                         scale=scale)
    return out * sees_something


def dense_attention_reference(q, k, v, *, key_padding_mask=None, causal=False, dropout_p=0.0,
                              scale=None):
    """Explicit softmax(q k^T) v with literal masking; returns (output, weights before dropout)."""
    batch, _, q_len, _ = q.shape
    k_len = k.shape[-2]
    allowed = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool, device=q.device)  # may attend
    if causal:  # query i is token k_len - q_len + i: it sees keys up to that one
        allowed = allowed.tril(diagonal=k_len - q_len)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    return masked_attention_reference(q, k, v, allowed, dropout_p=dropout_p, scale=scale)


def masked_attention_reference(q, k, v, allowed, *, dropout_p=0.0, scale=None):
    """softmax over the keys each query is `allowed` (bool, broadcastable to (batch, heads, q_len,
    k_len)) to see; a query that sees nothing outputs zeros. Returns (output, weights)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale  # (batch, heads, q_len, k_len)
    sees_something = allowed.any(dim=-1, keepdim=True)  # (batch, 1 or heads, q_len, 1)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~sees_something, 0.0)
    weights = torch.softmax(scores, dim=-1) * sees_something
    dropped = F.dropout(weights, dropout_p) if dropout_p else weights
    return torch.einsum("bhqk,bhkd->bhqd", dropped, v), weights  # (batch, heads, q_len, dim)
