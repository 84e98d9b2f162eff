"""Sliding-window attention with global keys (Longformer): two exact kernels behind one
signature -- chunked SDPA (any device) and FlexAttention (CUDA) -- and their obviously-correct
dense reference.

Shapes as in `attention_dense`: q, k, v (batch, heads, length, head_dim). A query at position i
sees the keys j with |i - j| <= window (causal: i - window <= j <= i), plus every key marked in
`global_key_mask`, minus padded keys. A query that sees nothing outputs zeros.

The chunked kernel cuts the queries into chunks (half a window by default); a chunk only needs
the keys from `window` before its first query to `window` after its last (a slab of chunk + 2
windows; chunk + 1 window when causal), plus the global keys. One batched SDPA call over all
chunks then costs O(length * window) time and memory instead of O(length^2), and stays exact.

The Flex kernel gives FlexAttention a block-sparse mask built directly from block-level bounds:
each block of 128 queries visits only the key blocks its window (or a global key) touches, and
skips the per-element mask where a whole block is visible. It has no attention dropout.
"""

import functools
import warnings

import torch
import torch.nn.functional as F

from .attention_band_cpu import band_block_size, block_band_attention, can_run_block_band
from .attention_dense import dense_attention, masked_attention_reference, masked_sdpa


def band_mask(q_positions, k_positions, window: int, causal: bool) -> torch.Tensor:
    """True where the key is inside the query's window; any broadcastable position tensors."""
    distance = q_positions[..., :, None] - k_positions[..., None, :]  # (..., queries, keys)
    if causal:
        return (distance >= 0) & (distance <= window)
    return distance.abs() <= window


def sliding_window_attention_reference(q, k, v, *, window: int, key_padding_mask=None,
                                       global_key_mask=None, causal=False, dropout_p=0.0):
    """The dense (length x length) masked softmax with the sliding-window rule spelled out."""
    batch, _, length, _ = q.shape
    positions = torch.arange(length, device=q.device)
    allowed = band_mask(positions, positions, window, causal)[None, None]  # (1, 1, length, length)
    if global_key_mask is not None:
        allowed = allowed | global_key_mask.bool()[:, None, None, :]  # (batch, 1, length, length)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    return masked_attention_reference(q, k, v, allowed.expand(batch, 1, length, length),
                                      dropout_p=dropout_p)


