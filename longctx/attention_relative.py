"""Transformer-XL's relative attention (Dai et al. 2019): one dispatch over three exact kernels,
and the slow, obviously-correct reference they are tested against.

    score(i, j) = ((q_i + u) . k_j + (q_i + v) . r[i - j]) / sqrt(dim)

over memory + segment: u and v are learned per head (the content and position biases), r the
projected encodings of the distances. Query i (key memory + i) sees the keys up to itself, only
its `window` most recent (same_length), and no padded key (`VisibleKeys`); a query that sees no
key outputs zeros.

Shapes: q (batch, heads, q_len, dim); k, v (batch, heads, memory + q_len, dim); r (heads,
memory + q_len, dim), row c the encoding of distance k_len - 1 - c; content_bias (u) and
position_bias (v): (heads, dim).

The kernels: `attention_relative_fused` (one C++ kernel, CPU), `attention_relative_blocks`
(query blocks of eager ops, any device) and SDPA with the position term as an additive mask
(`relative_attention` says when each runs).
"""

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from .attention_dense import masked_sdpa
from .attention_relative_blocks import (
    DEFAULT_BLOCK,
    DTYPES,
    blockwise_relative_attention,
    can_run_relative_blocks,
    fused_forward_applies,
    shift_padded,
)
from .attention_relative_fused import fused_applies, fused_kernel, fused_relative_attention

