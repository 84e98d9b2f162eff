"""Sliding-window attention on CPU as a few mask-free FlashAttention calls over key blocks.

The queries are cut into blocks of `block` tokens, a divisor of the window (window = m * block).
Query block i sees key blocks i - m .. i + m (causal: i - m .. i): block i - m through a triangle
(in-block key offset >= query offset), block i + m through the causal triangle, the blocks between
entirely. Each block offset d is one call of PyTorch's CPU flash kernel over every query block at
once, whose keys are the key tensor's blocks shifted by d: a view, not a copy of overlapping key
ranges, and no (length x window) mask -- a mask only where keys are padded or past the end. Global
keys are one more call over all queries, hidden from a query where they already sit in its
window. The calls are merged exactly through their log-sum-exps; the backward pass hands every
call the merged output and log-sum-exp (as ring attention does), which yields the exact gradient
of the one softmax over all visible keys.

Against the chunked kernel of `attention_sliding` (one SDPA over overlapping key slabs with a
mask) this skips the slab copies, their scatter-back in the backward pass, the masks, and the
large slab-shaped gradient buffers, which glibc's malloc returns to the OS and page-faults in
again on every step. Dropout is not supported (the flash kernel's CPU backward has none): the
slab form serves that case.
"""

import torch
import torch.nn.functional as F

from .attention_flash_cpu import flash_backward, flash_forward

# Blocks of 16 still beat the slab form at a window of 16; smaller ones were never measured, so
# windows without a divisor in [16, 256] keep the slab form
# (measured: results/cpu-2026-11-23/README.md).
MIN_BLOCK, MAX_BLOCK = 16, 256
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def band_block_size(window: int) -> int | None:
    """The block for a window: its largest divisor of at most MAX_BLOCK tokens; None when that
    is below MIN_BLOCK. Larger blocks compute more masked-out pairs (the kernel computes the two
    triangular blocks in full: 3 x 256 keys per query for window 256, against the 513 it needs)
    but run the flash kernel at a better rate: at windows of 256 and 512, blocks of 256 were the
    fastest measured (measured: results/cpu-2026-11-23/README.md)."""
    for block in range(min(window, MAX_BLOCK), MIN_BLOCK - 1, -1):
        if window % block == 0:
            return block
    return None


def can_run_block_band(q, dropout_p: float) -> bool:
    """Whether this kernel applies: CPU, no attention dropout, a dtype the flash kernel takes."""
    return (q.device.type == "cpu" and dropout_p == 0 and q.dtype in DTYPES
            and flash_forward is not None and flash_backward is not None)