def default_chunk_size(window: int) -> int:
    """Smaller chunks waste less of their slab (chunk + 2 windows of keys for chunk queries) but
    make smaller matrix products; half a window measured fastest on CPU
    (results/cpu-2026-11-22/README.md)."""
    return max(1, window // 2)


KERNELS = ("auto", "chunked", "flex")
# Compiled FlexAttention's lower limit on the head dimension (where seen:
# results/h100-2026-11-22/README.md).
FLEX_MIN_HEAD_DIM = 16


def sliding_window_attention(q, k, v, *, window: int, key_padding_mask=None, global_key_mask=None,
                             causal=False, dropout_p=0.0, kernel: str = "auto",
                             chunk_size: int | None = None, block_masks: dict | None = None):
    """Exact sliding-window (+ global keys) attention in O(length * window); see module doc.

    kernel: "chunked" (batched SDPA over overlapping slabs; any device, dropout), "flex"
    (FlexAttention's block-sparse kernel; CUDA, no dropout, head dimension >= 16) or "auto": flex
    where it can run on CUDA, chunked otherwise. All compute the same function (tested against the
    reference). On CPU without dropout, "chunked" runs as mask-free flash calls over key blocks
    (`attention_band_cpu`: faster) when the window has a divisor in [16, 256] and no chunk_size
    is given; chunk_size (queries per slab) forces the slab form.

    block_masks: a dict shared by the calls of one forward pass with the same masks (the layers
    of a model), where the Flex kernel keeps its block masks instead of rebuilding them per
    layer."""
    _check_arguments(window, causal, global_key_mask, kernel)
    if window >= q.shape[2] - 1:  # the window covers everything: dense attention is the same sum
        return dense_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal,
                               dropout_p=dropout_p)
    if kernel == "flex" and dropout_p > 0:
        raise ValueError(f"kernel='flex' has no attention dropout (dropout_p={dropout_p}); use "
                         "kernel='chunked' or 'auto', or set attention_probs_dropout_prob=0.")
    if kernel == "flex" and not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("kernel='flex' needs CUDA for a backward pass (torch has no FlexAttention "
                         f"backward on {q.device.type}); use kernel='chunked' or 'auto' there, or "
                         "run under torch.no_grad().")
    if kernel == "flex" and q.shape[-1] < FLEX_MIN_HEAD_DIM:
        raise ValueError(f"kernel='flex' needs a head dimension of at least {FLEX_MIN_HEAD_DIM} "
                         f"(compiled FlexAttention), got {q.shape[-1]}; use kernel='chunked' or "
                         "'auto'.")
    if kernel == "flex" or (kernel == "auto" and q.is_cuda and dropout_p == 0
                            and q.shape[-1] >= FLEX_MIN_HEAD_DIM):
        try:
            return sliding_window_attention_flex(q, k, v, window=window,
                                                 key_padding_mask=key_padding_mask,
                                                 global_key_mask=global_key_mask, causal=causal,
                                                 block_masks=block_masks)
        except FlexRecompileLimit as error:
            if kernel == "flex":
                raise
            _warn_once(f"{error} Using the chunked kernel (the same attention, exact) for new "
                       "shapes.")
    if chunk_size is None and can_run_block_band(q, dropout_p):
        block = band_block_size(window)
        if block is not None:
            return _cpu_block_band(q, k, v, window, key_padding_mask, global_key_mask, causal,
                                   block)
    return _chunked_attention(q, k, v, window, key_padding_mask, global_key_mask, causal,
                              dropout_p, chunk_size)


def _cpu_block_band(q, k, v, window, key_padding_mask, global_key_mask, causal, block):
    key_ok = None if key_padding_mask is None else key_padding_mask.bool()  # (batch, length)
    index = valid = None
    if global_key_mask is not None:
        # (batch, most globals in a row): the global keys that are not padding
        index, valid = global_indices(global_key_mask.bool() if key_ok is None
                                      else global_key_mask.bool() & key_ok)
    return block_band_attention(q, k, v, window=window, block=block, key_ok=key_ok,
                                global_index=index, global_valid=valid, causal=causal)


@functools.cache
def _warn_once(message: str):
    warnings.warn(message, stacklevel=3)


def _check_arguments(window, causal, global_key_mask, kernel="auto"):
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (one-sided number of neighbours).")
    if causal and global_key_mask is not None:
        raise ValueError("global_key_mask with causal=True would let queries see future global "
                         "keys; causal sliding-window attention takes no global keys.")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: use one of {KERNELS}")


