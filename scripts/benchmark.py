"""The efficiency benchmark: a training step (forward + backward + AdamW) of each model at each
length.

    python scripts/benchmark.py           # dense, hf-longformer, longctx-longformer
    python scripts/benchmark.py --models dense,hf-longformer --lengths 512,1024 --steps 2
    python scripts/benchmark.py --device cuda --dtype bf16 --lengths 1024,4096,16384,65536

Prints ms/step, tokens/s, peak memory and ratios against --baseline (within this run only) for
every (model, length), and writes them with the settings and environment to --output as JSON,
with one plot beside it (<output>_vs_length.png: tokens/s and peak memory against length).
Models: dense, hf-longformer, longctx-longformer, hf-reformer, longctx-reformer, hf-t5 (T5's
encoder), hf-t5-encoder-decoder (the whole T5), or any longctx model type. Defaults
for the model size, lengths and tokens per step depend on the device (the CPU ones are small).
The logic lives in `longctx/experiments/benchmark.py`.
"""

import argparse
import sys
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from longctx.experiments import benchmark
from longctx.experiments.measure import failed
from longctx.experiments.run_common import parse_config_overrides

DEFAULT_MODELS = "dense,hf-longformer,longctx-longformer"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated (default: {DEFAULT_MODELS}); known: "
                             f"{', '.join(benchmark.known_models())}")
    parser.add_argument("--lengths", default=None,
                        help="comma-separated sequence lengths (default: CPU 1024,2048,4096; CUDA "
                             f"1024 to 16384; at most {benchmark.MAX_LENGTH['cpu']} on CPU, "
                             f"{benchmark.MAX_LENGTH['cuda']} on CUDA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if available (default)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: torch.autocast over fp32 weights, CUDA only (default fp32)")
    size = parser.add_argument_group("model size, the same for every model (defaults: CPU "
                                     "256/2/4/1024, CUDA 512/6/8/2048)")
    size.add_argument("--hidden_size", type=int, default=None)
    size.add_argument("--num_layers", type=int, default=None)
    size.add_argument("--num_heads", type=int, default=None)
    size.add_argument("--intermediate_size", type=int, default=None)
    parser.add_argument("--window", type=int, default=512,
                        help="Longformer attention_window (default 512)")
    parser.add_argument("--global_tokens", type=int, default=0,
                        help="the first N tokens of each row get global attention in both "
                             "Longformers (default 0)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--tokens_per_step", type=int, default=None,
                       help="batch = tokens_per_step // length, at least 1 (default: CPU 4096, "
                            "CUDA 16384)")
    batch.add_argument("--batch_size", type=int, default=None, help="a fixed batch size instead")
    parser.add_argument("--warmup_steps", type=int, default=1,
                        help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps; the median is reported (default 5)")
    parser.add_argument("--no_optimizer_step", action="store_true",
                        help="time forward + backward only")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=benchmark.COMPILE_MODES,
                        help="torch.compile every model, with this mode (default: 'default'; "
                             "'reduce-overhead' adds CUDA graphs); needs --warmup_steps 2 or more")
    parser.add_argument("--inference", action="store_true",
                        help="time a forward pass under torch.inference_mode() (eval mode) instead "
                             "of a training step")
    parser.add_argument("--model_config", default=None,
                        help="config fields for the longctx models built from their own config, "
                             "e.g. projection_dim=128; each model takes the fields its config has")
    parser.add_argument("--baseline", default="hf-longformer",
                        help="model the ratios divide by (default hf-longformer; 'none' for no "
                             "ratios)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/benchmark/benchmark.json",
                        help="JSON results (default runs/benchmark/benchmark.json); plots go "
                             "beside it")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0:
        parser.error("--steps must be at least 1 and --warmup_steps at least 0")
    return args


def settings_from_args(args) -> benchmark.BenchmarkSettings:
    device = (("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
              else args.device)
    defaults = benchmark.DEVICE_DEFAULTS[device]
    pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
    models = benchmark.select_models(args.models)
    baseline = None if args.baseline.lower() == "none" else args.baseline
    if baseline is not None and baseline not in models:
        if args.baseline != parse_args([]).baseline:
            raise ValueError(f"--baseline {baseline} is not among --models {','.join(models)}")
        baseline = None  # the default baseline, not benchmarked this time: no ratios
    return benchmark.BenchmarkSettings(
        models=models,
        lengths=(benchmark.parse_int_list(args.lengths) if args.lengths
                 else list(defaults["lengths"])),
        device=device, dtype=args.dtype,
        hidden_size=pick(args.hidden_size, "hidden_size"),
        num_layers=pick(args.num_layers, "num_layers"),
        num_heads=pick(args.num_heads, "num_heads"),
        intermediate_size=pick(args.intermediate_size, "intermediate_size"),
        window=args.window, global_tokens=args.global_tokens,
        tokens_per_step=(None if args.batch_size is not None
                         else pick(args.tokens_per_step, "tokens_per_step")),
        batch_size=args.batch_size, warmup_steps=args.warmup_steps, steps=args.steps,
        optimizer_step=not args.no_optimizer_step, baseline=baseline, seed=args.seed,
        inference=args.inference, compile=args.compile,
        model_config=parse_config_overrides(args.model_config))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        results = benchmark.run_benchmark(settings, output=args.output,
                                          progress=not args.no_progress)
    except ValueError as error:  # unknown model, bad length, ...
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if failed(results) else 0


if __name__ == "__main__":
    sys.exit(main())
