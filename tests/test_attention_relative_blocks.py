"""Transformer-XL's linear-memory kernels -- the block kernel (`longctx.attention_relative_blocks`)
and the fused CPU kernel (`longctx.attention_relative_fused`, C++) -- against the explicit
reference `relative_attention_reference`: outputs and every gradient, on random shapes, memories,
windows, padding and block/tile sizes, with either block forward (the CPU flash kernel, or the
matmuls and softmax that other devices run); half precision and autocast; the dispatch and the
fallback where the fused kernel cannot be built; their memory; a whole model step through each
kernel. tests/test_cuda.py runs the block kernel on CUDA."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import longctx.attention_relative as relative
import longctx.attention_relative_blocks as relative_blocks
import longctx.attention_relative_fused as relative_fused
from longctx.attention_relative import VisibleKeys, relative_attention, relative_attention_reference
from longctx.attention_relative_blocks import DEFAULT_BLOCK, blockwise_relative_attention
from longctx.attention_relative_fused import fused_relative_attention


def random_inputs(batch, heads, q_len, memory, dim, dtype=torch.float64, seed=0):
    """q, k, v, r, u, v_bias with gradients; scaled so that the softmax is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    k_len = q_len + memory
    shapes = [(batch, heads, q_len, dim), (batch, heads, k_len, dim), (batch, heads, k_len, dim),
              (heads, k_len, dim), (heads, dim), (heads, dim)]
    return [(2 * torch.randn(*shape, generator=gen, dtype=dtype)).requires_grad_()
            for shape in shapes]


def random_padding(batch, k_len, seed=0):
    gen = torch.Generator().manual_seed(seed)
    padding = torch.rand(batch, k_len, generator=gen) > 0.3
    padding[0] = False
    padding[0, -2:] = True  # row 0 left-padded: its first queries see nothing
    return padding


def blocks(q, k, v, r, u, v_bias, visible, block):
    return blockwise_relative_attention(q + u[:, None], q + v_bias[:, None], k, v, r,
                                        memory_length=visible.memory_length, window=visible.window,
                                        key_padding=visible.key_padding, block=block)


