"""The SDPA dense kernel against the explicit reference: outputs and gradients on random
shapes, padding, causal masks and caches (fewer queries than keys)."""

import pytest
import torch
from kernel_checks import assert_outputs_and_gradients_match

from longctx.attention_dense import dense_attention, dense_attention_reference


def random_case(seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    batch, heads = int(torch.randint(1, 4, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen))
    k_len = int(torch.randint(1, 40, (1,), generator=gen))
    q_len = int(torch.randint(1, k_len + 1, (1,), generator=gen))
    dim = int(torch.randint(1, 5, (1,), generator=gen)) * 4

    def tensor(length):
        return torch.randn(batch, heads, length, dim, generator=gen, dtype=dtype).requires_grad_()

    lengths = torch.randint(1, k_len + 1, (batch,), generator=gen)
    left = bool(torch.randint(0, 2, (1,), generator=gen))
    positions = torch.arange(k_len)
    padding = (positions >= k_len - lengths[:, None]) if left else (positions < lengths[:, None])
    return tensor(q_len), tensor(k_len), tensor(k_len), padding


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_kernel_matches_reference(seed, causal, padded):
    q, k, v, padding = random_case(seed)
    padding = padding if padded else None
    fast = dense_attention(q, k, v, key_padding_mask=padding, causal=causal)
    slow, _ = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=causal)
    assert_outputs_and_gradients_match(fast, slow, (q, k, v), 1e-10, 1e-9)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("padded", [False, True])
def test_a_decoding_step_one_query_after_a_cache_matches_reference(seed, padded):
    """One query (the newest token) against past + 1 keys: the kernel drops the causal mask,
    which hides nothing from the last token; the reference keeps it."""
    q, k, v, padding = random_case(seed)
    q = q[:, :, -1:].detach().requires_grad_()
    padding = padding if padded else None
    fast = dense_attention(q, k, v, key_padding_mask=padding, causal=True)
    slow, _ = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=True)
    assert_outputs_and_gradients_match(fast, slow, (q, k, v), 1e-10, 1e-9)


def test_query_that_sees_nothing_outputs_zeros_and_no_nan():
    q, k, v = (torch.randn(1, 2, 4, 8, requires_grad=True) for _ in range(3))
    left_padding = torch.tensor([[False, False, True, True]])  # queries 0 and 1 see no key
    out = dense_attention(q, k, v, key_padding_mask=left_padding, causal=True)
    assert torch.equal(out[:, :, :2], torch.zeros_like(out[:, :, :2]))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_reference_weights_are_literal_masked_softmax():
    q, k, v = (torch.randn(2, 1, 3, 4, dtype=torch.float64) for _ in range(3))
    padding = torch.tensor([[True, True, True], [True, True, False]])
    _, weights = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=True)
    for b in range(2):
        for i in range(3):
            visible = [j for j in range(3) if j <= i and padding[b, j]]
            scores = torch.stack([q[b, 0, i] @ k[b, 0, j] / 2.0 for j in visible])
            expected = torch.zeros(3, dtype=torch.float64)
            expected[visible] = torch.softmax(scores, 0)
            torch.testing.assert_close(weights[b, 0, i], expected)


def test_float32_and_bfloat16_close_to_float64_reference():
    q, k, v, padding = random_case(7)
    slow, _ = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=True)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        fast = dense_attention(*(t.detach().to(dtype) for t in (q, k, v)), key_padding_mask=padding, causal=True)
        torch.testing.assert_close(fast.double(), slow.detach(), rtol=tol, atol=tol)
