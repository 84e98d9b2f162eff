"""Transformer-XL's relative attention as one fused CPU kernel (C++, compiled on first use).

Same inputs, outputs and masks as `attention_relative_blocks.blockwise_relative_attention`, which
it replaces on CPU in float32/float64. That kernel runs eager PyTorch ops over blocks of 128
queries x all their keys: every block's scores, probabilities and gradients make a round trip
through memory between ops, which keeps it well below the FLOP rate of the fused flash kernel
that dense attention uses (measured: results/cpu-2026-11-23/README.md). The C++ kernel
(`attention_relative_fused_cpp`) does what that flash kernel does, with the position term added.
For a tile of 64 queries and a span of 1,024 of the keys they see, one matmul gives the position
scores against every distance between them; then per tile of 256 keys, buffers of 64 x 256 that
stay in a core's cache hold the content scores plus the shifted position scores, and an online
softmax accumulates the output. The backward pass recomputes each key tile's probabilities from
the saved log-sum-exp and forms the gradients of q + u, k and v there; the gradient of the
scores, shifted back into the span's matrix, gives those of q + v and r in two matmuls. All
matmuls are BLAS calls; the forward pass is parallel over (batch, head, query tile), the backward
over (batch, head). Nothing of size (q_len x k_len) exists at any time.

The extension is compiled with `torch.utils.cpp_extension.load_inline` (a C++ compiler and ninja,
about a minute, once: it is cached under ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR). The
source is a Python string, so a saved model's code (trust_remote_code) carries it and compiles it
where it loads. Where it cannot be built (no compiler), `fused_kernel()` warns once and returns
None, and callers run the block kernel, which computes the same values up to float rounding.
"""

import functools
import hashlib
import logging
import os
import warnings

import torch
from torch.autograd.function import once_differentiable

from .attention_relative_blocks import check_span_rows
from .attention_relative_fused_cpp import SOURCE

logger = logging.getLogger(__name__)
DTYPES = (torch.float32, torch.float64)
# Tile sizes of the kernel: queries, keys, and key tiles per span (the keys whose position scores
# one matmul computes: the span's 64 x 1,087 matrices stay in cache). Tiles of 32-256 queries x
# 128-1,024 keys ran within noise of each other; spans of 4 key tiles beat one span for all keys
# at 8,192 (measured: results/cpu-2026-11-23/README.md). `scripts/benchmark_attention.py
# --kernels xl-fused-Q-K-S` times others.
QUERY_TILE, KEY_TILE, SPAN_TILES = 64, 256, 4


@functools.lru_cache(maxsize=None)
def fused_kernel():
    """The compiled extension, or None (with one warning) where it cannot be built."""
    try:
        return _build()
    except Exception as error:  # noqa: BLE001 -- any build failure means: use the block kernel
        warnings.warn("longctx: the fused CPU kernel of Transformer-XL's relative attention could "
                      f"not be built ({type(error).__name__}: {str(error).strip()[:300]}); using "
                      "the block kernel (longctx.attention_relative_blocks), which computes the "
                      "same values up to float rounding, more slowly", RuntimeWarning, stacklevel=2)
        return None


def _build():
    from torch.utils.cpp_extension import load_inline

    # the source's hash in the name: a changed source never meets an old build of the same name
    name = f"longctx_relative_attention_cpu_{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}"
    flags = ["-O3", "-fopenmp"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # ATen's vectorised exp
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    if not _is_built(name):
        logger.warning("longctx: compiling the fused CPU kernel of Transformer-XL's relative "
                       "attention (once, about a minute; cached afterwards)")
    return load_inline(name=name, cpp_sources=[SOURCE], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], verbose=False)


def _is_built(name: str) -> bool:
    """Whether torch's extension cache holds this build (only to announce a compilation)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: may change
        return os.path.exists(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so"))
    except Exception:  # noqa: BLE001
        return True


def fused_applies(q, dropout_p: float = 0.0) -> bool:
    """CPU, float32/float64, no attention dropout; whether it is built is `fused_kernel()`'s
    answer."""
    return q.device.type == "cpu" and q.dtype in DTYPES and dropout_p == 0


def fused_relative_attention(q_content, q_position, k, v, r, *, memory_length: int,
                             window: int | None = None, key_padding: torch.Tensor | None = None,
                             tiles: tuple[int, int, int] | None = None):
    """`blockwise_relative_attention` (see its module for shapes and masks) through the fused
    kernel: (batch, heads, q_len, dim). Raises RuntimeError where `fused_kernel()` is None;
    `tiles`: (query tile, key tile, key tiles per span)."""
    kernel = fused_kernel()
    if kernel is None:
        raise RuntimeError("the fused CPU kernel could not be built (see the warning); use "
                           "blockwise_relative_attention")
    check_span_rows(q_content, k, r, memory_length)
    tiles = tiles or (QUERY_TILE, KEY_TILE, SPAN_TILES)
    if len(tiles) != 3 or min(tiles) < 1:
        raise ValueError(f"tiles={tiles}: (query tile, key tile, key tiles per span), each at "
                         "least 1")
    inputs = (q_content, q_position, k, v, r)
    if not all(fused_applies(t) and t.dtype == q_content.dtype for t in inputs):
        raise ValueError("the fused kernel takes CPU tensors of one dtype, float32 or float64; got "
                         f"{[(t.device.type, t.dtype) for t in inputs]}")
    # (batch, k_len) bool, or None
    padding = None if key_padding is None else key_padding.to(torch.bool).contiguous()
    settings = (memory_length, window or 0, padding, *tiles)
    return _FusedRelative.apply(q_content, q_position, k, v, r, kernel, settings)


class _FusedRelative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_content, q_position, k, v, r, kernel, settings):
        inputs = [t.contiguous() for t in (q_content, q_position, k, v, r)]
        # out: (batch, heads, q_len, dim); lse: the log-sum-exp of each query's scores
        out, lse = kernel.forward(*inputs, *settings)
        ctx.save_for_backward(*inputs, out, lse)
        ctx.kernel, ctx.settings = kernel, settings
        return out

    @staticmethod
    @once_differentiable  # the backward is not itself differentiable: a second derivative raises
    def backward(ctx, grad_out):
        q_content, q_position, k, v, r, out, lse = ctx.saved_tensors
        grads = ctx.kernel.backward(grad_out.contiguous(), q_content, q_position, k, v, r, out,
                                    lse, *ctx.settings)
        return (*grads, None, None)

