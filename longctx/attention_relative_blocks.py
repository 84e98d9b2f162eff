"""Transformer-XL's relative attention block by block over the queries, with linear memory.

score(i, j) = ((q_i + u) . k_j + (q_i + v) . r[i - j]) * scale, causal over memory + segment.
PyTorch's fused SDPA kernels give no gradient for an additive mask, so passing the position term
as one (`attention_relative.relative_attention`) makes training run SDPA's math kernel over the
whole (q_len x k_len) score matrix, its softmax and their gradients: about ten passes over a
matrix that, at 2,048 queries x 4,096 keys x 8 heads, is far larger than any cache, and that
autograd keeps for the backward pass (memory quadratic in the length).

Here the queries are cut into blocks of a few dozen. A block needs only the keys up to its last
query (causal: the future blocks are skipped, a quarter of the work with a memory of half the
span, half of it without) and the distances those keys are at, so its position scores are one
small matmul and one relative shift. The forward pass computes each block's softmax and keeps
only its log-sum-exp -- on CPU by one call of the CPU flash kernel per block with the position
scores as its mask; on other devices (CUDA) with plain matmuls and a softmax. The
backward pass recomputes each block's probabilities from it and writes the gradients by hand -- of
the content scores to q + u and k, of the position scores (un-shifted) to q + v and r, of the
probabilities to v -- so every block's matrices stay in the last-level cache and nothing of size
(q_len x k_len) is stored. float16/bfloat16 inputs are computed in float32 (autocast off), as a
flash kernel accumulates, and the gradients returned in the inputs' dtypes. With dropout on the
attention weights `relative_attention` uses its SDPA kernel instead. On CPU in float32/64 it uses
`attention_relative_fused` (the same computation as one C++ kernel over cache-sized tiles) where
that can be built; this kernel is its fallback, and the one for other devices and half precision.

Shapes: q_content = q + u, q_position = q + v: (batch, heads, q_len, dim); k, v: (batch, heads,
memory + q_len, dim); r: (heads, memory + q_len, dim), the projected encodings of the distances
memory + q_len - 1, ..., 0 (already clamped at clamp_len: row c is distance k_len - 1 - c,
whatever its encoding). Query i is key memory + i: it sees the keys up to itself, only its
`window` most recent (same_length), and no padded key; one that sees nothing outputs zeros.
"""

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .attention_flash_cpu import flash_forward

# computed as they are; half precision is computed in float32
NATIVE_DTYPES = (torch.float32, torch.float64)
DTYPES = NATIVE_DTYPES + (torch.float16, torch.bfloat16)
# Queries per block. Small blocks keep a block's (heads x batch x block x keys) matrices in cache,
# large ones run the matmuls at a better rate: 128 gave the fastest training step of 64, 128 and
# 256 (measured: results/cpu-2026-11-23/README.md). The kernel alone:
# `scripts/benchmark_attention.py --kernels xl-blocks-N`.
DEFAULT_BLOCK = 128


def can_run_relative_blocks(q, dropout_p: float) -> bool:
    """No attention dropout (the flash kernel's CPU forward has none that a hand-written backward
    could replay) and a floating dtype it computes; any device."""
    return dropout_p == 0 and q.dtype in DTYPES


def fused_forward_applies(q) -> bool:
    """Whether a block's forward runs the CPU flash kernel (else matmuls and a softmax)."""
    return q.device.type == "cpu" and q.dtype in NATIVE_DTYPES and flash_forward is not None


def blockwise_relative_attention(q_content, q_position, k, v, r, *, memory_length: int,
                                 window: int | None = None, key_padding: torch.Tensor | None = None,
                                 block: int | None = None):
    """See the module doc. key_padding: (batch, k_len) bool, True for real keys, or None.
    Returns (batch, heads, q_len, dim) in v's dtype."""
    check_span_rows(q_content, k, r, memory_length)
    if block is not None and block < 1:
        raise ValueError(f"block={block}: a block holds at least one query (None: {DEFAULT_BLOCK})")
    block = block or DEFAULT_BLOCK
    plan = _BlockPlan(q_content.shape[-2], memory_length, window, key_padding, block)
    # Under autocast the inputs mix dtypes (q + u is float32, k bfloat16): all are computed in
    # float32 (float64 if one is), autograd casting each gradient back; the output takes v's dtype.
    inputs = (q_content, q_position, k, v, r)
    compute = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    with torch.autocast(q_content.device.type, enabled=False):
        # (batch, heads, q_len, dim)
        out = _RelativeBlocks.apply(*(t.to(compute) for t in inputs), plan).to(v.dtype)
    sees = plan.sees_something  # (batch, q_len) or None
    return out if sees is None else out * sees[:, None, :, None]


def check_span_rows(q_content, k, r, memory_length: int):
    """ValueError unless k and r have a row for each key of the span, memory + new tokens."""
    q_len = q_content.shape[-2]
    if k.shape[-2] != memory_length + q_len or r.shape[-2] != k.shape[-2]:
        raise ValueError(f"k has {k.shape[-2]} and r {r.shape[-2]} rows; both need "
                         f"memory_length + q_len = {memory_length + q_len}")


