"""Sliding-window attention with global keys (Longformer): the chunked exact kernel and its
obviously-correct dense reference.

Shapes as in `attention_dense`: q, k, v (batch, heads, length, head_dim). A query at position i
sees the keys j with |i - j| <= window (causal: i - window <= j <= i), plus every key marked in
`global_key_mask`, minus padded keys. A query that sees nothing outputs zeros.

The chunked kernel cuts the queries into chunks (half a window by default); a chunk only needs
the keys from `window` before its first query to `window` after its last (a slab of chunk + 2
windows; chunk + 1 window when causal), plus the global keys. One batched SDPA call over all
chunks then costs O(length * window) time and memory instead of O(length^2), and stays exact.
"""

import torch
import torch.nn.functional as F

from .attention_dense import dense_attention, masked_attention_reference, masked_sdpa


def band_mask(q_positions, k_positions, window: int, causal: bool) -> torch.Tensor:
    """True where the key is inside the query's window; any broadcastable position tensors."""
    distance = q_positions[..., :, None] - k_positions[..., None, :]
    if causal:
        return (distance >= 0) & (distance <= window)
    return distance.abs() <= window


def sliding_window_attention_reference(q, k, v, *, window: int, key_padding_mask=None,
                                       global_key_mask=None, causal=False, dropout_p=0.0):
    """The dense (length x length) masked softmax with the sliding-window rule spelled out."""
    batch, _, length, _ = q.shape
    positions = torch.arange(length, device=q.device)
    allowed = band_mask(positions, positions, window, causal)[None, None]
    if global_key_mask is not None:
        allowed = allowed | global_key_mask.bool()[:, None, None, :]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    return masked_attention_reference(q, k, v, allowed.expand(batch, 1, length, length), dropout_p=dropout_p)


def default_chunk_size(window: int) -> int:
    """Smaller chunks waste less of their slab (chunk + 2 windows of keys for chunk queries) but
    make smaller matrix products; half a window measured best on CPU (see the benchmark)."""
    return max(1, window // 2)


def sliding_window_attention(q, k, v, *, window: int, key_padding_mask=None, global_key_mask=None,
                             causal=False, dropout_p=0.0, chunk_size: int | None = None):
    """Exact sliding-window (+ global keys) attention in O(length * window); see module doc."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (one-sided number of neighbours).")
    if causal and global_key_mask is not None:
        raise ValueError("global_key_mask with causal=True would let queries see future global keys; "
                         "causal sliding-window attention takes no global keys.")
    length = q.shape[2]
    if window >= length - 1:  # the window covers everything: dense attention is the same sum
        return dense_attention(q, k, v, key_padding_mask=key_padding_mask, causal=causal, dropout_p=dropout_p)
    batch, heads, _, dim = q.shape
    chunk = chunk_size or default_chunk_size(window)
    left, right = window, 0 if causal else window
    chunks = -(-length // chunk)
    padded = chunks * chunk

    key_ok = torch.ones(batch, length, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        key_ok = key_ok & key_padding_mask.bool()
    is_global = None if global_key_mask is None else global_key_mask.bool() & key_ok
    local_ok = key_ok if is_global is None else key_ok & ~is_global  # globals get their own column

    slab = chunk + left + right
    k_slabs, v_slabs = (_slabs(x, left, right + padded - length, slab, chunk) for x in (k, v))
    slab_ok = F.pad(local_ok, (left, right + padded - length)).unfold(1, slab, chunk)  # (batch, chunks, slab)
    # Query a of a chunk and key b of its slab are (a + left) - b apart, the same in every chunk.
    offsets = torch.arange(chunk, device=q.device)
    band = band_mask(offsets + left, torch.arange(slab, device=q.device), window, causal)  # (chunk, slab)
    mask = band & slab_ok[:, :, None, :]
    # mask: (batch, chunks, chunk, slab); k_slabs, v_slabs: (batch, heads, chunks, slab, dim)

    if is_global is not None and bool(is_global.any()):
        k_slabs, v_slabs, mask = _append_global_keys(k, v, is_global, k_slabs, v_slabs, mask)

    q_chunks = F.pad(q, (0, 0, 0, padded - length)).view(batch, heads, chunks, chunk, dim)
    out = masked_sdpa(*(_fold_chunks(x) for x in (q_chunks, k_slabs, v_slabs)),
                      mask.reshape(batch * chunks, 1, chunk, -1), dropout_p=dropout_p)
    out = out.view(batch, chunks, heads, chunk, dim).transpose(1, 2).reshape(batch, heads, padded, dim)
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
    k_global, v_global = (gather_positions(x, index)[:, :, None].expand(-1, -1, chunks, -1, -1) for x in (k, v))
    global_ok = valid[:, None, None, :].expand(-1, chunks, chunk, -1)
    return (torch.cat([k_slabs, k_global], dim=3), torch.cat([v_slabs, v_global], dim=3),
            torch.cat([mask, global_ok], dim=3))


def global_indices(is_global):
    """(batch, length) bool -> (index, valid), both (batch, most globals in a row): the positions
    of each row's global tokens in order, padded with position 0 marked invalid."""
    counts = is_global.sum(dim=1)
    most = int(counts.max()) if counts.numel() else 0
    # Sorting puts a row's global positions first, in order (stable sort on descending flags).
    order = torch.sort(is_global.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :most]
    valid = torch.arange(most, device=is_global.device)[None, :] < counts[:, None]
    return order * valid, valid


def gather_positions(x, index):
    """x (batch, heads, length, dim), index (batch, n) -> (batch, heads, n, dim)."""
    batch, heads, _, dim = x.shape
    return x.gather(2, index[:, None, :, None].expand(batch, heads, -1, dim))


def sliding_window_decode(q, k, v, *, window: int, key_padding_mask=None, dropout_p=0.0):
    """Causal sliding-window attention of the last q_len tokens, whose keys and values (cache
    included) are k, v (batch, heads, k_len, dim); only the last window + q_len keys can be seen."""
    q_len, k_len = q.shape[2], k.shape[2]
    first = max(0, k_len - q_len - window)
    k, v = k[:, :, first:], v[:, :, first:]
    k_positions = torch.arange(first, k_len, device=q.device)
    mask = band_mask(torch.arange(k_len - q_len, k_len, device=q.device), k_positions, window, causal=True)[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool()[:, first:][:, None, None, :]
    return masked_sdpa(q, k, v, mask, dropout_p=dropout_p)


def sliding_window_attention_flex(q, k, v, *, window: int, key_padding_mask=None, global_key_mask=None,
                                  causal=False, block_size: int = 128):
    """The same attention through FlexAttention's block-sparse kernel, for CUDA (wrap in
    torch.compile there). On CPU, torch 2.13 runs it eagerly and forward only: the tests check
    it against the reference there; backward and speed need a GPU (not yet measured)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, _, length, _ = q.shape
    key_ok = (torch.ones(batch, length, dtype=torch.bool, device=q.device) if key_padding_mask is None
              else key_padding_mask.bool())
    is_global = (torch.zeros_like(key_ok) if global_key_mask is None else global_key_mask.bool()) & key_ok

    def visible(b, h, query, key):
        distance = query - key
        in_band = (distance >= 0) & (distance <= window) if causal else distance.abs() <= window
        return (in_band | is_global[b, key]) & key_ok[b, key]

    block_mask = create_block_mask(visible, B=batch, H=None, Q_LEN=length, KV_LEN=length, device=q.device,
                                   BLOCK_SIZE=block_size)
    # A query that sees no key comes out as zeros, the convention of the other kernels (tested).
    return flex_attention(q, k, v, block_mask=block_mask)