def fused(q, k, v, r, u, v_bias, visible, block):
    """The fused kernel with tiles of `block` queries, fewer keys, and spans of two key tiles (None:
    its default tiles)."""
    tiles = None if block is None else (block, max(1, block // 2 + 3), 2)
    return fused_relative_attention(q + u[:, None], q + v_bias[:, None], k, v, r,
                                    memory_length=visible.memory_length, window=visible.window,
                                    key_padding=visible.key_padding, tiles=tiles)


KERNELS = {"blocks": blocks, "fused": fused}


def assert_same_outputs_and_gradients(got, want, inputs, **tolerance):
    torch.testing.assert_close(got, want, **tolerance)
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    for name, g, w in zip("q k v r u v_bias".split(), torch.autograd.grad(got, inputs, upstream),
                          torch.autograd.grad(want, inputs, upstream)):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"gradient of {name}: {m}",
                                   **tolerance)


@pytest.mark.parametrize("batch, heads, q_len, memory, dim, window, padded, block", [
    (2, 3, 37, 0, 8, None, False, 16),     # no memory, a length off the block
    (2, 3, 37, 11, 8, None, False, 16),
    (1, 2, 50, 20, 4, None, True, 16),     # padding, queries that see nothing
    (2, 2, 45, 30, 8, 25, False, 16),      # same_length window shorter than the memory
    (2, 2, 45, 30, 8, 25, True, 7),
    (3, 1, 64, 64, 16, None, False, 64),   # one block exactly
    # a block longer than the segment, a window longer than the span
    (2, 2, 33, 5, 8, 40, True, 100),
    (2, 4, 20, 9, 8, 3, True, 1),          # blocks of one query, a window of 3
    # one new token after a memory (generation); the default block
    (1, 1, 1, 17, 8, None, False, None),
    (2, 2, 70, 50, 8, None, True, None),
])
@pytest.mark.parametrize("kernel", ["blocks, cpu-flash forward", "blocks, matmul-softmax forward",
                                    "fused"])
def test_linear_memory_kernels_equal_reference(batch, heads, q_len, memory, dim, window, padded,
                                               block, kernel, monkeypatch):
    if kernel == "blocks, matmul-softmax forward":  # what CUDA runs
        monkeypatch.setattr(relative_blocks, "flash_forward", None)
    inputs = random_inputs(batch, heads, q_len, memory, dim)
    flash_forward = kernel != "blocks, matmul-softmax forward"
    assert relative_blocks.fused_forward_applies(inputs[0]) == flash_forward
    padding = random_padding(batch, q_len + memory) if padded else None
    visible = VisibleKeys(q_len, memory, window, padding, "cpu")
    want, _ = relative_attention_reference(*inputs, visible.mask())
    got = KERNELS[kernel.split(",")[0]](*inputs, visible, block)
    assert_same_outputs_and_gradients(got, want, inputs)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_is_close_to_the_float64_reference(kernel):
    inputs = random_inputs(2, 4, 300, 200, 16, dtype=torch.float32)
    visible = VisibleKeys(300, 200, None, random_padding(2, 500), "cpu")
    want, _ = relative_attention_reference(*inputs, visible.mask())
    assert_same_outputs_and_gradients(KERNELS[kernel](*inputs, visible, 64), want, inputs,
                                      rtol=1e-4, atol=1e-4)


def kernel_inputs(dtype, batch, heads, q_len, memory, dim):
    """q + u, q + v, k, v, r as leaves of `dtype` holding the same numbers as their float64
    copies."""
    inputs = random_inputs(batch, heads, q_len, memory, dim, dtype=dtype)
    q, k, v, r, u, v_bias = (t.detach() for t in inputs)
    leaves = [(q + u[:, None]), (q + v_bias[:, None]), k, v, r]
    return [t.requires_grad_() for t in leaves], [t.double().requires_grad_() for t in leaves]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32_and_returned_in_its_dtype(dtype):
    """Half-precision inputs: the output and gradients are those of the same numbers in float64
    (which the tests above check against the reference), rounded once to the dtype -- not the
    error that half-precision scores and probabilities would add."""
    half, exact = kernel_inputs(dtype, 2, 3, 150, 60, 16)
    visible = VisibleKeys(150, 60, 90, random_padding(2, 210), "cpu")

    def run(inputs):
        return blockwise_relative_attention(*inputs, memory_length=60, window=90,
                                            key_padding=visible.key_padding, block=32)

    got, want = run(half), run(exact)
    assert got.dtype == dtype
    one_rounding = 2 ** -8  # bfloat16's relative spacing; float16's is finer

    def assert_rounded_once(g, w, what):
        w = w.detach()
        torch.testing.assert_close(g.double(), w, rtol=0, atol=float(w.abs().max()) * one_rounding,
                                   msg=lambda m: f"{what}: {m}")

    assert_rounded_once(got, want, "output")
    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    for name, g, w in zip("q_content q_position k v r".split(),
                          torch.autograd.grad(got, half, upstream),
                          torch.autograd.grad(want, exact, upstream.double())):
        assert g.dtype == dtype
        assert_rounded_once(g, w, f"gradient of {name}")


def test_autocast_does_not_lower_the_block_kernel_precision():
    """Under bf16 autocast (as training on CUDA runs) the kernel's matmuls stay in float32: the
    same numbers as without autocast, to float32 rounding."""
    inputs = random_inputs(2, 2, 140, 40, 8, dtype=torch.float32)
    visible = VisibleKeys(140, 40, None, random_padding(2, 180), "cpu")
    want = blocks(*inputs, visible, 32)
    want_grads = torch.autograd.grad(want.sum(), inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = blocks(*inputs, visible, 32)
        got_grads = torch.autograd.grad(got.sum(), inputs)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("kernel", KERNELS)
def test_queries_that_see_nothing_output_zeros_and_pass_no_gradient(kernel):
    inputs = random_inputs(1, 2, 6, 4, 8)
    padding = torch.ones(1, 10, dtype=torch.bool)
    padding[0, :7] = False  # queries 0-2 (keys 4-6) see only padding
    out = KERNELS[kernel](*inputs, VisibleKeys(6, 4, None, padding, "cpu"), 4)
    assert out[0, :, :3].abs().max() == 0 and out[0, :, 3:].abs().min() > 0
    q_grad, k_grad = torch.autograd.grad(out.sum(), inputs[:2])
    assert q_grad[0, :, :3].abs().max() == 0 and k_grad[0, :, :7].abs().max() == 0


def largest_saved_tensor(function):
    """The number of elements of the largest tensor autograd keeps for the backward pass."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        function()
    return max(sizes)


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_memory_kernels_keep_no_score_matrix_for_the_backward_pass(kernel):
    batch, heads, q_len, memory, dim = 2, 2, 256, 256, 8
    inputs = random_inputs(batch, heads, q_len, memory, dim, dtype=torch.float32)
    visible = VisibleKeys(q_len, memory, None, None, "cpu")
    scores = batch * heads * q_len * (q_len + memory)
    # the probe sees the score matrices when a kernel keeps them
    sdpa = largest_saved_tensor(lambda: relative_attention(*inputs, visible, kernel="sdpa"))
    assert sdpa >= scores
    assert largest_saved_tensor(lambda: relative_attention(*inputs, visible, kernel=kernel)) <= \
        batch * heads * (q_len + memory + 1) * dim


def count_calls(monkeypatch, *names):
    """Counts the calls the dispatcher makes to each kernel function named."""
    calls = {name: 0 for name in names}
    for name in names:
        real = getattr(relative, name)

        def counted(*args, name=name, real=real, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(relative, name, counted)
    return calls


def test_auto_takes_the_fused_kernel_only_where_it_applies(monkeypatch):
    calls = count_calls(monkeypatch, "fused_relative_attention", "blockwise_relative_attention")
    q_len = DEFAULT_BLOCK + 1  # more than one block of queries
    visible = VisibleKeys(q_len, 3, None, None, "cpu")
    relative_attention(*random_inputs(1, 2, q_len, 3, 8, dtype=torch.float32), visible)
    assert calls == {"fused_relative_attention": 1, "blockwise_relative_attention": 0}
    relative_attention(*random_inputs(1, 2, q_len, 3, 8, dtype=torch.float32), visible,
                       dropout_p=0.1)
    relative_attention(*random_inputs(1, 2, q_len, 3, 8, dtype=torch.bfloat16), visible)
    relative_attention(*random_inputs(1, 2, q_len, 3, 8, dtype=torch.float32), visible,
                       kernel="sdpa")
    one_block = VisibleKeys(DEFAULT_BLOCK, 3, None, None, "cpu")
    one_block_inputs = random_inputs(1, 2, DEFAULT_BLOCK, 3, 8, dtype=torch.float32)
    relative_attention(*one_block_inputs, one_block)
    assert calls == {"fused_relative_attention": 1, "blockwise_relative_attention": 0}
    relative_attention(*one_block_inputs, one_block, kernel="blocks")
    relative_attention(*one_block_inputs, one_block, kernel="fused")
    assert calls == {"fused_relative_attention": 2, "blockwise_relative_attention": 1}


def test_where_the_fused_kernel_cannot_be_built_it_warns_once_and_the_block_kernel_runs(
        monkeypatch):
    """A failed build (no C++ compiler, or a failing one) warns once, naming the
    reason; 'auto' and 'fused' then run the block kernel (same values), so that a saved config
    asking for 'fused' loads anywhere; the kernel function itself raises."""
    def no_compiler(lock_wait):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(relative_fused, "_build", no_compiler)
    relative_fused.fused_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning,
                          match="could not be built .*no C\\+\\+ compiler found.*block kernel"):
            assert relative_fused.fused_kernel() is None
        calls = count_calls(monkeypatch, "fused_relative_attention", "blockwise_relative_attention")
        q_len = DEFAULT_BLOCK + 1
        inputs = random_inputs(1, 2, q_len, 3, 8)
        visible = VisibleKeys(q_len, 3, None, None, "cpu")
        want, _ = relative_attention_reference(*inputs, visible.mask())
        torch.testing.assert_close(relative_attention(*inputs, visible), want)
        torch.testing.assert_close(relative_attention(*inputs, visible, kernel="fused"), want)
        assert calls == {"fused_relative_attention": 0, "blockwise_relative_attention": 2}
        with pytest.raises(RuntimeError, match="could not be built"):
            fused(*inputs, visible, None)
    finally:
        relative_fused.fused_kernel.cache_clear()  # the next caller builds (or loads) it again


# Run in a subprocess: torch's own wait on the lock never ends, so a regression must not hang pytest
LEFT_LOCK_SCRIPT = textwrap.dedent("""
    import json, os, warnings
    import torch
    from torch.utils.cpp_extension import _get_build_directory
    import longctx.attention_relative_fused as relative_fused
    from longctx.attention_relative import (VisibleKeys, relative_attention,
                                            relative_attention_reference)
    directory = _get_build_directory(relative_fused.extension_name(), verbose=False)
    open(os.path.join(directory, "lock"), "w").close()  # as a build killed midway leaves it
    gen = torch.Generator().manual_seed(0)
    q_len, memory, heads, dim = 130, 3, 2, 8
    shapes = [(1, heads, q_len, dim), (1, heads, q_len + memory, dim),
              (1, heads, q_len + memory, dim), (heads, q_len + memory, dim), (heads, dim),
              (heads, dim)]
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    visible = VisibleKeys(q_len, memory, None, None, "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = relative_attention(*inputs, visible, kernel="fused")
        relative_attention(*inputs, visible, kernel="fused")
    want, _ = relative_attention_reference(*inputs, visible.mask())
    print(json.dumps({"kernel": repr(relative_fused.fused_kernel()),
                      "warnings": [str(w.message) for w in caught],
                      "difference": (got - want).abs().max().item()}))
""")


def test_a_build_lock_left_by_a_killed_build_bounds_the_wait_then_the_block_kernel_runs(tmp_path):
    """torch waits forever on the lock file of a build killed midway; longctx waits while the lock
    is younger than $LONGCTX_KERNEL_LOCK_WAIT seconds, then warns once and runs the block kernel.
    (The lock makes torch wait before it compiles: nothing is compiled here.)"""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), LONGCTX_KERNEL_LOCK_WAIT="2")
    result = subprocess.run([sys.executable, "-c", LEFT_LOCK_SCRIPT], capture_output=True,
                            text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["kernel"] == "None"
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "build lock is" in report["warnings"][0]
    assert "LONGCTX_KERNEL_LOCK_WAIT=2" in report["warnings"][0]
    assert "block kernel" in report["warnings"][0]
    assert report["difference"] < 1e-10


def test_a_bad_lock_wait_setting_raises_value_error_naming_it(monkeypatch):
    for value in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv("LONGCTX_KERNEL_LOCK_WAIT", value)
        with pytest.raises(ValueError, match=f"LONGCTX_KERNEL_LOCK_WAIT='{value}'"):
            relative_fused.lock_wait_seconds()
    monkeypatch.setenv("LONGCTX_KERNEL_LOCK_WAIT", "0.5")
    assert relative_fused.lock_wait_seconds() == 0.5


def test_unusable_kernel_choices_raise_value_error():
    visible = VisibleKeys(5, 3, None, None, "cpu")
    with pytest.raises(ValueError, match="dropout"):
        relative_attention(*random_inputs(1, 2, 5, 3, 8, dtype=torch.float32), visible,
                           dropout_p=0.1, kernel="blocks")
    inputs = random_inputs(1, 2, 5, 3, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="memory_length"):
        blocks(*inputs, VisibleKeys(5, 2, None, None, "cpu"), 4)
    with pytest.raises(ValueError, match="block=0"):
        blocks(*inputs, visible, 0)
    with pytest.raises(ValueError, match="kernel='flash'"):
        relative_attention(*random_inputs(1, 2, 5, 3, 8, dtype=torch.float32), visible,
                           kernel="flash")
    for dtype, dropout_p in ((torch.bfloat16, 0.0), (torch.float32, 0.1)):
        with pytest.raises(ValueError, match="kernel='fused' needs CPU tensors in float32/float64 "
                                             "and attention dropout"):
            relative_attention(*random_inputs(1, 2, 5, 3, 8, dtype=dtype), visible,
                               dropout_p=dropout_p, kernel="fused")
    for tiles in ((0, 4, 1), (4, 4)):
        with pytest.raises(ValueError, match="tiles=.*each at least 1"):
            fused_relative_attention(inputs[0], inputs[0], *inputs[1:4], memory_length=3,
                                     tiles=tiles)


@pytest.mark.parametrize("kernel", KERNELS)
def test_model_step_is_the_same_through_each_kernel(kernel, monkeypatch):
    """Loss and every parameter gradient of a Transformer-XL step with memory, padding, a
    same_length window and clamped distances: config.relative_attention_kernel 'blocks' or
    'fused' vs 'sdpa' (float64)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    function = {"blocks": "blockwise_relative_attention",
                "fused": "fused_relative_attention"}[kernel]
    calls = count_calls(monkeypatch, function)
    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, mem_len=24,
                                  same_length=True, clamp_len=20,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  relative_attention_kernel=kernel)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).double()
    ids = torch.randint(3, 200, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0

    def step():
        model.zero_grad()
        memory = model(ids[:, :14], attention_mask=mask[:, :14]).mems
        loss = model(ids[:, 14:], attention_mask=mask, labels=ids[:, 14:], mems=memory).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()
                               if p.grad is not None}

    block_loss, block_grads = step()
    assert calls[function] == 4  # two calls of two layers
    for layer in model.model.layers:
        layer.attention.kernel = "sdpa"
    sdpa_loss, sdpa_grads = step()
    assert calls[function] == 4
    torch.testing.assert_close(block_loss, sdpa_loss)
    assert block_grads.keys() == sdpa_grads.keys() and len(block_grads) > 10
    for name in block_grads:
        torch.testing.assert_close(block_grads[name], sdpa_grads[name],
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("block_forward", ["cpu-flash", "matmul-softmax"])
def test_model_step_under_bf16_autocast_runs_the_block_kernel_close_to_float32(block_forward,
                                                                               monkeypatch):
    """Under autocast the kernel gets mixed dtypes (q + u float32, k and v bfloat16, as training on
    CUDA runs): it computes in float32, so the loss stays close to the float32 step's and every
    gradient is finite."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if block_forward == "matmul-softmax":
        monkeypatch.setattr(relative_blocks, "flash_forward", None)
    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=128, mem_len=200,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  relative_attention_kernel="blocks")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(3, 200, (2, 400))

    def step(autocast):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            memory = model(ids[:, :200]).mems
            loss = model(ids[:, 200:], labels=ids[:, 200:], mems=memory).loss
        loss.backward()
        return float(loss), [p.grad for p in model.parameters() if p.grad is not None]

    full_loss, _ = step(autocast=False)
    half_loss, half_grads = step(autocast=True)
    assert abs(half_loss - full_loss) < 1e-2 * abs(full_loss)
    assert len(half_grads) > 10 and all(torch.isfinite(g).all() for g in half_grads)


def test_linear_memory_kernels_refuse_a_second_derivative_that_sdpa_gives():
    """Their backward is written by hand and not differentiable: a gradient of a gradient raises
    (never a silently wrong one); the SDPA kernel gives it, and the dispatcher lets users choose."""
    inputs = random_inputs(1, 2, 5, 3, 8)
    visible = VisibleKeys(5, 3, None, None, "cpu")
    for kernel in ("sdpa", "blocks", "fused"):
        loss = relative_attention(*inputs, visible, kernel=kernel).square().sum()
        q_grad, = torch.autograd.grad(loss, inputs[0], create_graph=True)
        if kernel == "sdpa":
            assert torch.autograd.grad(q_grad.sum(), inputs[1])[0].abs().sum() > 0
        else:
            with pytest.raises(RuntimeError, match="once_differentiable"):
                q_grad.sum().backward()


def test_attention_benchmark_times_the_transformer_xl_kernels(monkeypatch, capsys):
    """scripts/benchmark_attention.py: its XL kernels compute the same attention, and each gets a
    row of timings (none 'failed')."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_attention.py"
    module = runpy.run_path(str(script))
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    make = module["transfo_xl_kernel"]
    outputs = [make(*spec)(q, k, v) for spec in (("sdpa",), ("blocks",), ("blocks", 8), ("fused",))]
    outputs.append(make("fused", tiles=(8, 4, 2))(q, k, v))
    assert outputs[0].shape == (1, 2, 20, 8)
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-4, atol=1e-4)
    names = ("xl-sdpa", "xl-blocks", "xl-blocks-16", "xl-fused", "xl-fused-16-8-2")
    monkeypatch.setattr(sys, "argv", ["benchmark_attention.py", "--device", "cpu", "--dtype",
                                      "fp32", "--heads", "2", "--lengths", "64",
                                      "--kernels", ",".join(("dense",) + names), "--repeats", "1"])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "failed" not in printed
    assert all(f"{name} " in printed for name in names)
