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

torch guards a build with a lock file in the build directory, and a process killed while compiling
leaves it behind; torch's own wait on it has no end. So `_build` waits for that lock only while it
is younger than $LONGCTX_KERNEL_LOCK_WAIT seconds (default 300: a compilation takes about a
minute), then gives up, and `fused_kernel()` falls back to the block kernel as above.
"""

import functools
import hashlib
import logging
import os
import sys
import time
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
# How old torch's build lock may grow before it counts as left behind by a killed process
LOCK_WAIT_VARIABLE, DEFAULT_LOCK_WAIT_S = "LONGCTX_KERNEL_LOCK_WAIT", 300.0


@functools.lru_cache(maxsize=None)
def fused_kernel():
    """The compiled extension, or None (with one warning) where it cannot be built, or where
    torch's build lock stays past `lock_wait_seconds()` (left behind by a killed build)."""
    lock_wait = lock_wait_seconds()  # outside the try: a bad setting is an error, not a fallback
    try:
        return _build(lock_wait)
    except Exception as error:  # noqa: BLE001 -- any build failure means: use the block kernel
        warnings.warn("longctx: the fused CPU kernel of Transformer-XL's relative attention could "
                      f"not be built ({type(error).__name__}: {str(error).strip()[:400]}); using "
                      "the block kernel (longctx.attention_relative_blocks), which computes the "
                      "same values up to float rounding, more slowly", RuntimeWarning, stacklevel=2)
        return None


def lock_wait_seconds() -> float:
    """$LONGCTX_KERNEL_LOCK_WAIT as seconds, else the default."""
    value = os.environ.get(LOCK_WAIT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_LOCK_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{LOCK_WAIT_VARIABLE}={value!r}: give the seconds to wait for another "
                         "process's build of the fused kernel, a finite number >= 0 "
                         f"(default {DEFAULT_LOCK_WAIT_S:g})")
    return seconds


def _build(lock_wait: float = DEFAULT_LOCK_WAIT_S):
    from torch.utils.cpp_extension import load_inline

    name = extension_name()
    flags = ["-O3", "-fopenmp"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # ATen's vectorised exp
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    directory = _build_directory(name)
    _wait_for_build_lock(directory, lock_wait)
    if not _is_built(name):  # announced first: the compilation is silent for about a minute
        announce(f"longctx: building the Transformer-XL CPU attention kernel (once, about a "
                 f"minute; cached in {directory or '~/.cache/torch_extensions'})")
    return load_inline(name=name, cpp_sources=[SOURCE], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], verbose=False)


def announce(message: str):
    """`message` on the console now: through logging where the application configured a handler
    for us, else straight to stderr (logging's last-resort handler may be switched off)."""
    if logger.hasHandlers():
        logger.warning(message)
    else:
        print(message, file=sys.stderr, flush=True)


def extension_name() -> str:
    # the source's hash in the name: a changed source never meets an old build of the same name
    return f"longctx_relative_attention_cpu_{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}"


def _wait_for_build_lock(build_directory: str | None, lock_wait: float):
    """Return once torch's build lock is gone; raise TimeoutError once it is `lock_wait` seconds
    old (its age, not our wait: a lock left from yesterday fails at once). A lock taken after this
    returns belongs to a live build, which torch then waits for."""
    if build_directory is None:
        return
    lock = os.path.join(build_directory, "lock")  # torch's name (cpp_extension._jit_compile)
    announced = False
    while True:
        try:
            age = time.time() - os.stat(lock).st_mtime
        except FileNotFoundError:
            return
        if not announced and age < lock_wait:
            announce(f"longctx: waiting for another process's build of the Transformer-XL CPU "
                     f"attention kernel (lock {lock}, at most {lock_wait - age:.0f} s more)")
            announced = True
        if age >= lock_wait:
            raise TimeoutError(f"torch's build lock is {age:.0f} s old ({LOCK_WAIT_VARIABLE}="
                               f"{lock_wait:g}), as a build killed midway leaves it; delete it if "
                               f"no other process is compiling: {lock}")
        time.sleep(min(0.1, lock_wait - age))


def _build_directory(name: str) -> str | None:
    """torch's build directory for this extension, or None where torch's private helper fails."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: may change
        return _get_build_directory(name, verbose=False)
    except Exception:  # noqa: BLE001
        return None


def _is_built(name: str) -> bool:
    """Whether torch's extension cache holds this build (only to announce a compilation)."""
    directory = _build_directory(name)
    return directory is None or os.path.exists(os.path.join(directory, f"{name}.so"))


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

