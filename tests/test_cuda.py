"""CUDA-only checks: the FlexAttention path (compiled) against the dense reference, outputs and
gradients, and the Longformer model on it; the Reformer against transformers' and its reversible
backward against plain autograd. They need a GPU, so on a machine without one (CI)
pytest reports them as skipped; on a GPU machine run

    python -m pytest -q tests/test_cuda.py

Everything here has a CPU counterpart that CI runs (the chunked kernel's gradients, the Flex
block mask's forward): these add what only CUDA has, FlexAttention's compiled forward and backward.
"""

import pytest
import torch
from test_attention_sliding import random_case
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import longctx  # noqa: F401  (registers the model types)
from longctx.attention_sliding import sliding_window_attention, sliding_window_attention_reference
from longctx.convert import convert_transformers_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FlexAttention's compiled kernels)")


@pytest.fixture(autouse=True)
def full_precision_matmuls():
    """fp32 checks mean fp32: no TF32 in matrix products or Triton dots."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture
def many_shapes():
    """The random-shape tests compile FlexAttention for many (length, head size, mask) variants: more
    than torch.compile's default recompile limit, past which longctx refuses to run it eagerly."""
    with torch._dynamo.config.patch(recompile_limit=256):
        yield


@pytest.fixture
def fresh_compiler():
    """Compiled-code caches emptied, so earlier tests' shapes don't count towards the recompile limit."""
    torch._dynamo.reset()
    yield


