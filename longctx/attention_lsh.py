"""LSH self-attention (Reformer, Kitaev et al. 2020): the chunked kernel and its dense reference,
numerically as transformers' `ReformerModel` (`LSHSelfAttention`) computes it; at the end, the
Reformer's other layer type, local chunked attention (`local_attention`, and its reference).

Shapes: qk, v (batch, heads, length, head_dim). Queries and keys are shared: the queries are
`qk` itself, the keys are `qk` length-normalised (x / sqrt(mean(x^2) + 1e-6)) and divided by
sqrt(head_dim); the dot products are not scaled further.

Hashing (`lsh_hash`): per head and per round, the vectors are multiplied by a random matrix
R (head_dim, num_buckets / 2) and the bucket is argmax([xR, -xR]). A factorised `num_buckets`
(b1, b2, ...) hashes with a slice of R per factor and combines the ids as b_1 + b1 * (b_2 + ...).
When `key_padding_mask` pads anything in the batch, padded positions get an extra last bucket.
Round r adds r * (buckets per round) so rounds never share ids; the ids of all rounds are laid
end to end: (batch, heads, num_hashes * length).

Attention (`lsh_attention`): sort the num_hashes * length entries by (bucket id, position) -
round by round, since the ids of round r are all below those of round r + 1 - and cut the sorted
sequence into chunks of `chunk_length`. A query sees the keys of its chunk and of the
`num_chunks_before` / `num_chunks_after` chunks around it, circularly over the whole
num_hashes * length sorted sequence (as transformers does: the first chunk of round r looks at
the last chunk of round r - 1, and a key may appear in a neighbourhood more than once, which
counts it more than once). Keys that are padding or (causal) after the query get the score
-1e9; the query's own position gets -1e5, so it is only attended when nothing else is visible
(padded queries therefore output roughly their own value, not zeros - transformers' rule, not the
longctx "zeros" convention). Each round's output is unsorted, and the rounds are combined with
weights softmax_r(logsumexp of the round's scores). A sequence no longer than `chunk_length` is
not hashed: plain shared-QK attention over all positions with the same masks (transformers'
`do_standard_self_attention`); `num_hashes` then does not matter.
"""

import math

import torch
import torch.nn.functional as F

MASK_VALUE = {torch.float16: -1e4}  # transformers' values; every other dtype uses the float32 ones
SELF_MASK_VALUE = {torch.float16: -1e3}
DEFAULT_MASK_VALUE, DEFAULT_SELF_MASK_VALUE = -1e9, -1e5


def _bucket_factors(num_buckets) -> list[int]:
    factors = [num_buckets] if isinstance(num_buckets, int) else list(num_buckets)
    if not factors or any(not isinstance(f, int) or f < 2 or f % 2 for f in factors):
        raise ValueError(f"num_buckets={num_buckets!r} must be an even int >= 2 or a sequence of "
                         "them (a factorised hash, e.g. (4, 8) for 32 buckets).")
    return factors


def rotation_shape(heads: int, head_dim: int, num_buckets,
                   num_hashes: int) -> tuple[int, int, int, int]:
    """Shape of the random rotations: (heads, head_dim, num_hashes, sum(factors) // 2)."""
    return heads, head_dim, num_hashes, sum(_bucket_factors(num_buckets)) // 2


