"""Sliding-window and Transformer-XL attention kernels alone, forward and forward + backward,
against dense SDPA.

    python scripts/benchmark_attention.py          # CUDA: bf16, 8 heads x 64, window 512
    python scripts/benchmark_attention.py --lengths 4096 --batch 1 --device cpu --dtype fp32
    python scripts/benchmark_attention.py --device cpu --batch 2 --heads 4 --lengths 2048,4096 \
        --kernels dense,xl-sdpa,xl-blocks,xl-fused,xl-fused-32-512-2

Kernels: "dense" (SDPA over the whole sequence, no mask), "chunked" and "flex" (longctx's two
exact sliding-window kernels, `longctx.attention_sliding`; on CPU without dropout "chunked" runs
the block-band decomposition of `longctx.attention_band_cpu`), "chunked-slabs" (the chunked
kernel's one-SDPA-over-key-slabs form, which CUDA and dropout use), "band-N" (CPU: the block-band
form with blocks of N tokens, N dividing the window), plus diagnostic FlexAttention variants on
CUDA (`flex_variant`). Transformer-XL's relative attention as it trains, span = length: the last
half of the tokens are the queries, the first half their memory, r random (no gradient asked):
"xl-sdpa" (SDPA with the position term as a mask), "xl-blocks"
(`longctx.attention_relative_blocks`, its default block), "xl-blocks-N" (blocks of N queries),
"xl-fused"
(`longctx.attention_relative_fused`, CPU, its default tiles) and "xl-fused-Q-K-S" (tiles of Q
queries x K keys, S key tiles per span). They score half as many queries as "dense": their cost
per token against dense is 2 x their time / dense's. Median times (CUDA
events via triton.testing.do_bench on CUDA; wall clock on CPU).
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from longctx.attention_band_cpu import block_band_attention
from longctx.attention_relative import VisibleKeys, relative_attention
from longctx.attention_relative_blocks import blockwise_relative_attention
from longctx.attention_relative_fused import fused_relative_attention
from longctx.attention_sliding import default_chunk_size, sliding_window_attention


def flex_variant(window: int, length: int, batch: int, device, variant: str):
    """Diagnostic FlexAttention variants, to tell the cost of longctx's masks apart from
    FlexAttention's own: "canonical" is PyTorch's documented sliding window (create_block_mask over
    a mask function that captures no tensors); "ours-plain-mask" is longctx's block lists with that
    tensor-free mask function; "ours-dynamic" is longctx's kernel compiled with dynamic=True."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

    from longctx.attention_sliding import sliding_window_block_mask

    def in_window(b, h, q, k):
        return (q - k).abs() <= window

    compiled = torch.compile(flex_attention, dynamic=variant == "ours-dynamic")
    if variant == "canonical":
        block_mask = create_block_mask(in_window, B=None, H=None, Q_LEN=length, KV_LEN=length,
                                       device=device)
    else:
        block_mask = sliding_window_block_mask(
            torch.ones(batch, length, dtype=torch.bool, device=device), None, window=window,
            causal=False, block_size=128)
        if variant == "ours-plain-mask":
            block_mask = BlockMask.from_kv_blocks(
                block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks,
                block_mask.full_kv_indices, BLOCK_SIZE=128, mask_mod=in_window,
                seq_lengths=(length, length))
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def transfo_xl_kernel(kernel: str, block: int | None = None,
                      tiles: tuple[int, int, int] | None = None):
    """Relative attention of the last half of q over k, v (memory = the first half), XL's causal
    visibility; u, v and r fixed random tensors, as a kernel(q, k, v). `block`: the block kernel's
    query block; `tiles`: the fused kernel's (query tile, key tile, key tiles per span)."""
    cache = {}

    def run(q, k, v):
        if not cache:
            heads, length, dim = q.shape[1], q.shape[2], q.shape[3]
            generator = torch.Generator().manual_seed(0)  # the same r, u, v for every kernel
            make = lambda *shape: (  # noqa: E731
                torch.randn(*shape, generator=generator).to(q.device, q.dtype))
            cache.update(r=make(heads, length, dim), u=make(heads, dim), v=make(heads, dim),
                         visible=VisibleKeys(length - length // 2, length // 2, None, None,
                                             q.device))
        queries = q[:, :, k.shape[2] // 2:]
        if block is None and tiles is None:
            return relative_attention(queries, k, v, cache["r"], cache["u"], cache["v"],
                                      cache["visible"], kernel=kernel)
        attend = (functools.partial(fused_relative_attention, tiles=tiles) if tiles
                  else functools.partial(blockwise_relative_attention, block=block))
        return attend(queries + cache["u"][:, None], queries + cache["v"][:, None], k, v,
                      cache["r"], memory_length=cache["visible"].memory_length)

    return run


def kernels(names, window, length, batch, device):
    table = {
        "xl-sdpa": transfo_xl_kernel("sdpa"),
        "xl-blocks": transfo_xl_kernel("blocks"),
        "xl-fused": transfo_xl_kernel("fused"),
        "dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "chunked": lambda q, k, v: sliding_window_attention(q, k, v, window=window,
                                                            kernel="chunked"),
        "chunked-slabs": lambda q, k, v: sliding_window_attention(
            q, k, v, window=window, kernel="chunked", chunk_size=default_chunk_size(window)),
        "flex": lambda q, k, v: sliding_window_attention(q, k, v, window=window, kernel="flex"),
    }
    chosen = {}
    for name in names:
        if name.startswith("flex-") and device == "cuda":
            chosen[name] = flex_variant(window, length, batch, device, name[len("flex-"):])
        elif name.startswith("xl-blocks-"):
            chosen[name] = transfo_xl_kernel("blocks", int(name[len("xl-blocks-"):]))
        elif name.startswith("xl-fused-"):  # xl-fused-Q-K-S
            chosen[name] = transfo_xl_kernel(
                "fused", tiles=tuple(int(n) for n in name[len("xl-fused-"):].split("-")))
        elif name.startswith("band-"):
            chosen[name] = functools.partial(block_band_attention, window=window,
                                             block=int(name[len("band-"):]))
        elif name in table:
            chosen[name] = table[name]
    return chosen


