"""Transformer-XL's decoding fast path (issue 22) against the slow path it replaces:

- the single-query attention kernel against the explicit reference (outputs and gradients);
- the memory's reused keys, values and position projections against recomputing them every call
  (`reuses_projections` patched off, and the SDPA kernel the model used before for one query):
  the same generated ids and logits within 1e-5, over random shapes, left padding, beams, pre-
  and post-norm, same_length windows, shared position biases and the absolute-position ablation;
- weights changed after a memory was made are seen (the memory is projected again)."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import longctx.modeling_transfo_xl as modeling
from longctx.attention_relative import (
    VisibleKeys,
    relative_attention,
    relative_attention_reference,
    single_query_relative_attention,
)
from longctx.compat import cache_of
from model_harness import pad
from test_transfo_xl import redrawn


# ------------------------------------------------------------------------------ kernel
def random_inputs(gen, batch, heads, memory, dim, dtype=torch.float64):
    """q (1 query), k, v (memory + 1 keys), r, u, v-bias: leaves with gradients."""
    k_len = memory + 1
    shapes = [(batch, heads, 1, dim), (batch, heads, k_len, dim), (batch, heads, k_len, dim),
              (heads, k_len, dim), (heads, dim), (heads, dim)]
    return [torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)
            for shape in shapes]


@pytest.mark.parametrize("seed", range(6))
def test_single_query_kernel_equals_reference_outputs_and_gradients(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, heads, memory, dim = (int(n) for n in torch.randint(1, 9, (4,), generator=gen))
    memory = memory * 3 - 3  # 0 .. 21 memory tokens
    tensors = random_inputs(gen, batch, heads, memory, dim)
    k_len = memory + 1
    padding = torch.rand(batch, k_len, generator=gen) > 0.3
    padding[0] = False  # row 0 sees nothing: zeros
    window = [None, 1, max(1, k_len // 2), k_len + 3][seed % 4]
    visible = VisibleKeys(1, memory, window, padding if seed % 2 else None, "cpu")
    q, k, v, r, u, bias_v = tensors
    single = relative_attention(*tensors, visible)  # "auto": one query takes the single kernel
    direct = single_query_relative_attention(q + u[:, None], q + bias_v[:, None], k, v, r, visible)
    reference, _ = relative_attention_reference(*tensors, visible.mask())
    torch.testing.assert_close(single, reference)
    torch.testing.assert_close(direct, reference)
    if seed % 2:
        assert single[0].abs().max() == 0
    upstream = torch.randn(single.shape, generator=gen, dtype=single.dtype)
    grads = torch.autograd.grad(single, tensors, upstream)
    grads_reference = torch.autograd.grad(reference, tensors, upstream)
    for got, want in zip(grads, grads_reference):
        torch.testing.assert_close(got, want)


def test_single_query_kernel_refuses_several_queries():
    gen = torch.Generator().manual_seed(0)
    q, k, v, r, _, _ = random_inputs(gen, 1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"VisibleKeys\(q_len=2, memory_length=3\)"):
        single_query_relative_attention(q, q, k, v, r, VisibleKeys(2, 3))


# ------------------------------------------------------------------------- generation
def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  is_decoder=True, mem_len=8)
    config = AutoConfig.for_model("longctx-transfo-xl", **{**fields, **overrides})
    return redrawn(AutoModelForCausalLM.from_config(config))


def slow_path(monkeypatch, model):
    """The model as before the fast path: every call projects memory and encodings again, and one
    query runs the SDPA kernel (relative_shift and an additive mask)."""
    monkeypatch.setattr(modeling, "reuses_projections", lambda like: False)
    for layer in model.model.layers:
        layer.attention.kernel = "sdpa"


def generate(model, prompts, mask, **options):
    out = model.generate(prompts, attention_mask=mask, do_sample=False, eos_token_id=None,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True,
                         **options)
    return out.sequences, torch.stack(out.logits, dim=1), cache_of(out)


CONFIGS = [
    dict(),
    dict(pre_lnorm=True, cutoffs=[60, 150], div_val=2),
    dict(same_length=True, mem_len=6),
    dict(untie_r=False, mem_len=30, clamp_len=5),
    dict(attn_type=2, mem_len=5),
    dict(mem_len=3, pre_lnorm=True, same_length=True),
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda c: ",".join(map(str, c.items())))
def test_generate_reusing_projections_equals_recomputing_them(monkeypatch, overrides):
    """Left-padded prompts shorter and longer than the memory, many new tokens: the memory fills,
    slides and (mem_len 3) turns over many times."""
    gen = torch.Generator().manual_seed(len(str(overrides)))
    model = tiny(**overrides)
    lengths = torch.randint(1, 14, (3,), generator=gen).tolist()
    prompts, mask = pad([torch.randint(5, 261, (1, n), generator=gen) for n in lengths], "left")
    fast_ids, fast_logits, fast_memory = generate(model, prompts, mask, max_new_tokens=20)
    assert fast_memory.projected is not None  # the fast path ran
    slow_path(monkeypatch, model)
    slow_ids, slow_logits, slow_memory = generate(model, prompts, mask, max_new_tokens=20)
    assert slow_memory.projected is None
    assert torch.equal(fast_ids, slow_ids)
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=1e-5)
    for fast, slow in zip(fast_memory, slow_memory):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_beam_search_reusing_projections_equals_recomputing_them(monkeypatch):
    model = tiny(mem_len=6)
    prompts, mask = pad([torch.randint(5, 261, (1, n)) for n in (5, 9)], "left")
    options = dict(num_beams=3, num_return_sequences=2, max_new_tokens=12)
    fast_ids = generate(model, prompts, mask, **options)[0]
    slow_path(monkeypatch, model)
    assert torch.equal(fast_ids, generate(model, prompts, mask, **options)[0])


def test_memory_keys_and_values_are_those_of_its_hidden_states():
    model = tiny(pre_lnorm=True, mem_len=5)
    with torch.no_grad():
        memory = model(torch.randint(5, 261, (2, 9))).mems
        memory = model(torch.randint(5, 261, (2, 1)), mems=memory).mems
    for block, hidden, (_, keys, values) in zip(model.model.layers, memory, memory.projected):
        attention = block.attention
        projected = attention.key_value(block.attention_norm(hidden))  # (batch, 5, 2 x inner)
        want = [t.view(2, 5, 4, -1).transpose(1, 2) for t in projected.chunk(2, dim=-1)]
        torch.testing.assert_close(keys, want[0])
        torch.testing.assert_close(values, want[1])


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "to_double"])
def test_weights_changed_after_the_memory_was_made_are_used(change):
    """The memory's keys and values came from the old weights: the next call must project it with
    the new ones, as a call without reuse does."""
    model = tiny(mem_len=6)
    ids = torch.randint(5, 261, (2, 8))
    with torch.no_grad():
        memory = model(ids[:, :7]).mems
        before = model(ids[:, 7:], mems=memory).logits
        if change == "in_place":
            for block in model.model.layers:
                block.attention.key_value.weight.mul_(1.5)
                block.attention.position.weight.mul_(0.5)
        elif change == "load_state_dict":
            state = {k: v * 1.5 if "key_value" in k or "position" in k else v
                     for k, v in model.state_dict().items()}
            model.load_state_dict(state)
        else:
            model.double()
            memory = modeling.TransfoXLMemory([h.double() for h in memory.hidden],
                                              projected=memory.projected)
        stale = [memory.projections(i, block.projection_stamp())
                 for i, block in enumerate(model.model.layers)]
        after = model(ids[:, 7:], mems=memory).logits
        expected = model(ids[:, 7:], mems=list(memory.hidden)).logits  # tensors: no projections
    assert stale == [None, None]
    if change != "to_double":  # .double() changes no value
        assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)
    assert after.dtype == expected.dtype
    torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-6)


def test_no_reuse_with_gradient_so_weights_get_their_gradients():
    """With autograd on, the memory's keys are projected again: the projection weights get the
    gradient of every key, memory included."""
    model = tiny(mem_len=6)
    ids = torch.randint(5, 261, (1, 8))
    with torch.no_grad():
        memory = model(ids[:, :7]).mems
    model(ids[:, 7:], mems=memory).logits.sum().backward()
    grad_with_cached_memory = model.model.layers[0].attention.key_value.weight.grad.clone()
    model.zero_grad()
    model(ids[:, 7:], mems=list(memory.hidden)).logits.sum().backward()
    want = model.model.layers[0].attention.key_value.weight.grad
    torch.testing.assert_close(grad_with_cached_memory, want)


def test_position_projections_are_cached_only_for_decoding_lengths():
    """A long prompt gets its own encodings (the cached table holds mem_len + 1 rows, no more)."""
    model = tiny(mem_len=4)
    with torch.no_grad():
        memory = model(torch.randint(5, 261, (1, 20))).mems
        assert model.model._distance_table is None
        model(torch.randint(5, 261, (1, 1)), mems=memory)
    key, table = model.model._distance_table
    assert table.shape == (5, 32)
    distances = torch.arange(4, -1, -1.0)
    torch.testing.assert_close(table, modeling.sinusoid_encoding(distances, 32, torch.float32))
    cached_table, _, projected = model.model.layers[0].attention._distance_cache
    assert cached_table is table and projected.shape == (4, 5, 8)