RELATIVE_KERNELS = ("auto", "fused", "blocks", "sdpa")


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., q_len, k_len) scores of query i against the encodings of distances k_len - 1, ..., 0
    (column c: distance k_len - 1 - c) -> scores of query i against key j, i.e. against distance
    (k_len - q_len + i) - j. Entries of future keys (j beyond the query) are garbage: mask them.

    The paper's zero-pad trick: left-pad one column (one copy), then `shift_padded`'s view."""
    return shift_padded(F.pad(scores, (1, 0)))  # (..., q_len, k_len)


def relative_scores(q, k, r, content_bias, position_bias):
    """Unscaled scores (q + u) k^T + shift((q + v) r^T): (batch, heads, q_len, k_len).

    q: (batch, heads, q_len, dim); k: (batch, heads, k_len, dim); r: (heads, k_len, dim) the
    projected encodings of distances k_len - 1, ..., 0; content_bias (u), position_bias (v):
    (heads, dim)."""
    # (batch, heads, q_len, k_len) each
    content = torch.matmul(q + content_bias[:, None], k.transpose(-1, -2))
    position = torch.matmul(q + position_bias[:, None], r.transpose(-1, -2))
    return content + relative_shift(position)


def relative_attention_reference(q, k, v, r, content_bias, position_bias, allowed, *,
                                 dropout_p=0.0):
    """Explicit softmax(((q + u) k^T + shift((q + v) r^T)) / sqrt(dim)) v over the `allowed`
    (query, key) pairs ((batch or 1, 1, q_len, k_len) bool, or None: all); returns (output
    (batch, heads, q_len, dim), weights (batch, heads, q_len, k_len))."""
    scores = relative_scores(q, k, r, content_bias, position_bias) / math.sqrt(q.shape[-1])
    if allowed is None:
        weights = torch.softmax(scores, dim=-1)
    else:
        sees_something = allowed.any(dim=-1, keepdim=True)  # (batch or 1, 1, q_len, 1)
        scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~sees_something, 0.0)
        weights = torch.softmax(scores, dim=-1) * sees_something
    dropped = F.dropout(weights, dropout_p) if dropout_p else weights
    return torch.matmul(dropped, v), weights


def relative_attention(q, k, v, r, content_bias, position_bias, visible: "VisibleKeys", *,
                       dropout_p=0.0, kernel: str = "auto"):
    """softmax(((q + u) k^T + shift((q + v) r^T)) / sqrt(dim)) v over the `visible` keys:
    (batch, heads, q_len, dim); a query that sees no key outputs zeros. Kernels, equal up to
    float rounding:
    - "fused" (`attention_relative_fused`): CPU, float32/64, no attention dropout; one C++ kernel
      (compiled on first use) over cache-sized tiles, forward and backward; memory linear in the
      length. Where it cannot be built (no C++ compiler) it warns once and "blocks" runs: a saved
      config asking for it loads anywhere.
    - "blocks" (`attention_relative_blocks`): no attention dropout; query blocks of eager ops,
      causal blocks skipped, a hand-written backward; memory linear in the length. Any device: on
      CPU each block's forward is the CPU flash kernel, elsewhere matmuls and a softmax; half
      precision is computed in float32.
    - "sdpa": SDPA over (q + u) k^T with the position term as an additive float mask. In training
      the mask needs a gradient, which the fused kernels do not give, so SDPA runs its math kernel
      over the materialised (q_len x k_len) scores, which autograd keeps (dropout, double backward).
    "auto", on CPU in float32/64 without dropout when the queries fill more than one block of 128,
    takes "fused" (so "blocks" where that cannot be built); for one query without attention
    dropout (a token at a time, as `generate()` feeds them) `single_query_relative_attention`,
    three small matmuls and no shift, which needs no mask for the causal order; "sdpa" elsewhere
    (for a few queries at a time the SDPA call was measured faster than "blocks": results/
    cpu-2026-11-23/README.md; on CUDA "blocks" has not been timed against it:
    `scripts/run_cuda_transfo_xl.sh` times both)."""
    kernel = _chosen_kernel(q, dropout_p, kernel)
    q_content = q + content_bias[:, None]  # (batch, heads, q_len, dim)
    q_position = q + position_bias[:, None]  # (batch, heads, q_len, dim)
    if kernel == "single":
        return single_query_relative_attention(q_content, q_position, k, v, r, visible)
    if kernel == "sdpa":
        return _sdpa_relative_attention(q_content, q_position, k, v, r, visible, dropout_p)
    attend = fused_relative_attention if kernel == "fused" else blockwise_relative_attention
    return attend(q_content, q_position, k, v, r, memory_length=visible.memory_length,
                  window=visible.window, key_padding=visible.key_padding)


def _chosen_kernel(q, dropout_p: float, kernel: str) -> str:
    """The kernel that runs: `kernel` checked against what the inputs allow, "auto" resolved."""
    if kernel not in RELATIVE_KERNELS:
        raise ValueError(f"kernel={kernel!r}; use one of {RELATIVE_KERNELS}")
    if kernel == "fused" and not fused_applies(q, dropout_p):
        raise ValueError(f"kernel='fused' needs CPU tensors in float32/float64 and attention "
                         f"dropout 0; got {q.device.type}, {q.dtype}, dropout_p={dropout_p}. Use "
                         f"kernel='auto', 'blocks' or 'sdpa'.")
    blocks_apply = can_run_relative_blocks(q, dropout_p)
    if kernel == "blocks" and not blocks_apply:
        raise ValueError(f"kernel='blocks' needs attention dropout 0 and a floating dtype "
                         f"({', '.join(map(str, DTYPES))}); got dropout_p={dropout_p}, {q.dtype}. "
                         f"Use kernel='auto' or 'sdpa'.")
    measured_faster = blocks_apply and fused_forward_applies(q) and q.shape[-2] > DEFAULT_BLOCK
    if kernel == "auto" and q.shape[-2] == 1 and dropout_p == 0:
        return "single"
    if kernel == "auto":
        kernel = "fused" if measured_faster else "sdpa"
    if kernel == "fused" and fused_kernel() is None:
        kernel = "blocks"  # fused_kernel() warned, once: the same values, more slowly
    return kernel


def single_query_relative_attention(q_content, q_position, k, v, r, visible: "VisibleKeys"):
    """One query (q_len 1, the last key), no attention dropout: (batch, heads, 1, dim).

    The query is key `memory`, so it meets key j at distance memory - j = k_len - 1 - j, which is
    what row j of r encodes: the position scores need no shift, and every key is at or before the
    query, so only the window and the padding hide keys. q_content = q + u, q_position = q + v:
    (batch, heads, 1, dim); k, v: (batch, heads, k_len, dim); r: (heads, k_len, dim)."""
    scale = 1.0 / math.sqrt(q_content.shape[-1])
    # (batch, heads, 1, k_len): content plus position scores, scaled
    scores = torch.matmul(q_content, k.transpose(-1, -2))
    scores = scores.add_(torch.matmul(q_position, r.transpose(-1, -2))).mul_(scale)
    allowed = _single_query_visible(visible, k.shape[-2], k.device)  # (batch or 1, 1, 1, k_len)
    if allowed is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    sees_something = allowed.any(dim=-1, keepdim=True)  # (batch or 1, 1, 1, 1)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~sees_something, 0.0)
    return torch.matmul(torch.softmax(scores, dim=-1) * sees_something, v)


def _single_query_visible(visible: "VisibleKeys", k_len: int, device) -> torch.Tensor | None:
    """(batch or 1, 1, 1, k_len) bool of the keys the one query sees, or None: all of them."""
    if visible.q_len != 1 or visible.memory_length != k_len - 1:
        raise ValueError(f"single-query attention got VisibleKeys(q_len={visible.q_len}, "
                         f"memory_length={visible.memory_length}) for {k_len} keys; it takes one "
                         f"query after a memory of {k_len - 1}.")
    allowed = None
    if visible.window and visible.window < k_len:  # query k_len - 1 sees its `window` last keys
        allowed = torch.arange(k_len, device=device) >= k_len - visible.window  # (k_len,)
    if visible.key_padding is not None:
        padding = visible.key_padding[:, None, None, :]  # (batch, 1, 1, k_len)
        return padding if allowed is None else padding & allowed
    return None if allowed is None else allowed[None, None, None, :]


def _sdpa_relative_attention(q_content, q_position, k, v, r, visible, dropout_p: float):
    """SDPA over (q + u) k^T, the scaled position scores shift((q + v) r^T) as its additive mask."""
    scale = 1.0 / math.sqrt(q_content.shape[-1])
    # (batch, heads, q_len, k_len)
    position = relative_shift(torch.matmul(q_position * scale, r.transpose(-1, -2)))
    return masked_sdpa(q_content, k, v, visible.mask(), dropout_p=dropout_p, scale=scale,
                       bias=position)


def visible_keys(q_len: int, memory_length: int, window: int | None,
                 key_padding: torch.Tensor | None, device) -> torch.Tensor | None:
    """(batch or 1, 1, q_len, memory + q_len) bool: query i (absolute index memory + i) sees keys
    up to itself, only its `window` most recent ones (same_length), and no padding."""
    k_len = memory_length + q_len
    query = torch.arange(memory_length, k_len, device=device)[:, None]  # (q_len, 1)
    key = torch.arange(k_len, device=device)[None, :]  # (1, k_len)
    allowed = key <= query  # (q_len, k_len)
    if window:
        allowed = allowed & (key > query - window)
    allowed = allowed[None, None]  # (1, 1, q_len, k_len)
    return allowed if key_padding is None else allowed & key_padding[:, None, None, :]


@dataclass
class VisibleKeys:
    """Which keys the new tokens see (see `visible_keys`), kept as its structure: the block kernel
    needs no (q_len x k_len) mask; the others build it once, on first use."""

    q_len: int
    memory_length: int
    window: int | None = None
    key_padding: torch.Tensor | None = None  # (batch, memory + q_len) bool, True for real keys
    device: torch.device | str | None = None
    _mask: torch.Tensor | None = field(default=None, repr=False)

    def mask(self) -> torch.Tensor:
        """(batch or 1, 1, q_len, memory + q_len) bool, True where a query may attend a key."""
        if self._mask is None:
            self._mask = visible_keys(self.q_len, self.memory_length, self.window,
                                      self.key_padding, self.device)
        return self._mask