def relative_error(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("causal,with_globals", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("padded", [False, True])
def test_flex_kernel_matches_reference_outputs_and_gradients(seed, causal, with_globals, padded, many_shapes):
    """Random lengths up to 700 and windows up to 300 over 128-blocks: skipped, partial and full
    key blocks all occur; the float64 reference sees the same inputs."""
    exact, options = random_case(seed, causal, padded, with_globals, max_length=700, max_window=300, device="cuda",
                                 dim_unit=16)  # head dimensions 16, 32, 48
    single = {name: t.detach().float().requires_grad_() for name, t in exact.items()}
    fast = sliding_window_attention(**single, **options, kernel="flex")
    slow, _ = sliding_window_attention_reference(**exact, **options)
    assert torch.isfinite(fast).all()
    assert relative_error(fast, slow) < 1e-5
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=1e-4)
    upstream = torch.randn_like(slow)
    fast_grads = torch.autograd.grad((fast * upstream.float()).sum(), list(single.values()))
    slow_grads = torch.autograd.grad((slow * upstream).sum(), list(exact.values()))
    for name, got, want in zip(single, fast_grads, slow_grads):
        assert relative_error(got, want) < 1e-4, name
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


def test_flex_kernel_rows_that_see_nothing_are_zero_with_zero_gradient(fresh_compiler):
    q, k, v = (torch.randn(1, 2, 300, 16, device="cuda", requires_grad=True) for _ in range(3))
    left_padding = torch.arange(300, device="cuda")[None, :] >= 140  # causal: queries 0..139 see no real key
    out = sliding_window_attention(q, k, v, window=20, key_padding_mask=left_padding, causal=True, kernel="flex")
    assert torch.equal(out[:, :, :140], torch.zeros_like(out[:, :, :140]))
    (grad_q,) = torch.autograd.grad(out.square().sum(), [q])
    assert torch.equal(grad_q[:, :, :140], torch.zeros_like(grad_q[:, :, :140]))


def test_flex_memory_is_linear_in_length(fresh_compiler):
    """32K tokens, window 256: dense scores alone would take 8 GiB (1 x 4 heads x 32K^2 bf16);
    the block-sparse forward and backward stay within a few hundred MiB."""
    q, k, v = (torch.randn(1, 4, 32768, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = sliding_window_attention(q, k, v, window=256, kernel="flex")
    out.float().square().sum().backward()
    torch.cuda.synchronize()
    extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    assert extra_mib < 512, extra_mib  # an eager (unfused) FlexAttention would need 8 GiB


def tiny_longformer(is_decoder: bool, kernel: str, **overrides):
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-longformer", is_decoder=is_decoder, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128, max_position_embeddings=1024,
                                  attention_window=[128, 256], hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, sliding_window_kernel=kernel, **overrides)
    model_class = AutoModelForCausalLM if is_decoder else AutoModel
    return model_class.from_config(config).cuda()


def model_inputs(is_decoder: bool):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 261, (3, 700), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 450:] = 0  # right padding
    mask[2, :37] = 0  # left padding
    inputs = dict(input_ids=ids, attention_mask=mask)
    if not is_decoder:
        inputs["global_attention_mask"] = (torch.rand(3, 700, generator=generator) < 0.02).long()
    return {name: t.cuda() for name, t in inputs.items()}


@pytest.mark.parametrize("is_decoder", [False, True])
def test_longformer_on_flex_equals_chunked_outputs_and_parameter_gradients(is_decoder, fresh_compiler):
    inputs = model_inputs(is_decoder)
    real = inputs["attention_mask"].bool()
    results = []
    for kernel in ("auto", "chunked"):  # auto = flex on CUDA without dropout
        model = tiny_longformer(is_decoder, kernel).train()
        output = model(**inputs)
        hidden = output.logits if is_decoder else output.last_hidden_state
        hidden[real].square().mean().backward()
        results.append((hidden[real].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (flex_out, flex_grads), (chunked_out, chunked_grads) = results
    torch.testing.assert_close(flex_out, chunked_out, rtol=1e-4, atol=1e-4)
    assert flex_grads.keys() == chunked_grads.keys()
    # Per parameter, relative to the whole gradient's size: some gradients are 0 in exact arithmetic
    # (the key bias shifts every score of a row equally) and both kernels give rounding noise there.
    scale = torch.cat([g.flatten() for g in chunked_grads.values()]).norm()
    for name in flex_grads:
        error = (flex_grads[name] - chunked_grads[name]).norm()
        assert error <= 1e-4 * chunked_grads[name].norm() + 1e-6 * scale, name


def test_bf16_autocast_training_step_is_close_to_fp32(fresh_compiler):
    inputs = model_inputs(is_decoder=False)
    model = tiny_longformer(False, "auto").train()
    losses = []
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            hidden = model(**inputs).last_hidden_state
        losses.append(hidden.float().square().mean())
    assert torch.isfinite(losses[1])
    assert abs(float(losses[1] - losses[0])) < 2e-2 * abs(float(losses[0]))
    losses[1].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_generation_on_cuda_with_and_without_cache_agree(fresh_compiler):
    model = tiny_longformer(True, "auto").eval()
    prompts = torch.randint(5, 261, (2, 300), device="cuda")
    mask = torch.ones_like(prompts)
    mask[1, :20] = 0
    options = dict(attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=None)
    cached = model.generate(prompts, **options)
    uncached = model.generate(prompts, **options, use_cache=False)
    assert torch.equal(cached, uncached)


def test_recompile_limit_falls_back_to_chunked_with_a_warning_never_to_eager_flex(monkeypatch):
    """Past torch.compile's recompile limit torch would run FlexAttention eagerly (length x length
    memory) without a word: "auto" switches to the chunked kernel and warns; "flex" raises."""
    import longctx.attention_sliding as sliding
    q, k, v = (torch.randn(2, 2, 333, 80, device="cuda") for _ in range(3))  # a shape no other test compiles
    want, _ = sliding_window_attention_reference(q, k, v, window=30)
    sliding._warn_once.cache_clear()
    monkeypatch.setattr(sliding, "FLEX_RECOMPILE_LIMIT", 0)
    with torch._dynamo.config.patch(recompile_limit=0):
        with pytest.warns(UserWarning, match="recompile limit"):
            got = sliding_window_attention(q, k, v, window=30, kernel="auto")
        with pytest.raises(sliding.FlexRecompileLimit, match="recompile_limit"):
            sliding_window_attention(q, k, v, window=30, kernel="flex")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- Reformer
# The CPU suite checks the Reformer against transformers and its reversible backward against plain
# autograd; these repeat both on CUDA, where the hash rotations come from the CUDA generator and the
# dropout replay must restore the CUDA RNG state.


def test_reformer_on_cuda_equals_transformers_logits():
    from test_convert_reformer import batch, reference

    hf_model = reference("ReformerModelWithLMHead", is_decoder=True, attn_layers=["local", "lsh", "lsh"],
                         num_buckets=4, num_hashes=2).cuda()
    model = convert_transformers_model(hf_model).eval()
    ids, mask = (t.cuda() for t in batch())
    with torch.no_grad():
        want = hf_model(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_reformer_reversible_backward_equals_plain_autograd_on_cuda_with_dropout(is_decoder):
    from test_reformer import gradients, tiny

    config = tiny(is_decoder, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3, hash_seed=None,
                  num_hashes=2, attn_layers=["lsh", "local", "lsh", "local"], chunk_size_feed_forward=4)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).double().cuda().train()
    ids = torch.randint(5, 261, (2, 16), device="cuda")
    results = []
    for reversible in (True, False):
        model.config.reversible = reversible
        torch.cuda.manual_seed(3)
        results.append(gradients(model, ids, seed=3))
    (out_reversible, grads_reversible), (out_plain, grads_plain) = results
    torch.testing.assert_close(out_reversible, out_plain, rtol=0, atol=0)
    assert set(grads_reversible) == set(grads_plain) == {n for n, p in model.named_parameters()}
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_reversible[name], grad, rtol=1e-9, atol=1e-11, msg=name)


def test_reformer_bf16_autocast_training_step_is_finite_and_close_to_fp32():
    from test_reformer import tiny

    torch.manual_seed(0)
    model = AutoModel.from_config(tiny(max_position_embeddings=256, num_buckets=8)).cuda().train()
    ids = torch.randint(5, 261, (2, 256), device="cuda")
    losses = []
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            hidden = model(ids).last_hidden_state
        losses.append(hidden.float().square().mean())
    assert torch.isfinite(losses[1])
    assert abs(float(losses[1] - losses[0])) < 5e-2 * abs(float(losses[0]))
    losses[1].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# Transformer-XL's block kernel: the CPU suite checks it against the reference with either block
# forward; these run it where the matmul-and-softmax forward and the autocast guard matter.

def xl_case(q_len, memory, dtype=torch.float64, seed=0, padded=True):
    from test_attention_relative_blocks import random_inputs, random_padding

    from longctx.attention_relative import VisibleKeys

    inputs = [t.detach().cuda().to(dtype).requires_grad_() for t in random_inputs(2, 4, q_len, memory, 16, seed=seed)]
    padding = random_padding(2, q_len + memory, seed).cuda() if padded else None
    return inputs, VisibleKeys(q_len, memory, None, padding, "cuda")


def test_transfo_xl_block_kernel_on_cuda_matches_reference():
    from longctx.attention_relative import relative_attention, relative_attention_reference

    inputs, visible = xl_case(333, 200)
    single = [t.detach().float().requires_grad_() for t in inputs]
    fast = relative_attention(*single, visible, kernel="blocks")
    slow, _ = relative_attention_reference(*inputs, visible.mask())
    assert relative_error(fast, slow) < 1e-5
    upstream = torch.randn_like(slow)
    fast_grads = torch.autograd.grad((fast * upstream.float()).sum(), single)
    slow_grads = torch.autograd.grad((slow * upstream).sum(), inputs)
    for name, got, want in zip("q k v r u v_bias".split(), fast_grads, slow_grads):
        assert relative_error(got, want) < 1e-4, name


def test_transfo_xl_block_kernel_memory_is_linear_on_cuda():
    """Span 16K (8K new tokens after 8K of memory), 2 x 4 heads, bf16: one float32 score matrix of
    the SDPA form is 4 GiB; the block kernel's blocks of 128 queries stay far below."""
    from longctx.attention_relative import relative_attention

    inputs, visible = xl_case(8192, 8192, dtype=torch.bfloat16, padded=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    relative_attention(*inputs, visible, kernel="blocks").float().square().sum().backward()
    torch.cuda.synchronize()
    extra_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    assert extra_mib < 1024, extra_mib


def test_transfo_xl_model_step_on_cuda_is_the_same_through_either_kernel():
    """fp32 loss and parameter gradients with relative_attention_kernel 'blocks' and 'sdpa'; and a
    bf16 autocast step through 'blocks' close to fp32."""
    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, mem_len=300, same_length=True, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, relative_attention_kernel="blocks")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).cuda()
    ids = torch.randint(3, 200, (2, 600), device="cuda")

    def step(kernel, autocast=False):
        for layer in model.model.layers:
            layer.attention.kernel = kernel
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            memory = model(ids[:, :300]).mems
            loss = model(ids[:, 300:], labels=ids[:, 300:], mems=memory).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (block_loss, block_grads), (sdpa_loss, sdpa_grads) = step("blocks"), step("sdpa")
    torch.testing.assert_close(block_loss, sdpa_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(block_grads, sdpa_grads):
        assert relative_error(got, want) < 1e-4
    bf16_loss, bf16_grads = step("blocks", autocast=True)
    assert abs(float(bf16_loss - block_loss)) < 2e-2 * abs(float(block_loss))
    assert all(torch.isfinite(g).all() for g in bf16_grads)