def block_band_attention(q, k, v, *, window: int, block: int, key_ok=None, global_index=None,
                         global_valid=None, causal=False):
    """Sliding-window attention (see `attention_sliding`) with the block decomposition above.

    q, k, v: (batch, heads, length, dim); key_ok: (batch, length) bool or None (no padding);
    global_index, global_valid: (batch, globals) positions of each row's real global keys and
    which slots are real (`attention_sliding.global_indices`), or None. `block` must divide
    `window`. A query that sees no key outputs zeros."""
    if window % block:
        raise ValueError(f"block={block} must divide window={window}")
    batch, heads, length, dim = q.shape
    blocks = -(-length // block)
    padded = blocks * block
    valid = _padded_validity(key_ok, length, padded, q.device)  # (batch, padded) or None
    # (batch x heads, blocks, block, dim) each
    q_b, k_b, v_b = (_as_blocks(x, padded, block) for x in (q, k, v))
    hidden_keys = None
    if valid is not None:  # per (row x head, block, key in block): the layout of the block calls
        hidden_keys = (~valid)[:, None].expand(batch, heads, -1)  # (batch, heads, padded)
        hidden_keys = hidden_keys.reshape(batch * heads, blocks, block)
    global_keys = _global_keys(k, v, global_index, global_valid, window, padded)
    out = _BlockBand.apply(q_b, k_b, v_b, hidden_keys, *global_keys, window // block, causal)
    out = out.reshape(batch, heads, padded, dim)[:, :, :length]  # (batch, heads, length, dim)
    if valid is None:
        return out
    return out * _sees_something(valid, global_valid, window, causal)[:, None, :length, None]


def _padded_validity(key_ok, length, padded, device):
    """(batch, padded) bool of real keys, or None when every key is real (no mask needed)."""
    if key_ok is None and padded == length:
        return None
    if key_ok is None:
        key_ok = torch.ones(1, length, dtype=torch.bool, device=device)
    key_ok = F.pad(key_ok.bool(), (0, padded - length))
    return None if bool(key_ok.all()) else key_ok


def _as_blocks(x, padded: int, block: int):
    """(batch, heads, length, dim) -> (batch * heads, blocks, block, dim), zero-padded at the
    end."""
    batch, heads, length, dim = x.shape
    return F.pad(x, (0, 0, 0, padded - length)).reshape(batch * heads, padded // block, block, dim)


def _global_keys(k, v, index, valid, window: int, padded: int):
    """(global keys, global values, their hidden mask) or three Nones. The hidden mask
    (batch, 1, padded, globals) hides padding slots and globals inside a query's window (the
    block calls already count those)."""
    if index is None or not bool(valid.any()):
        return None, None, None
    queries = torch.arange(padded, device=k.device)
    # (batch, padded, globals)
    inside_window = (queries[None, :, None] - index[:, None, :]).abs() <= window
    hidden = ~valid[:, None, :] | inside_window
    # (batch, heads, globals, dim)
    positions = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
    return k.gather(2, positions), v.gather(2, positions), hidden[:, None]


def _sees_something(valid, global_valid, window: int, causal: bool):
    """(batch, padded) bool: whether a query has a real key in its window or any global key."""
    counts = F.pad(valid.long().cumsum(dim=1), (1, 0))  # (batch, padded + 1): real keys before j
    positions = torch.arange(valid.shape[1], device=valid.device)
    last = (positions if causal else positions + window).clamp(max=valid.shape[1] - 1)
    first = (positions - window).clamp(min=0)
    sees = (counts[:, last + 1] - counts[:, first]) > 0
    if global_valid is not None:
        sees = sees | global_valid.any(dim=1, keepdim=True)
    return sees


def _bias(hidden, dtype):
    """Additive mask in the query's dtype (the flash kernel's requirement): 0 where visible, the
    dtype's lowest finite value where hidden -- finite, so a call whose keys are all hidden gives
    a finite output with log-sum-exp ~ -3e38, which weighs exactly 0 in the merge."""
    zeros = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device)
    return zeros.masked_fill(hidden, torch.finfo(dtype).min)


class _BlockBand(torch.autograd.Function):
    """Forward: every block offset's flash call, merged by log-sum-exp. Backward: each call's
    flash backward with the merged output and log-sum-exp."""

    @staticmethod
    def forward(ctx, q_b, k_b, v_b, hidden_keys, k_global, v_global, global_hidden, m: int,
                causal: bool):
        calls = _calls(q_b, k_b, v_b, hidden_keys, m, causal)
        results = [flash_forward(q, k, v, 0.0, is_causal, attn_mask=mask)
                   for _, q, k, v, is_causal, mask in calls]
        global_call = _global_call(q_b, k_global, v_global)
        if global_call is not None:
            global_mask = _bias(global_hidden, q_b.dtype)
            results.append(flash_forward(*global_call, 0.0, False, attn_mask=global_mask))
        out, lse = _merge(q_b, calls, results, global_call is not None)
        ctx.save_for_backward(q_b, k_b, v_b, hidden_keys, k_global, v_global, global_hidden,
                              out, lse)
        ctx.m, ctx.causal = m, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_b, k_b, v_b, hidden_keys, k_global, v_global, global_hidden, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # (batch x heads, blocks, block, dim)
        grad_q, grad_k, grad_v = (torch.zeros_like(x) for x in (q_b, k_b, v_b))
        calls = _calls(q_b, k_b, v_b, hidden_keys, ctx.m, ctx.causal)
        for (lo, hi, shift), q, k, v, is_causal, mask in calls:
            dq, dk, dv = flash_backward(grad_out[:, lo:hi], q, k, v, out[:, lo:hi],
                                        lse[:, lo:hi].contiguous(), 0.0, is_causal,
                                        attn_mask=mask)
            grad_q[:, lo:hi] += dq
            grad_k[:, lo + shift:hi + shift] += dk
            grad_v[:, lo + shift:hi + shift] += dv
        grad_k_global = grad_v_global = None
        global_call = _global_call(q_b, k_global, v_global)
        if global_call is not None:
            queries = global_call[0].shape  # (batch, heads, padded, dim)
            dq, grad_k_global, grad_v_global = flash_backward(
                grad_out.reshape(queries), *global_call, out.reshape(queries),
                lse.reshape(queries[:3]), 0.0, False, attn_mask=_bias(global_hidden, q_b.dtype))
            grad_q += dq.reshape(grad_q.shape)
        return grad_q, grad_k, grad_v, None, grad_k_global, grad_v_global, None, None, None


def _calls(q_b, k_b, v_b, hidden_keys, m: int, causal: bool):
    """Per block offset d: ((lo, hi, d), queries, keys, values, is_causal, mask) for the query
    blocks lo..hi-1 whose key block (query block + d) exists."""
    blocks, block = q_b.shape[1], q_b.shape[2]
    calls = []
    for shift in range(-m, 1 if causal else m + 1):
        lo, hi = max(0, -shift), min(blocks, blocks - shift)
        if lo >= hi:
            continue
        # (batch x heads, hi - lo, 1, block): the keys hidden in each call's key block
        hidden = None if hidden_keys is None else hidden_keys[:, lo + shift:hi + shift, None, :]
        if hidden is not None and not bool(hidden.any()):
            hidden = None
        if shift == -m:  # the farthest block back: key offset >= query offset
            triangle = torch.ones(block, block, dtype=torch.bool, device=q_b.device).tril(-1)
            hidden = triangle if hidden is None else hidden | triangle
        # the farthest block ahead: key offset <= query offset
        is_causal = shift == (0 if causal else m)
        mask = None if hidden is None else _bias(hidden, q_b.dtype)
        keys = slice(lo + shift, hi + shift)
        calls.append(((lo, hi, shift), q_b[:, lo:hi], k_b[:, keys], v_b[:, keys], is_causal, mask))
    return calls


def _global_call(q_b, k_global, v_global):
    """(queries, global keys, global values) shaped (batch, heads, ...) or None."""
    if k_global is None:
        return None
    batch, heads = k_global.shape[:2]
    return q_b.reshape(batch, heads, -1, q_b.shape[-1]), k_global, v_global


def _merge(q_b, calls, results, with_global: bool):
    """The exact softmax over all calls' keys: lse = logsumexp of the calls' log-sum-exps,
    output = sum of each call's output weighted by exp(its lse - lse)."""
    first_lse = results[0][1]
    # (calls, batch x heads, blocks, block): -inf where a call has no such query block
    lses = torch.full((len(results),) + tuple(q_b.shape[:3]), float("-inf"), dtype=first_lse.dtype,
                      device=q_b.device)
    for index, ((lo, hi, _), *_rest) in enumerate(calls):
        lses[index, :, lo:hi] = results[index][1]
    if with_global:
        lses[-1] = results[-1][1].reshape(q_b.shape[:3])
    lse = torch.logsumexp(lses, dim=0)  # (batch x heads, blocks, block)
    out = torch.zeros(q_b.shape, dtype=first_lse.dtype, device=q_b.device)
    for index, ((lo, hi, _), *_rest) in enumerate(calls):
        weight = torch.exp(lses[index, :, lo:hi] - lse[:, lo:hi])[..., None]
        out[:, lo:hi] += weight * results[index][0]
    if with_global:
        out += torch.exp(lses[-1] - lse)[..., None] * results[-1][0].reshape(q_b.shape)
    return out.to(q_b.dtype), lse