class _BlockPlan:
    """Which keys each block of queries reads, and which of them each query may see. Masks are
    laid out heads first, (heads, batch, queries, keys), as the kernel computes."""

    def __init__(self, q_len, memory_length, window, key_padding, block):
        self.q_len, self.memory_length, self.window = q_len, memory_length, window
        self.key_padding, self.block = key_padding, block
        # (batch, q_len) bool, or None when every query sees a key
        self.sees_something = self._queries_that_see_a_key()

    def blocks(self):
        """(query slice, key slice) for each block of queries."""
        for start in range(0, self.q_len, self.block):
            end = min(start + self.block, self.q_len)
            first = 0 if not self.window else max(0, self.memory_length + start - self.window + 1)
            yield slice(start, end), slice(first, self.memory_length + end)

    def hide(self, scores, rows, keys):
        """Sets the block's hidden (query, key) pairs of scores (heads, batch, queries, keys) to
        -inf. Without padding or window only the last columns hold any: the causal triangle."""
        query = torch.arange(self.memory_length + rows.start, self.memory_length + rows.stop,
                             device=scores.device)[:, None]  # (queries, 1)
        if self.key_padding is None and not self.window:
            queries = rows.stop - rows.start
            key = torch.arange(keys.stop - queries, keys.stop, device=scores.device)[None, :]
            scores[..., -queries:].masked_fill_(key > query, float("-inf"))
            return
        key = torch.arange(keys.start, keys.stop, device=scores.device)[None, :]  # (1, keys)
        hidden = key > query  # (queries, keys)
        if self.window:
            hidden = hidden | (key <= query - self.window)
        if self.key_padding is not None:
            hidden = hidden | ~self.key_padding[:, None, keys]  # (batch, queries, keys)
            # a query that sees no key: let it see all (no NaN); its output is zeroed outside
            hidden = hidden & self.sees_something[:, rows, None]
        scores.masked_fill_(hidden, float("-inf"))

    def _queries_that_see_a_key(self):
        if self.key_padding is None:
            return None
        # (batch, k_len + 1): real keys before index j
        real_before = F.pad(self.key_padding.long().cumsum(1), (1, 0))
        query = torch.arange(self.memory_length, self.memory_length + self.q_len,
                             device=self.key_padding.device)  # (q_len,) absolute indices
        first = (query - self.window + 1).clamp(min=0) if self.window else torch.zeros_like(query)
        return (real_before[:, query + 1] - real_before[:, first]) > 0


def shift_padded(padded):
    """The relative shift as a strided view: (..., queries, keys + 1) scores whose column c is at
    distance keys - c (column 0 padding) -> (..., queries, keys), where query i meets key j at
    distance keys - queries + i - j. Entry [i, j] sits at flat offset i * keys + j + queries of its
    (queries, keys + 1) matrix (rows contiguous): a one-to-one view of all but the first `queries`
    elements, where the future pairs read garbage."""
    *batch, queries, width = padded.shape
    keys = width - 1
    return padded.as_strided((*batch, queries, keys), (*padded.stride()[:-2], keys, 1),
                             padded.storage_offset() + queries)


def _shifted(buffer, queries: int, keys: int):
    """`shift_padded` of a (heads, batch x queries, keys + 1) block buffer:
    (heads, batch, queries, keys)."""
    return shift_padded(buffer.view(buffer.shape[0], -1, queries, keys + 1))


def _position_scores(q_position, r_extended, rows, keys, scale):
    """(heads, batch x queries, keys + 1) buffer of (q + v) . r[distance] * scale for the block,
    column c at distance keys - c, and its shifted view; also the block's queries and r rows."""
    heads, batch, _, dim = q_position.shape
    queries, key_count = rows.stop - rows.start, keys.stop - keys.start
    # (heads, batch x queries, dim); r rows of distances key_count .. 0: (heads, keys + 1, dim)
    q_rows = q_position[:, :, rows].reshape(heads, batch * queries, dim)
    r_rows = r_extended[:, r_extended.shape[1] - key_count - 1:]
    # (heads, batch x queries, keys + 1)
    buffer = torch.bmm(q_rows, r_rows.transpose(1, 2)).mul_(scale)
    return buffer, _shifted(buffer, queries, key_count), q_rows, r_rows


def _heads_first(t):
    """(batch, heads, n, dim) -> (heads, batch, n, dim), contiguous."""
    return t.transpose(0, 1).contiguous()


def _flat(t):
    """(heads, batch, n, dim) slice of a heads-first tensor -> (heads x batch, n, dim), a view."""
    return t.flatten(0, 1)