def _chunked_attention(q, k, v, window, key_padding_mask, global_key_mask, causal, dropout_p,
                       chunk_size):
    """The chunked kernel (module doc)."""
    batch, heads, length, dim = q.shape
    chunk = chunk_size or default_chunk_size(window)
    left, right = window, 0 if causal else window
    chunks = -(-length // chunk)
    padded = chunks * chunk

    key_ok = torch.ones(batch, length, dtype=torch.bool, device=q.device)  # (batch, length)
    if key_padding_mask is not None:
        key_ok = key_ok & key_padding_mask.bool()
    is_global = None if global_key_mask is None else global_key_mask.bool() & key_ok
    local_ok = key_ok if is_global is None else key_ok & ~is_global  # globals get their own column

    slab = chunk + left + right
    # (batch, heads, chunks, slab, dim): each chunk's keys, from `left` before to `right` after
    k_slabs, v_slabs = (_slabs(x, left, right + padded - length, slab, chunk) for x in (k, v))
    slab_ok = F.pad(local_ok, (left, right + padded - length)).unfold(1, slab, chunk)
    # slab_ok: (batch, chunks, slab)
    # Query a of a chunk and key b of its slab are (a + left) - b apart, the same in every chunk.
    offsets = torch.arange(chunk, device=q.device)
    band = band_mask(offsets + left, torch.arange(slab, device=q.device), window, causal)
    # band: (chunk, slab)
    mask = band & slab_ok[:, :, None, :]  # (batch, chunks, chunk, slab)

    if is_global is not None and bool(is_global.any()):  # each chunk: its slab, then the globals
        k_slabs, v_slabs, mask = _append_global_keys(k, v, is_global, k_slabs, v_slabs, mask)

    # (batch, heads, chunks, chunk, dim)
    q_chunks = F.pad(q, (0, 0, 0, padded - length)).view(batch, heads, chunks, chunk, dim)
    out = masked_sdpa(*(_fold_chunks(x) for x in (q_chunks, k_slabs, v_slabs)),
                      mask.reshape(batch * chunks, 1, chunk, -1), dropout_p=dropout_p)
    # out: (batch * chunks, heads, chunk, dim) -> (batch, heads, padded, dim)
    out = (out.view(batch, chunks, heads, chunk, dim).transpose(1, 2)
           .reshape(batch, heads, padded, dim))
    return out[:, :, :length]


def _slabs(x, pad_left: int, pad_right: int, slab: int, step: int):
    """(batch, heads, length, dim) -> (batch, heads, chunks, slab, dim): overlapping key ranges."""
    x = F.pad(x, (0, 0, pad_left, pad_right))
    return x.unfold(2, slab, step).transpose(-1, -2)


def _fold_chunks(x):
    """(batch, heads, chunks, n, dim) -> (batch * chunks, heads, n, dim) for one SDPA call."""
    batch, heads, chunks, n, dim = x.shape
    return x.transpose(1, 2).reshape(batch * chunks, heads, n, dim)


def _append_global_keys(k, v, is_global, k_slabs, v_slabs, mask):
    """Adds the global keys (the same for every chunk) after each chunk's slab."""
    index, valid = global_indices(is_global)
    chunks, chunk = mask.shape[1], mask.shape[2]
    # (batch, heads, chunks, most globals, dim): every chunk sees the same global keys
    k_global, v_global = (gather_positions(x, index)[:, :, None].expand(-1, -1, chunks, -1, -1)
                          for x in (k, v))
    # (batch, chunks, chunk, most globals)
    global_ok = valid[:, None, None, :].expand(-1, chunks, chunk, -1)
    return (torch.cat([k_slabs, k_global], dim=3), torch.cat([v_slabs, v_global], dim=3),
            torch.cat([mask, global_ok], dim=3))


def global_indices(is_global):
    """(batch, length) bool -> (index, valid), both (batch, most globals in a row): the positions
    of each row's global tokens in order, padded with position 0 marked invalid."""
    counts = is_global.sum(dim=1)
    most = int(counts.max()) if counts.numel() else 0
    # Sorting puts a row's global positions first, in order (stable sort on descending flags).
    order = torch.sort(is_global.to(torch.int8), dim=1, descending=True,
                       stable=True).indices[:, :most]  # (batch, most)
    valid = torch.arange(most, device=is_global.device)[None, :] < counts[:, None]
    return order * valid, valid


def gather_positions(x, index):
    """x (batch, heads, length, dim), index (batch, n) -> (batch, heads, n, dim)."""
    batch, heads, _, dim = x.shape
    return x.gather(2, index[:, None, :, None].expand(batch, heads, -1, dim))


def sliding_window_decode(q, k, v, *, window: int, key_padding_mask=None, dropout_p=0.0):
    """Causal sliding-window attention of the last q_len tokens, whose keys and values (cache
    included) are k, v (batch, heads, k_len, dim); only the last window + q_len keys can be
    seen."""
    q_len, k_len = q.shape[2], k.shape[2]
    first = max(0, k_len - q_len - window)
    k, v = k[:, :, first:], v[:, :, first:]  # (batch, heads, k_len - first, dim)
    k_positions = torch.arange(first, k_len, device=q.device)
    mask = band_mask(torch.arange(k_len - q_len, k_len, device=q.device), k_positions, window,
                     causal=True)[None, None]  # (1, 1, q_len, k_len - first)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool()[:, first:][:, None, None, :]
    return masked_sdpa(q, k, v, mask, dropout_p=dropout_p)


FLEX_BLOCK_SIZE = 128  # FlexAttention's tile: the block-sparse mask is built at this granularity


def sliding_window_attention_flex(q, k, v, *, window: int, key_padding_mask=None,
                                  global_key_mask=None, causal=False,
                                  block_size: int = FLEX_BLOCK_SIZE,
                                  block_masks: dict | None = None):
    """The same attention through FlexAttention's block-sparse kernel: O(length * window) on CUDA,
    forward and backward, no dropout. On CUDA it runs compiled (`torch.compile(flex_attention)`,
    compiled once per shape); elsewhere eagerly -- torch has no FlexAttention backward on CPU
    (`sliding_window_attention` refuses one), so there it serves the forward tests of the block
    mask only. A query that sees no key comes out as zeros, the convention of the other kernels
    (tested)."""
    _check_arguments(window, causal, global_key_mask)
    key = (window, causal, block_size, q.shape[0], q.shape[2])
    block_mask = None if block_masks is None else block_masks.get(key)
    if block_mask is None:
        block_mask = _block_mask_for(q, window, key_padding_mask, global_key_mask, causal,
                                     block_size)
        if block_masks is not None:
            block_masks[key] = block_mask
    return _run_flex(q, k, v, block_mask)


def _block_mask_for(q, window, key_padding_mask, global_key_mask, causal, block_size):
    if key_padding_mask is None and global_key_mask is None:
        # the band alone: the same for every batch
        return _band_block_mask(q.shape[2], window, causal, block_size, q.device)
    batch, _, length, _ = q.shape
    key_ok = (torch.ones(batch, length, dtype=torch.bool, device=q.device)
              if key_padding_mask is None else key_padding_mask.bool())  # (batch, length)
    is_global = None if global_key_mask is None else global_key_mask.bool() & key_ok
    return sliding_window_block_mask(key_ok, is_global, window=window, causal=causal,
                                     block_size=block_size)


def sliding_window_block_mask(key_ok, is_global, *, window: int, causal: bool, block_size: int):
    """FlexAttention's BlockMask for the sliding-window rule, built from block-level bounds (no
    length x length mask is ever made): for each (row, query block), the key blocks where every
    pair is visible ("full": the kernel skips the mask function) and those where some are
    ("partial": the mask function decides per element). Key blocks holding a global key are
    partial for every query block."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, length = key_ok.shape
    blocks = -(-length // block_size)
    # Padded to whole blocks with False, so the mask function never indexes past the end.
    key_ok = F.pad(key_ok, (0, blocks * block_size - length))  # (batch, blocks * block_size)
    is_global = (torch.zeros_like(key_ok) if is_global is None
                 else F.pad(is_global, (0, blocks * block_size - length)))
    block_ok = key_ok.view(batch, blocks, block_size)
    # (query blocks, key blocks) each
    band_some, band_all = _block_band(blocks, block_size, window, causal, key_ok.device)
    # (batch, query blocks, key blocks) each
    full = band_all[None] & block_ok.all(dim=-1)[:, None, :]
    some = ((band_some[None] & block_ok.any(dim=-1)[:, None, :])
            | is_global.view(batch, blocks, -1).any(dim=-1)[:, None, :])  # key blocks with globals
    partial = some & ~full

    def visible(b, h, query, key):
        distance = query - key
        # abs() rather than a comparison with -window: torch's compiler failed to lower a negated
        # captured integer once it had made the window a dynamic size
        # (results/h100-2026-11-22/README.md).
        in_band = (distance >= 0) & (distance <= window) if causal else distance.abs() <= window
        return (in_band | is_global[b, key]) & key_ok[b, key]

    partial_count, partial_index = _block_lists(partial)
    full_count, full_index = _block_lists(full)
    return BlockMask.from_kv_blocks(partial_count, partial_index, full_count, full_index,
                                    BLOCK_SIZE=block_size, mask_mod=visible,
                                    seq_lengths=(length, length))


@functools.lru_cache(maxsize=32)
def _band_block_mask(length: int, window: int, causal: bool, block_size: int, device):
    """The block mask of a batch without padding or global tokens, cached across forward passes:
    it depends on the length and window only (batch 1 broadcasts over rows), and its mask
    function captures no tensors, so the kernel's partial blocks need no memory reads."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-length // block_size)
    band_some, band_all = _block_band(blocks, block_size, window, causal, device)
    # The last block's keys past the end are not visible: it is full only when the length fills
    # it.
    last_full = length % block_size == 0
    band_all = band_all & torch.tensor([True] * (blocks - 1) + [last_full],
                                       device=device)[None, :]  # (query blocks, key blocks)
    partial_count, partial_index = _block_lists((band_some & ~band_all)[None])
    full_count, full_index = _block_lists(band_all[None])

    def in_band(b, h, query, key):
        distance = query - key
        return (distance >= 0) & (distance <= window) if causal else distance.abs() <= window

    return BlockMask.from_kv_blocks(partial_count, partial_index, full_count, full_index,
                                    BLOCK_SIZE=block_size, mask_mod=in_band,
                                    seq_lengths=(length, length))


def _block_band(blocks: int, block_size: int, window: int, causal: bool, device):
    """(blocks, blocks) bools: whether some / every (query, key) pair of two blocks is in the band.
    Query-key distances between query block a and key block b span [lowest, highest]."""
    first = torch.arange(blocks, device=device) * block_size  # (blocks,) first position of each
    # (query blocks, key blocks): the smallest and largest query - key distance of each pair
    lowest = first[:, None] - (first[None, :] + block_size - 1)
    highest = (first[:, None] + block_size - 1) - first[None, :]
    floor = 0 if causal else -window
    return (lowest <= window) & (highest >= floor), (lowest >= floor) & (highest <= window)


def _block_lists(chosen):
    """(batch, query blocks, key blocks) bools -> FlexAttention's (count, indices) with a head
    axis of 1: how many key blocks each query block visits, and which (chosen ones first)."""
    count = chosen.sum(dim=-1, dtype=torch.int32)
    order = torch.sort(chosen.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return count[:, None], order.to(torch.int32)[:, None]


class FlexRecompileLimit(RuntimeError):
    """torch.compile reached its recompile limit for FlexAttention (too many distinct shapes):
    past it, torch would silently run FlexAttention eagerly, with length x length memory."""


@functools.cache
def _compiled_flex_attention():
    """Static shapes: the kernel compiled for dynamic shapes ran several times slower (measured:
    results/h100-2026-11-22/README.md). Each new (batch, length) compiles once."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


FLEX_RECOMPILE_LIMIT = 64  # distinct shapes compiled before refusing (torch's default limit is 8)


def _run_flex(q, k, v, block_mask):
    """Compiled on CUDA (the fused block-sparse kernel); eager elsewhere (torch's unfused
    reference, forward only on CPU) and inside a caller's own torch.compile region (which
    compiles it)."""
    from torch.nn.attention.flex_attention import flex_attention

    if not q.is_cuda or torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask)
    try:
        # Fail instead of torch's silent fallback to the eager O(length^2) FlexAttention.
        limit = max(torch._dynamo.config.recompile_limit, FLEX_RECOMPILE_LIMIT)
        # q, k, v arrive in the dtype autocast gave the projections; the kernel computes in it.
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=limit), \
                torch.autocast(q.device.type, enabled=False):
            return _compiled_flex_attention()(q, k, v, block_mask=block_mask)
    except torch._dynamo.exc.FailOnRecompileLimitHit as error:
        raise FlexRecompileLimit(
            "FlexAttention hit torch.compile's recompile limit "
            "(torch._dynamo.config.recompile_limit="
            f"{torch._dynamo.config.recompile_limit}) after too many distinct input shapes; raise "
            "that limit or pad inputs to a few fixed lengths.") from error