def median_ms(function, device, repeats):
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(function, warmup=25, rep=100, return_mode="median")
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,16384,65536")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=256,
                        help="one-sided (Longformer attention_window 512)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=["fp32", "bf16"])
    parser.add_argument("--kernels", default="dense,chunked,chunked-slabs,flex",
                        help="also xl-sdpa, xl-blocks, xl-blocks-N, xl-fused, xl-fused-Q-K-S "
                             "(Transformer-XL, see above); band-N on CPU (blocks of N); on CUDA "
                             "flex-canonical, flex-ours-plain-mask, flex-ours-dynamic (see "
                             "flex_variant)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats on CPU")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    print(f"{args.device} {args.dtype}: batch {args.batch}, {args.heads} heads x {args.head_dim}, "
          f"one-sided window {args.window}; median ms")
    print(f"{'kernel':>15} {'length':>7} {'forward':>9} {'fwd+bwd':>9}")
    for length in [int(n) for n in args.lengths.split(",")]:
        q, k, v = (torch.randn(args.batch, args.heads, length, args.head_dim, device=args.device,
                               dtype=dtype, requires_grad=True) for _ in range(3))
        upstream = torch.randn_like(q)
        for name, kernel in kernels(args.kernels.split(","), args.window, length, args.batch,
                                    args.device).items():
            try:
                def forward():
                    with torch.no_grad():
                        kernel(q, k, v)

                def forward_backward():
                    out = kernel(q, k, v)  # the XL kernels output only the last half
                    torch.autograd.grad(out, (q, k, v), upstream[:, :, -out.shape[2]:])

                print(f"{name:>15} {length:>7} "
                      f"{median_ms(forward, args.device, args.repeats):>9.3f} "
                      f"{median_ms(forward_backward, args.device, args.repeats):>9.3f}", flush=True)
            # e.g. dense out of memory at long lengths: reported, not fatal
            except Exception as error:
                print(f"{name:>15} {length:>7} failed: {type(error).__name__}: "
                      f"{str(error).splitlines()[0][:120]}")
            if args.device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
