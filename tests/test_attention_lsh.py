"""The chunked LSH kernel against its dense reference (outputs and gradients, float64, random
shapes, hashes, buckets, causal, padding), and against transformers' Reformer LSHSelfAttention."""

import pytest
import torch
from kernel_checks import assert_outputs_and_gradients_match

from longctx.attention_lsh import (
    lsh_attention,
    lsh_attention_reference,
    lsh_hash,
    random_rotations,
    rotation_shape,
)


def random_case(seed: int, causal: bool, padded: bool):
    gen = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=gen))

    batch, heads, dim = draw(1, 3), draw(1, 3), 2 * draw(1, 5)
    chunk_length, chunks = draw(1, 6), draw(1, 7)
    length = chunk_length * chunks
    num_hashes = draw(1, 4)
    num_buckets = [2 * draw(1, 4) for _ in range(draw(1, 3))]
    num_buckets = num_buckets[0] if len(num_buckets) == 1 and draw(0, 2) else num_buckets
    qk, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64).requires_grad_()
             for _ in range(2))
    padding = None
    if padded:
        lengths = torch.randint(1, length + 1, (batch,), generator=gen)
        padding = torch.arange(length)[None, :] < lengths[:, None]
    shape = rotation_shape(heads, dim, num_buckets, num_hashes)
    rotations = torch.randn(shape, generator=gen, dtype=torch.float64)
    return dict(qk=qk, v=v), dict(num_hashes=num_hashes, num_buckets=num_buckets, chunk_length=chunk_length,
                                  num_chunks_before=draw(0, 3), num_chunks_after=0 if causal else draw(0, 2),
                                  causal=causal, key_padding_mask=padding, rotations=rotations)


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_kernel_matches_dense_reference(seed, causal, padded):
    tensors, options = random_case(seed, causal, padded)
    fast = lsh_attention(**tensors, **options)
    slow, _ = lsh_attention_reference(**tensors, **options)
    assert fast.shape == tensors["qk"].shape
    # Rounds in which a query only sees itself have logsumexp ~ -1e5: float64 ulp there is ~1e-11.
    assert_outputs_and_gradients_match(fast, slow, list(tensors.values()), 1e-9, 1e-8)