class _RelativeBlocks(torch.autograd.Function):
    """Works heads first, (heads, batch, length, dim): then a block of queries of every batch row
    is one (heads, batch x queries, dim) matrix per head against that head's r."""

    @staticmethod
    def forward(ctx, q_content, q_position, k, v, r, plan):
        scale = 1.0 / math.sqrt(q_content.shape[-1])
        # (heads, batch, q_len or k_len, dim)
        q_content, q_position, k, v = (_heads_first(t) for t in (q_content, q_position, k, v))
        # (heads, k_len + 1, dim): row 0 stands for distance k_len, which only hidden (future)
        # pairs ever read
        r_extended = torch.cat([r[:, :1], r], dim=1)
        out = torch.empty_like(q_content)  # (heads, batch, q_len, dim)
        # (heads, batch, q_len)
        lse = q_content.new_empty(q_content.shape[:-1], dtype=_lse_dtype(q_content))
        for rows, keys in plan.blocks():
            # (heads, batch, queries, keys)
            _, bias, _, _ = _position_scores(q_position, r_extended, rows, keys, scale)
            plan.hide(bias, rows, keys)
            out[:, :, rows], lse[:, :, rows] = _block_forward(
                q_content[:, :, rows], k[:, :, keys], v[:, :, keys], bias, scale)
        ctx.save_for_backward(q_content, q_position, k, v, r_extended, out, lse)
        ctx.plan = plan
        return out.transpose(0, 1)  # (batch, heads, q_len, dim)

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiated: say so
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):  # float32 in, float32 out
            return _RelativeBlocks._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q_content, q_position, k, v, r_extended, out, lse = ctx.saved_tensors
        plan, scale = ctx.plan, 1.0 / math.sqrt(q_content.shape[-1])
        grad_out = _heads_first(grad_out)  # (heads, batch, q_len, dim)
        # rowsum(dO * O) = sum_j P_ij dP_ij, scaled as the scores are: (heads, batch, q_len, 1)
        delta = (grad_out * out).sum(-1, keepdim=True).mul_(scale)
        grad_qc, grad_qp = torch.empty_like(q_content), torch.empty_like(q_position)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
        grad_r = torch.zeros_like(r_extended)  # (heads, k_len + 1, dim)
        lse = lse.to(q_content.dtype)[..., None]  # (heads, batch, q_len, 1)
        for rows, keys in plan.blocks():
            queries, key_count = rows.stop - rows.start, keys.stop - keys.start
            # position: (heads, batch, queries, keys); q_rows: (heads, batch x queries, dim);
            # r_rows: (heads, keys + 1, dim)
            _, position, q_rows, r_rows = _position_scores(q_position, r_extended, rows, keys,
                                                           scale)
            plan.hide(position, rows, keys)
            # (heads x batch, queries or keys, dim)
            q_block, k_block, v_block, grad_block = (
                _flat(t[:, :, s]) for t, s in
                ((q_content, rows), (k, keys), (v, keys), (grad_out, rows)))
            # (heads x batch, queries, keys)
            probs = torch.bmm(q_block, k_block.transpose(1, 2)).mul_(scale)
            probs.add_(position.flatten(0, 1)).sub_(_flat(lse[:, :, rows])).exp_()
            _flat(grad_v[:, :, keys]).baddbmm_(probs.transpose(1, 2), grad_block)
            # gradient of the unscaled scores: scale * P * (dP - delta), written through the shift
            grad_probs = torch.bmm(grad_block * scale, v_block.transpose(1, 2))
            grad_probs.sub_(_flat(delta[:, :, rows]))  # (heads x batch, queries, keys)
            # (heads, batch x queries, keys + 1)
            grad_buffer = grad_probs.new_empty(r_rows.shape[0], q_rows.shape[1], key_count + 1)
            grad_buffer.view(-1, queries * (key_count + 1))[:, :queries].zero_()  # not in the view
            grad_scores = _shifted(grad_buffer, queries, key_count)  # (heads, batch, queries, keys)
            torch.mul(grad_probs.view_as(grad_scores), probs.view_as(grad_scores), out=grad_scores)
            grad_scores = grad_scores.flatten(0, 1)  # (heads x batch, queries, keys)
            grad_qc[:, :, rows] = torch.bmm(grad_scores, k_block).view(grad_qc[:, :, rows].shape)
            _flat(grad_k[:, :, keys]).baddbmm_(grad_scores.transpose(1, 2), q_block)
            grad_qp[:, :, rows] = torch.bmm(grad_buffer, r_rows).view(grad_qp[:, :, rows].shape)
            grad_r[:, grad_r.shape[1] - key_count - 1:].baddbmm_(grad_buffer.transpose(1, 2),
                                                                 q_rows)
        grad_r_extended, grad_r = grad_r, grad_r[:, 1:]  # (heads, k_len, dim)
        grad_r[:, 0] += grad_r_extended[:, 0]  # row 0 was a copy of r's first row
        return (grad_qc.transpose(0, 1), grad_qp.transpose(0, 1), grad_k.transpose(0, 1),
                grad_v.transpose(0, 1), grad_r, None)


def _block_forward(q, k, v, bias, scale):
    """One block's attention output (heads, batch, queries, dim) and log-sum-exp (heads, batch,
    queries): q (heads, batch, queries, dim), k and v (heads, batch, keys, dim), bias the block's
    scaled position scores (heads, batch, queries, keys), -inf where hidden."""
    if fused_forward_applies(q):
        return flash_forward(q, k, v, attn_mask=bias, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).add_(bias)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.matmul(scores.sub_(lse[..., None]).exp_(), v), lse


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32
