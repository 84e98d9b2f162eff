"""The chunked sliding-window kernel against the dense reference: outputs and gradients on
random shapes, windows, padding, global keys and causal masks."""

import pytest
import torch
from kernel_checks import assert_outputs_and_gradients_match

from longctx.attention_sliding import (
    global_indices,
    sliding_window_attention,
    sliding_window_attention_reference,
)

# The Flex path runs eagerly on CPU (no torch.compile here): its unfused-kernel warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def random_case(seed: int, causal: bool, padded: bool, with_globals: bool, max_length: int = 60,
                max_window: int = 12, device: str = "cpu", dim_unit: int = 4):
    """Random q, k, v (float64, requiring grad) and the kernel options, on `device`."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=gen))

    batch, heads, length, dim, window = draw(1, 4), draw(1, 3), draw(1, max_length), dim_unit * draw(1, 4), draw(1, max_window)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64).to(device).requires_grad_()
               for _ in range(3))
    padding = None
    if padded:
        lengths = torch.randint(1, length + 1, (batch,), generator=gen)
        padding = torch.arange(length)[None, :] < lengths[:, None]
    globals_ = None
    if with_globals and not causal:
        globals_ = torch.rand(batch, length, generator=gen) < 0.15
    padding, globals_ = (None if m is None else m.to(device) for m in (padding, globals_))
    return dict(q=q, k=k, v=v), dict(window=window, key_padding_mask=padding, global_key_mask=globals_,
                                     causal=causal)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("causal,with_globals", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_kernel_matches_dense_reference(seed, causal, with_globals, padded):
    tensors, options = random_case(seed, causal, padded, with_globals)
    fast = sliding_window_attention(**tensors, **options)
    slow, _ = sliding_window_attention_reference(**tensors, **options)
    assert_outputs_and_gradients_match(fast, slow, list(tensors.values()), 1e-10, 1e-9)


def test_reference_is_the_sliding_window_rule():
    """Each output is the softmax-weighted mean over exactly the keys the rule allows."""
    q, k, v = (torch.randn(1, 1, 9, 3, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[True] * 8 + [False]])
    globals_ = torch.zeros(1, 9, dtype=torch.bool)
    globals_[0, 7] = True
    out, _ = sliding_window_attention_reference(q, k, v, window=2, key_padding_mask=padding,
                                                global_key_mask=globals_)
    for i in range(9):
        keys = [j for j in range(9) if (abs(i - j) <= 2 or j == 7) and j != 8]
        scores = torch.stack([q[0, 0, i] @ k[0, 0, j] for j in keys]) / 3 ** 0.5
        expected = torch.softmax(scores, 0) @ v[0, 0, keys]
        torch.testing.assert_close(out[0, 0, i], expected)


def test_window_covering_everything_equals_dense_attention():
    from longctx.attention_dense import dense_attention_reference
    q, k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[True] * 10, [True] * 6 + [False] * 4])
    for causal in (False, True):
        got = sliding_window_attention(q, k, v, window=9, key_padding_mask=padding, causal=causal)
        want, _ = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=causal)
        torch.testing.assert_close(got, want)


def test_float32_close_to_float64():
    tensors, options = random_case(3, False, True, True)
    slow, _ = sliding_window_attention_reference(**tensors, **options)
    fast = sliding_window_attention(**{n: t.detach().float() for n, t in tensors.items()}, **options)
    torch.testing.assert_close(fast.double(), slow.detach(), rtol=1e-5, atol=1e-5)


def test_global_indices_list_each_rows_globals_in_order():
    flags = torch.tensor([[False, True, False, True], [False, False, False, False], [True, False, False, False]])
    index, valid = global_indices(flags)
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert index[0].tolist() == [1, 3] and index[2, 0] == 0


def test_bad_arguments_raise_value_error():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="causal"):
        sliding_window_attention(q, q, q, window=2, causal=True, global_key_mask=torch.ones(1, 8, dtype=torch.bool))


@pytest.mark.parametrize("seed", range(10))
def test_decode_equals_last_rows_of_the_full_causal_pass(seed):
    from longctx.attention_sliding import sliding_window_decode
    tensors, options = random_case(seed, causal=True, padded=True, with_globals=False)
    full, _ = sliding_window_attention_reference(**tensors, **options)
    length = full.shape[2]
    new = 1 + seed % min(3, length)
    q = tensors["q"][:, :, -new:]
    got = sliding_window_decode(q, tensors["k"], tensors["v"], window=options["window"],
                                key_padding_mask=options["key_padding_mask"])
    torch.testing.assert_close(got, full[:, :, -new:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk_size", [1, 3, 17])
def test_any_chunk_size_gives_the_same_result(seed, chunk_size):
    tensors, options = random_case(seed, causal=seed % 2 == 1, padded=True, with_globals=True)
    want, _ = sliding_window_attention_reference(**tensors, **options)
    got = sliding_window_attention(**tensors, **options, chunk_size=chunk_size)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("causal,with_globals", [(False, False), (False, True), (True, False)])
def test_flex_path_forward_matches_reference(seed, block_size, causal, with_globals):
    """The block mask (full / partial / skipped key blocks) is exact: small blocks make every kind
    occur. FlexAttention has no backward on CPU (torch 2.13): gradients are checked on CUDA
    (tests/test_cuda.py)."""
    from longctx.attention_sliding import sliding_window_attention_flex
    tensors, options = random_case(seed, causal, seed % 2 == 0, with_globals)
    tensors = {name: t.detach().float() for name, t in tensors.items()}
    want, _ = sliding_window_attention_reference(**tensors, **options)
    got = sliding_window_attention_flex(**tensors, **options, block_size=block_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_block_mask_visits_only_blocks_the_window_touches():
    """Block-sparse means linear work: with 8 blocks of 4 and a window of 2, query block i visits
    key blocks i-1..i+1 only, and no block is full (a block of 4 spans distances up to 3)."""
    from longctx.attention_sliding import sliding_window_block_mask
    key_ok = torch.ones(1, 32, dtype=torch.bool)
    mask = sliding_window_block_mask(key_ok, None, window=2, causal=False, block_size=4)
    counts = mask.kv_num_blocks[0, 0].tolist()
    assert counts == [2, 3, 3, 3, 3, 3, 3, 2]
    assert mask.full_kv_num_blocks.sum() == 0
    wide = sliding_window_block_mask(key_ok, None, window=8, causal=False, block_size=4)
    assert wide.full_kv_num_blocks[0, 0, 4] == 3  # key blocks 3, 4, 5 are within 8 of every query in block 4
    with_global = key_ok.clone(), torch.zeros(1, 32, dtype=torch.bool)
    with_global[1][0, 30] = True
    mask = sliding_window_block_mask(*with_global, window=2, causal=False, block_size=4)
    assert mask.kv_num_blocks[0, 0].tolist() == [3, 4, 4, 4, 4, 4, 3, 2]  # block 7 (the global's) for all


def test_kernel_choice_is_checked():
    q = torch.randn(1, 1, 16, 4)
    with pytest.raises(ValueError, match="kernel"):
        sliding_window_attention(q, q, q, window=2, kernel="fast")
    with pytest.raises(ValueError, match="dropout"):
        sliding_window_attention(q, q, q, window=2, kernel="flex", dropout_p=0.1)
    with pytest.raises(ValueError, match="head dimension"):
        sliding_window_attention(q, q, q, window=2, kernel="flex")
    q = torch.randn(1, 1, 16, 16, requires_grad=True)
    with pytest.raises(ValueError, match="CUDA"):  # torch has no FlexAttention backward on CPU
        sliding_window_attention(q, q, q, window=2, kernel="flex")


def test_flex_path_query_that_sees_nothing_outputs_zeros():
    from longctx.attention_sliding import sliding_window_attention_flex
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    left_padding = torch.arange(40)[None, :] >= 7  # causal: queries 0..6 see no real key
    got = sliding_window_attention_flex(q, k, v, window=3, key_padding_mask=left_padding, causal=True, block_size=16)
    want, _ = sliding_window_attention_reference(q, k, v, window=3, key_padding_mask=left_padding, causal=True)
    assert torch.equal(got[:, :, :7], torch.zeros_like(got[:, :, :7]))
    torch.testing.assert_close(got, want)