def test_reference_rule_on_a_pinned_hash():
    """One round, buckets pinned by hand-made rotations: each query attends the other keys of its
    chunk and of the previous chunk in (bucket, position) order, never itself."""
    qk = torch.randn(1, 1, 8, 2, dtype=torch.float64)
    qk[0, 0, :, 0] = torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1])  # bucket by sign of coordinate 0
    qk[0, 0, :, 1] = 0.1 * torch.arange(8)
    rotations = torch.tensor([[1.0], [0.0]], dtype=torch.float64)[None, :, None, :]  # 2 buckets
    buckets = lsh_hash(qk, 2, 1, rotations=rotations)
    assert buckets.tolist() == [[[0, 1, 0, 1, 0, 1, 0, 1]]]
    v = torch.randn(1, 1, 8, 2, dtype=torch.float64)
    out, weights = lsh_attention_reference(qk, v, num_hashes=1, num_buckets=2, chunk_length=2, rotations=rotations)
    sorted_positions = [0, 2, 4, 6, 1, 3, 5, 7]
    keys = qk / qk.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() / 2 ** 0.5
    for rank, i in enumerate(sorted_positions):
        chunk = rank // 2
        visible = [sorted_positions[r] for r in range(8) if r // 2 in (chunk, (chunk - 1) % 4)]
        others = [j for j in visible if j != i]
        scores = torch.stack([qk[0, 0, i] @ keys[0, 0, j] for j in others])
        expected = torch.softmax(scores, 0) @ v[0, 0, others]
        torch.testing.assert_close(out[0, 0, i], expected)
        assert weights[0, 0, 0, i, i] < 1e-30
    torch.testing.assert_close(lsh_attention(qk, v, num_hashes=1, num_buckets=2, chunk_length=2,
                                             rotations=rotations), out)


def test_hash_round_offsets_padding_bucket_and_seed():
    qk = torch.randn(2, 3, 10, 4)
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[1, 7:] = False
    buckets = lsh_hash(qk, [2, 4], 3, seed=5, key_padding_mask=padding).view(2, 3, 3, 10)
    per_round = 2 * 4 + 1  # the padding adds a bucket to each round
    for r in range(3):
        assert bool(((buckets[:, :, r] >= r * per_round) & (buckets[:, :, r] < (r + 1) * per_round)).all())
    assert bool((buckets[1, :, :, 7:] == torch.arange(3)[:, None] * per_round + per_round - 1).all())
    pinned = lsh_hash(qk, [2, 4], 3, rotations=random_rotations(3, 4, [2, 4], 3, seed=5),
                      key_padding_mask=padding)
    assert torch.equal(pinned.view_as(buckets), buckets)
    unpadded = lsh_hash(qk, 8, 2, seed=5).view(2, 3, 2, 10)
    assert bool((unpadded[:, :, 1] >= 8).all()) and bool((unpadded < 16).all())


def test_invalid_arguments_raise_with_the_fix():
    qk = torch.randn(1, 1, 12, 4)
    with pytest.raises(ValueError, match="pad the sequence to 15"):
        lsh_attention(qk, qk, num_hashes=1, num_buckets=4, chunk_length=5)
    with pytest.raises(ValueError, match="even"):
        lsh_attention(qk, qk, num_hashes=1, num_buckets=3, chunk_length=4)
    with pytest.raises(ValueError, match="either seed or rotations"):
        lsh_hash(qk, 4, 1, seed=1, rotations=torch.randn(1, 4, 1, 2))
    with pytest.raises(ValueError, match="rotations have shape"):
        lsh_hash(qk, 4, 2, rotations=torch.randn(1, 4, 1, 2))


def test_short_sequences_are_not_hashed():
    """Up to one chunk, transformers attends over all positions (minus self) whatever num_hashes."""
    qk, v = (torch.randn(2, 2, 6, 4, dtype=torch.float64) for _ in range(2))
    one = lsh_attention(qk, v, num_hashes=1, num_buckets=4, chunk_length=8, causal=True, seed=0)
    three = lsh_attention(qk, v, num_hashes=3, num_buckets=4, chunk_length=8, causal=True, seed=1)
    torch.testing.assert_close(one, three)
    torch.testing.assert_close(one[:, :, 0], v[:, :, 0])  # the first token only sees itself
    ref, _ = lsh_attention_reference(qk, v, num_hashes=2, num_buckets=4, chunk_length=8, causal=True, seed=0)
    torch.testing.assert_close(one, ref)


REFORMER_CASES = [
    # num_buckets, num_hashes, causal, padded, length, chunks before, chunks after
    (4, 1, False, False, 16, 1, 0),
    (4, 2, False, False, 32, 1, 1),
    ([2, 4], 3, True, True, 24, 1, 0),
    (8, 2, True, True, 16, 2, 0),
    ([4, 2], 2, False, True, 32, 1, 1),
    (4, 3, False, True, 4, 1, 0),  # one chunk: plain attention
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", REFORMER_CASES)
def test_reproduces_transformers_reformer_lsh_attention(case, dtype):
    modeling = pytest.importorskip("transformers.models.reformer.modeling_reformer")
    from transformers import ReformerConfig

    num_buckets, num_hashes, causal, padded, length, before, after = case
    heads, head_dim, hidden = 2, 8, 16
    config = ReformerConfig(attn_layers=["lsh"], hidden_size=hidden, num_attention_heads=heads,
                            attention_head_size=head_dim, lsh_attn_chunk_length=4, num_buckets=num_buckets,
                            num_hashes=num_hashes, hash_seed=7, is_decoder=causal, lsh_num_chunks_before=before,
                            lsh_num_chunks_after=after, max_position_embeddings=64)
    torch.manual_seed(0)
    attention = modeling.ReformerAttention(config, 0).eval().to(dtype)
    hidden_states = torch.randn(2, length, hidden, dtype=dtype)
    mask = None
    if padded:
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length - 3:] = 0
    with torch.no_grad():
        expected = attention(hidden_states, attention_mask=mask).hidden_states
        normed = attention.layer_norm(hidden_states)
        lsh = attention.self_attention
        qk, v = (proj(normed).view(2, length, heads, head_dim).transpose(1, 2) for proj in (lsh.query_key, lsh.value))
        out = lsh_attention(qk, v, num_hashes=num_hashes, num_buckets=num_buckets, chunk_length=4,
                            num_chunks_before=before, num_chunks_after=after, causal=causal,
                            key_padding_mask=mask, seed=7)
        got = attention.output.dense(out.transpose(1, 2).reshape(2, length, heads * head_dim))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if length > 4:
            theirs = lsh(normed, attention_mask=mask).buckets
            ours = lsh_hash(qk, num_buckets, num_hashes, seed=7, key_padding_mask=mask)
            assert torch.equal(ours.view_as(theirs), theirs)
