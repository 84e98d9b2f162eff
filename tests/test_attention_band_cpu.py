"""The CPU block-band kernel (mask-free flash calls over key blocks, merged by log-sum-exp)
against the dense sliding-window reference: outputs and gradients on random shapes, windows,
blocks, padding, global keys and causal masks; and when `sliding_window_attention` picks it."""

import pytest
import torch
from kernel_checks import assert_outputs_and_gradients_match
from test_attention_sliding import random_case

from longctx import attention_sliding
from longctx.attention_band_cpu import band_block_size, block_band_attention
from longctx.attention_sliding import global_indices, sliding_window_attention, sliding_window_attention_reference


def band_inputs(options):
    """The reference's options in the block-band kernel's terms (globals exclude padded keys)."""
    key_ok, is_global = options["key_padding_mask"], options["global_key_mask"]
    index = valid = None
    if is_global is not None:
        index, valid = global_indices(is_global if key_ok is None else is_global & key_ok)
    return dict(window=options["window"], key_ok=key_ok, global_index=index, global_valid=valid,
                causal=options["causal"])


def a_divisor(window: int, seed: int) -> int:
    divisors = [d for d in range(1, window + 1) if window % d == 0]
    return divisors[seed % len(divisors)]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("causal,with_globals", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("padded", [False, True])
def test_block_band_matches_dense_reference(seed, causal, with_globals, padded):
    """Blocks from 1 to the whole window (one to many blocks per side), lengths that are not
    multiples of the block, right padding, global keys inside and outside the windows."""
    tensors, options = random_case(seed, causal, padded, with_globals, max_length=80, max_window=16)
    block = a_divisor(options["window"], seed)
    fast = block_band_attention(**tensors, **band_inputs(options), block=block)
    slow, _ = sliding_window_attention_reference(**tensors, **options)
    assert_outputs_and_gradients_match(fast, slow, list(tensors.values()), 1e-10, 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_block_band_with_strided_inputs_and_float32(seed):
    """q, k, v as the model makes them (a transposed (batch, length, heads, dim) projection), fp32."""
    tensors, options = random_case(seed, False, True, True, max_length=90, max_window=12)
    strided = {name: t.detach().float().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
               for name, t in tensors.items()}
    fast = block_band_attention(**strided, **band_inputs(options), block=a_divisor(options["window"], seed))
    slow, _ = sliding_window_attention_reference(**strided, **options)
    assert_outputs_and_gradients_match(fast, slow, list(strided.values()), 2e-5, 2e-5)


def test_query_that_sees_nothing_outputs_zeros_with_zero_gradient():
    q, k, v = (torch.randn(2, 2, 40, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    left_padding = torch.arange(40)[None, :] >= torch.tensor([[7], [0]])  # row 0, causal: queries 0..6 see nothing
    got = block_band_attention(q, k, v, window=4, block=2, key_ok=left_padding, causal=True)
    want, _ = sliding_window_attention_reference(q, k, v, window=4, key_padding_mask=left_padding, causal=True)
    assert torch.equal(got[0, :, :7], torch.zeros_like(got[0, :, :7]))
    assert_outputs_and_gradients_match(got, want, [q, k, v], 1e-10, 1e-9)


def test_bfloat16_close_to_float64():
    tensors, options = random_case(5, False, True, True, max_length=90, max_window=12)
    slow, _ = sliding_window_attention_reference(**tensors, **options)
    fast = block_band_attention(**{n: t.detach().bfloat16() for n, t in tensors.items()}, **band_inputs(options),
                                block=a_divisor(options["window"], 1))
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.double(), slow.detach(), rtol=0.05, atol=0.05)


def test_block_size_is_the_largest_divisor_in_range():
    assert [band_block_size(w) for w in (16, 24, 64, 256, 300, 512, 768)] == [16, 24, 64, 256, 150, 256, 256]
    assert band_block_size(8) is None  # below the smallest block
    assert band_block_size(257) is None  # prime: only 1 and itself (> 256) divide it
    with pytest.raises(ValueError, match="divide"):
        q = torch.randn(1, 1, 10, 4)
        block_band_attention(q, q, q, window=6, block=4)


def calls_to_block_band(monkeypatch):
    calls = []
    original = attention_sliding.block_band_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["block"])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_sliding, "block_band_attention", spy)
    return calls


@pytest.mark.parametrize("causal,with_globals", [(False, True), (True, False)])
def test_sliding_window_attention_uses_it_on_cpu_and_stays_exact(monkeypatch, causal, with_globals):
    calls = calls_to_block_band(monkeypatch)
    tensors, options = random_case(2, causal, True, with_globals, max_length=120, max_window=2)
    options["window"] = 32
    got = sliding_window_attention(**tensors, **options)
    want, _ = sliding_window_attention_reference(**tensors, **options)
    assert calls == [32]
    assert_outputs_and_gradients_match(got, want, list(tensors.values()), 1e-10, 1e-9)


def test_slab_form_serves_dropout_explicit_chunks_and_small_windows(monkeypatch):
    calls = calls_to_block_band(monkeypatch)
    q = torch.randn(1, 2, 100, 8)
    sliding_window_attention(q, q, q, window=32, dropout_p=0.1)  # the flash kernel's CPU backward has no dropout
    sliding_window_attention(q, q, q, window=32, chunk_size=16)  # asked for the slab form
    sliding_window_attention(q, q, q, window=8)  # no divisor of 8 reaches the smallest block
    assert calls == []


def test_model_outputs_and_parameter_gradients_equal_the_slab_form(monkeypatch):
    """A Longformer step through the block band equals the same step through the slab form:
    outputs and every parameter's gradient (padding and global tokens in the batch)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("longctx-longformer", vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, attention_window=64,
                                  max_position_embeddings=160, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).double()
    ids = torch.randint(3, 50, (2, 150))
    mask = (torch.arange(150)[None, :] < torch.tensor([[150], [101]])).long()
    global_mask = torch.zeros_like(ids)
    global_mask[:, 0] = 1

    def step():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask).last_hidden_state
        (out * mask[..., None]).square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = calls_to_block_band(monkeypatch)
    band_out, band_grads = step()
    assert calls == [32, 32]
    monkeypatch.setattr(attention_sliding, "band_block_size", lambda window: None)
    slab_out, slab_grads = step()
    assert calls == [32, 32]  # the second step took the slab form
    torch.testing.assert_close(band_out, slab_out, rtol=1e-10, atol=1e-10)
    assert band_grads.keys() == slab_grads.keys() and len(band_grads) > 10
    for name in band_grads:
        torch.testing.assert_close(band_grads[name], slab_grads[name], rtol=1e-9, atol=1e-9, msg=name)
