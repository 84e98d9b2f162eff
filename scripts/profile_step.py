"""Where a benchmark training step spends its time: torch.profiler over a few steps of one
model.

    python scripts/profile_step.py --model longctx-longformer --length 4096 --device cuda \
        --dtype bf16

Builds the model exactly as `scripts/benchmark.py` does (same sizes, inputs and loss), runs warm-up
steps, then profiles `--steps` steps and prints the wall time per step, the GPU-busy time and the
operators with the most self time on the device and on the host. A step whose wall time is far
above its GPU-busy time is held back by Python/launch overhead or host synchronisations.
"""

import argparse
import sys
import time
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.profiler import ProfilerActivity, profile

from longctx.experiments import benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="longctx-longformer",
                        help=", ".join(benchmark.known_models()))
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20, help="operators listed per table")
    args = parser.parse_args(argv)

    defaults = benchmark.DEVICE_DEFAULTS[args.device]
    settings = benchmark.BenchmarkSettings(
        models=[args.model], lengths=[args.length], device=args.device, dtype=args.dtype,
        hidden_size=defaults["hidden_size"], num_layers=defaults["num_layers"],
        num_heads=defaults["num_heads"], intermediate_size=defaults["intermediate_size"],
        tokens_per_step=defaults["tokens_per_step"], optimizer_step=False, baseline=None)
    settings.check()
    spec = benchmark.resolve_spec(args.model)
    torch.manual_seed(settings.seed)
    model = spec.build(settings, args.length).model.to(args.device).train()
    batch = benchmark.batch_size_for(args.length, settings.tokens_per_step)
    inputs = benchmark.make_inputs(spec, settings, batch, args.length)
    for _ in range(args.warmup_steps):
        benchmark.training_step(model, inputs, None, settings)
    benchmark.synchronize(args.device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as profiler:
        for _ in range(args.steps):
            benchmark.training_step(model, inputs, None, settings)
        benchmark.synchronize(args.device)
    wall_ms = (time.perf_counter() - started) * 1000 / args.steps
    events = profiler.key_averages()
    print(f"{args.model} @ {args.length} x batch {batch} on {args.device} ({args.dtype}): "
          f"{wall_ms:.1f} ms per step (forward + backward), profiled")
    if args.device == "cuda":
        # Device work appears twice in the table: as the kernel's row and in the operator that
        # launched it. Kernel (and memset/memcpy) rows are the ones with no host time of their own.
        busy_ms = (sum(e.self_device_time_total for e in events if e.cpu_time_total == 0)
                   / 1000 / args.steps)
        print(f"GPU busy (sum of kernel times): {busy_ms:.1f} ms per step")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows,
                           max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows,
                       max_name_column_width=60))


if __name__ == "__main__":
    main()