def random_rotations(heads: int, head_dim: int, num_buckets, num_hashes: int, *, seed=None,
                     dtype=torch.float32, device=None) -> torch.Tensor:
    """The rotations transformers draws: after `torch.manual_seed(hash_seed)`, one `torch.randn`
    of `rotation_shape(...)` in the vectors' dtype and device. Here a private generator seeded the
    same way draws the same numbers without touching the global RNG; seed None draws from it."""
    shape = rotation_shape(heads, head_dim, num_buckets, num_hashes)
    generator = None
    if seed is not None:
        generator = torch.Generator(
            device=device if device is not None else "cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def lsh_hash(vectors, num_buckets, num_hashes: int, *, seed=None, rotations=None,
             key_padding_mask=None):
    """Bucket ids (batch, heads, num_hashes * length), round offsets included; see module doc.

    `rotations` (heads, head_dim, num_hashes, sum(factors) // 2) pins the hash; otherwise they are
    drawn by `random_rotations` with `seed` (transformers' `hash_seed`)."""
    if num_hashes < 1:
        raise ValueError(f"num_hashes={num_hashes} must be >= 1.")
    if seed is not None and rotations is not None:
        raise ValueError("Pass either seed or rotations, not both (rotations already fix the "
                         "hash).")
    factors = _bucket_factors(num_buckets)
    batch, heads, length, dim = vectors.shape
    vectors = vectors.detach()
    if rotations is None:
        rotations = random_rotations(heads, dim, num_buckets, num_hashes, seed=seed,
                                     dtype=vectors.dtype, device=vectors.device)
    expected = rotation_shape(heads, dim, num_buckets, num_hashes)
    if tuple(rotations.shape) != expected:
        raise ValueError(f"rotations have shape {tuple(rotations.shape)}, expected {expected} "
                         "(heads, head_dim, num_hashes, sum of bucket factors // 2).")
    # (batch, heads, num_hashes, length, sum(factors) // 2)
    rotated = torch.einsum("bhld,hdrk->bhrlk", vectors, rotations.to(vectors))
    buckets, start, stride = None, 0, 1
    for factor in factors:
        part = rotated[..., start:start + factor // 2]  # (batch, heads, rounds, length, factor / 2)
        ids = torch.cat([part, -part], dim=-1).argmax(dim=-1)  # (batch, heads, rounds, length)
        buckets = ids if buckets is None else buckets + stride * ids
        start, stride = start + factor // 2, stride * factor
    per_round = stride
    if key_padding_mask is not None and not bool(key_padding_mask.bool().all()):
        per_round += 1  # an extra bucket, the last, for the padded positions
        buckets = torch.where(key_padding_mask.bool()[:, None, None, :], buckets, per_round - 1)
    offsets = torch.arange(num_hashes, device=buckets.device)[:, None] * per_round  # (rounds, 1)
    return (buckets + offsets).flatten(2, 3)  # (batch, heads, num_hashes * length)


def length_normalised_keys(qk):
    """transformers' `_len_and_dim_norm`: x * rsqrt(mean(x^2) + 1e-6) / sqrt(head_dim)."""
    normed = qk * torch.rsqrt(qk.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
    return normed / math.sqrt(qk.shape[-1])


def _check_chunking(length: int, chunk_length: int, num_chunks_before: int,
                    num_chunks_after: int, dropout_p):
    """The checks both chunked kernels (LSH and local) share."""
    if chunk_length < 1:
        raise ValueError(f"chunk_length={chunk_length} must be >= 1.")
    if num_chunks_before < 0 or num_chunks_after < 0:
        raise ValueError(f"num_chunks_before={num_chunks_before} and "
                         f"num_chunks_after={num_chunks_after} must be >= 0.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p} must be in [0, 1).")
    if length > chunk_length and length % chunk_length:
        raise ValueError(f"length={length} is not a multiple of chunk_length={chunk_length}: pad "
                         f"the sequence to {-(-length // chunk_length) * chunk_length} (and mark "
                         "the padding in key_padding_mask), as ReformerModel does.")


def _check(qk, v, num_hashes, num_buckets, chunk_length, num_chunks_before, num_chunks_after,
           dropout_p):
    if qk.dim() != 4 or v.shape != qk.shape:
        raise ValueError(f"qk and v must both be (batch, heads, length, head_dim); got "
                         f"{tuple(qk.shape)} and {tuple(v.shape)}.")
    if num_hashes < 1:
        raise ValueError(f"num_hashes={num_hashes} must be >= 1.")
    _bucket_factors(num_buckets)
    _check_chunking(qk.shape[2], chunk_length, num_chunks_before, num_chunks_after, dropout_p)


def _check_buckets(buckets, batch: int, heads: int, entries: int):
    if tuple(buckets.shape) != (batch, heads, entries):
        raise ValueError(f"buckets have shape {tuple(buckets.shape)}, expected (batch, heads, "
                         f"num_hashes * length) = {(batch, heads, entries)}: pass the ids lsh_hash "
                         "returned for these vectors.")


def _mask_values(dtype):
    return (MASK_VALUE.get(dtype, DEFAULT_MASK_VALUE),
            SELF_MASK_VALUE.get(dtype, DEFAULT_SELF_MASK_VALUE))


def _without_hidden_keys(dots, q_pos, k_pos, key_ok, causal):
    """dots (..., n, m) with padded keys (key_ok (..., m) False) and, when causal, keys after the
    query at the mask value (-1e9 in float32, transformers'). q_pos (..., n), k_pos (..., m)."""
    allowed = None if key_ok is None else key_ok[..., None, :]  # (..., 1, m)
    if causal:
        not_future = q_pos[..., :, None] >= k_pos[..., None, :]  # (..., n, m)
        allowed = not_future if allowed is None else allowed & not_future
    if allowed is None:
        return dots
    return dots.masked_fill(~allowed, _mask_values(dots.dtype)[0])


def _masked_scores(dots, q_pos, k_pos, key_ok, causal):
    """transformers' LSH masking: hidden keys as above, then -1e5 for the query itself."""
    dots = _without_hidden_keys(dots, q_pos, k_pos, key_ok, causal)
    is_self = q_pos[..., :, None] == k_pos[..., None, :]  # (..., n, m)
    return dots.masked_fill(is_self, _mask_values(dots.dtype)[1])


def _full_attention(qk, v, causal, key_padding_mask, dropout_p):
    """Sequences no longer than a chunk: shared-QK attention over every position (no hashing)."""
    length = qk.shape[2]
    positions = torch.arange(length, device=qk.device)
    dots = qk @ length_normalised_keys(qk).transpose(-1, -2)  # (batch, heads, length, length)
    key_ok = None if key_padding_mask is None else key_padding_mask.bool()[:, None, :]
    scores = _masked_scores(dots, positions, positions, key_ok, causal)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v  # (batch, heads, length, dim)


def _unsort(x, order):
    """x (batch, heads, entries, width) in sorted order -> the original order: the entry that came
    from `order[s]` was at sorted place s. A scatter, whose backward is a gather."""
    index = order[..., None].expand(-1, -1, -1, x.shape[-1])  # (batch, heads, entries, width)
    return torch.empty_like(x).scatter(2, index, x)


def _look_adjacent(x, before: int, after: int):
    """x (batch, heads, chunks, chunk, ...) -> (batch, heads, chunks, (before + 1 + after) * chunk,
    ...): the chunk and its neighbours, circularly, concatenated along dim 3 in the order
    -before ... +after (transformers' `_look_adjacent`)."""
    if before == 0 and after == 0:
        return x
    return torch.cat([torch.roll(x, shifts=-i, dims=2) for i in range(-before, after + 1)], dim=3)


def lsh_attention(qk, v, *, num_hashes: int, num_buckets, chunk_length: int,
                  num_chunks_before: int = 1, num_chunks_after: int = 0, causal: bool = False,
                  key_padding_mask=None, rotations=None, seed=None, dropout_p: float = 0.0,
                  buckets=None):
    """Chunked LSH attention in O(num_hashes * length * chunk_length); see the module doc.

    `buckets`: the ids `lsh_hash` gave these vectors, when already known (a reversible layer
    recomputing its forward must reuse the forward's hash, not draw a new one)."""
    _check(qk, v, num_hashes, num_buckets, chunk_length, num_chunks_before, num_chunks_after,
           dropout_p)
    batch, heads, length, dim = qk.shape
    if length <= chunk_length:
        return _full_attention(qk, v, causal, key_padding_mask, dropout_p)
    if buckets is None:
        buckets = lsh_hash(qk, num_buckets, num_hashes, seed=seed, rotations=rotations,
                           key_padding_mask=key_padding_mask)
    _check_buckets(buckets, batch, heads, num_hashes * length)
    # Sort by (bucket, position): a stable sort of the ids laid end to end (round offsets keep
    # rounds apart).
    order = torch.sort(buckets, dim=-1, stable=True).indices  # (batch, heads, num_hashes * length)
    positions = order % length  # (batch, heads, num_hashes * length): each sorted entry's token
    chunks = num_hashes * length // chunk_length

    def sorted_chunks(x):  # (batch, heads, length, dim) -> (batch, heads, chunks, chunk, dim)
        gathered = x.gather(2, positions[..., None].expand(-1, -1, -1, dim))
        return gathered.view(batch, heads, chunks, chunk_length, dim)

    # near = (num_chunks_before + 1 + num_chunks_after) * chunk_length keys per chunk
    q_sorted = sorted_chunks(qk)  # (batch, heads, chunks, chunk, dim)
    # The key normalisation is per vector: normalising after the sort saves a gather.
    k_near = _look_adjacent(length_normalised_keys(q_sorted), num_chunks_before,
                            num_chunks_after)  # (batch, heads, chunks, near, dim)
    v_near = _look_adjacent(sorted_chunks(v), num_chunks_before, num_chunks_after)
    q_pos = positions.view(batch, heads, chunks, chunk_length)
    # (batch, heads, chunks, near)
    k_pos = _look_adjacent(q_pos, num_chunks_before, num_chunks_after)
    key_ok = None
    if key_padding_mask is not None:
        key_ok = key_padding_mask.bool()[:, None, None, :].expand(-1, heads, chunks, -1)
        key_ok = key_ok.gather(3, k_pos)  # (batch, heads, chunks, near)
    # (batch, heads, chunks, chunk, near)
    scores = _masked_scores(q_sorted @ k_near.transpose(-1, -2), q_pos, k_pos, key_ok, causal)
    if num_hashes == 1:  # no rounds to combine: the logsumexp is not needed
        probs = torch.softmax(scores, dim=-1)
        out = ((F.dropout(probs, dropout_p) if dropout_p else probs)
               @ v_near).view(batch, heads, length, dim)
        return _unsort(out, order)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (batch, heads, chunks, chunk, 1)
    probs = torch.exp(scores - lse)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    out = _unsort((probs @ v_near).view(batch, heads, num_hashes * length, dim), order)
    lse = _unsort(lse.view(batch, heads, num_hashes * length, 1), order)
    out = out.view(batch, heads, num_hashes, length, dim)
    lse = lse.view(batch, heads, num_hashes, length)
    # exp(lse - logsumexp(lse)) rather than softmax: the same rounding as transformers in float32,
    # which matters where a round only sees the query itself (lse near -1e5, float32 ulp ~0.008).
    # weights: (batch, heads, num_hashes, length, 1), each round's share of a token's output
    weights = torch.exp(lse - torch.logsumexp(lse, dim=2, keepdim=True))[..., None]
    return (out * weights).sum(dim=2)  # (batch, heads, length, dim)


def lsh_attention_reference(qk, v, *, num_hashes: int, num_buckets, chunk_length: int,
                            num_chunks_before: int = 1, num_chunks_after: int = 0,
                            causal: bool = False, key_padding_mask=None, rotations=None,
                            seed=None, dropout_p: float = 0.0, buckets=None,
                            combine_rounds: bool = False):
    """Dense O(length^2) version: per round, how many times each key lies in each query's chunk
    neighbourhood (from the positions' ranks in the sort), a softmax over the full length with
    those multiplicities and transformers' mask values, and the logsumexp-weighted rounds.
    Returns (output, per-round attention weights (batch, heads, rounds, length, length)), or with
    `combine_rounds` the weights the output actually used: the rounds' weighted sum (batch, heads,
    length, length)."""
    _check(qk, v, num_hashes, num_buckets, chunk_length, num_chunks_before, num_chunks_after,
           dropout_p)
    batch, heads, length, dim = qk.shape
    positions = torch.arange(length, device=qk.device)
    if length <= chunk_length:
        rounds = 1
        counts = torch.ones(batch, heads, 1, length, length, dtype=qk.dtype, device=qk.device)
    else:
        rounds = num_hashes
        if buckets is None:
            buckets = lsh_hash(qk, num_buckets, num_hashes, seed=seed, rotations=rotations,
                               key_padding_mask=key_padding_mask)
        _check_buckets(buckets, batch, heads, num_hashes * length)
        buckets = buckets.view(batch, heads, rounds, length)
        # rank[r, i]: place of (round r, position i) in the sequence of all rounds sorted by
        # (bucket, position). before: (batch, heads, rounds, length, length), whether token j
        # sorts before token i in round r.
        before = (buckets[..., None, :] < buckets[..., :, None]) | (
            (buckets[..., None, :] == buckets[..., :, None])
            & (positions[None, :] < positions[:, None]))
        rank = before.sum(dim=-1) + torch.arange(rounds, device=qk.device)[:, None] * length
        chunk_of = rank // chunk_length  # (batch, heads, rounds, length)
        total_chunks = rounds * length // chunk_length
        counts = torch.zeros(batch, heads, rounds, length, length, dtype=qk.dtype,
                             device=qk.device)
        for r in range(rounds):
            for offset in range(-num_chunks_before, num_chunks_after + 1):
                # (batch, heads, length): per query, a chunk its neighbourhood holds
                wanted = (chunk_of[:, :, r] + offset) % total_chunks
                for s in range(rounds):  # key j appears once per round, in chunk chunk_of[s, j]
                    counts[:, :, r] += (chunk_of[:, :, s][..., None, :]
                                        == wanted[..., :, None]).to(qk.dtype)
    dots = qk @ length_normalised_keys(qk).transpose(-1, -2)  # (batch, heads, length, length)
    key_ok = None if key_padding_mask is None else key_padding_mask.bool()[:, None, :]
    # (batch, heads, rounds, length, length)
    scores = _masked_scores(dots, positions, positions, key_ok, causal)[:, :, None] + counts.log()
    lse = torch.logsumexp(scores, dim=-1)  # (batch, heads, rounds, length)
    weights = torch.exp(scores - lse[..., None])  # (batch, heads, rounds, length, length)
    dropped = F.dropout(weights, dropout_p) if dropout_p else weights
    per_round = dropped @ v[:, :, None]  # (batch, heads, rounds, length, dim)
    combine = torch.softmax(lse, dim=2)[..., None]  # (batch, heads, rounds, length, 1)
    if combine_rounds:
        weights = (weights * combine).sum(dim=2)
    return (per_round * combine).sum(dim=2), weights


# ------------------------------------------------------------------------------- local attention
# Reformer's other layer type (transformers' `LocalSelfAttention`): separate queries and keys,
# keys divided by sqrt(head_dim); positions cut into chunks of `chunk_length`, each query seeing
# its chunk and `num_chunks_before` / `num_chunks_after` around it, circularly as in the LSH
# kernel (so without a causal mask the first chunk also sees the last one); padded or (causal)
# later keys get -1e9, and the query's own key is not masked. A sequence no longer than a chunk
# is plain attention.


def _check_local(q, k, v, chunk_length, num_chunks_before, num_chunks_after, dropout_p):
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must all be (batch, heads, length, head_dim); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}.")
    _check_chunking(q.shape[2], chunk_length, num_chunks_before, num_chunks_after, dropout_p)


def _local_scores(q, k_scaled, q_pos, k_pos, key_ok, causal):
    """Dot products with keys already divided by sqrt(head_dim), hidden keys masked (no self
    mask)."""
    return _without_hidden_keys(q @ k_scaled.transpose(-1, -2), q_pos, k_pos, key_ok, causal)


def local_attention(q, k, v, *, chunk_length: int, num_chunks_before: int = 1,
                    num_chunks_after: int = 0, causal: bool = False, key_padding_mask=None,
                    dropout_p: float = 0.0):
    """Chunked local attention in O(length * chunk_length); see the section comment."""
    _check_local(q, k, v, chunk_length, num_chunks_before, num_chunks_after, dropout_p)
    batch, heads, length, dim = q.shape
    positions = torch.arange(length, device=q.device)
    # (batch, 1, length)
    key_ok = None if key_padding_mask is None else key_padding_mask.bool()[:, None, :]
    k = k / math.sqrt(dim)  # before the neighbourhoods are gathered: half the work
    if length <= chunk_length:
        # (batch, heads, length, length)
        scores = _local_scores(q, k, positions, positions, key_ok, causal)
        probs = torch.softmax(scores, dim=-1)
        return (F.dropout(probs, dropout_p) if dropout_p else probs) @ v
    chunks = length // chunk_length

    def near(x):  # (batch, heads, length, ...) -> (batch, heads, chunks, neighbourhood, ...)
        x = x.reshape(x.shape[:2] + (chunks, chunk_length) + x.shape[3:])
        return _look_adjacent(x, num_chunks_before, num_chunks_after)

    q_pos = positions.view(1, 1, chunks, chunk_length)
    k_pos = near(positions.view(1, 1, length))  # (1, 1, chunks, neighbourhood)
    if key_ok is not None:
        key_ok = near(key_ok)  # (batch, 1, chunks, neighbourhood)
    # (batch, heads, chunks, chunk, neighbourhood)
    scores = _local_scores(q.reshape(batch, heads, chunks, chunk_length, dim), near(k), q_pos,
                           k_pos, key_ok, causal)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return (probs @ near(v)).reshape(batch, heads, length, dim)


def local_attention_reference(q, k, v, *, chunk_length: int, num_chunks_before: int = 1,
                              num_chunks_after: int = 0, causal: bool = False,
                              key_padding_mask=None, dropout_p: float = 0.0):
    """Dense O(length^2) version: how many times each key lies in each query's chunk neighbourhood
    (circularly; more than once when there are fewer chunks than the neighbourhood), added as a
    log-multiplicity to the masked scores. Returns (output, weights (batch, heads, length,
    length))."""
    _check_local(q, k, v, chunk_length, num_chunks_before, num_chunks_after, dropout_p)
    length = q.shape[2]
    positions = torch.arange(length, device=q.device)
    key_ok = None if key_padding_mask is None else key_padding_mask.bool()[:, None, :]
    # (batch, heads, length, length)
    scores = _local_scores(q, k / math.sqrt(q.shape[-1]), positions, positions, key_ok, causal)
    if length > chunk_length:
        chunks = length // chunk_length
        chunk_of = positions // chunk_length  # (length,)
        counts = torch.zeros(length, length, dtype=q.dtype, device=q.device)  # (queries, keys)
        for offset in range(-num_chunks_before, num_chunks_after + 1):
            wanted = (chunk_of + offset) % chunks
            counts += (chunk_of[None, :] == wanted[:, None]).to(q.dtype)
        scores = scores + counts.log()
    weights = torch.softmax(scores, dim=-1)
    dropped = F.dropout(weights, dropout_p) if dropout_p else weights
    return dropped @ v, weights
