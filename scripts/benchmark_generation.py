"""The generation benchmark: tokens/s and peak memory of greedy `generate()` against prompt length.

    python scripts/benchmark_generation.py            # every decoder, CPU prompts 1K to 16K
    python scripts/benchmark_generation.py --quick    # a tiny run of seconds
    python scripts/benchmark_generation.py --models hf-gpt2,longctx-transformer \\
        --prompt_lengths 1024,8192 --new_tokens 64 --output runs/gen/bench.json

For every (model, prompt length) it prints total tokens/s (new tokens / generate() seconds),
decode tokens/s (the steps after the prefill forward, timed separately), ms per decoded token,
peak memory growth and ratios against --baseline (transformers' GPT-2 of the same size) at the
same prompt length, within this run; it writes them with the settings, definitions and
environment to --output (JSON; an existing file is refused without --overwrite) and plots of
decode tokens/s and memory against prompt length beside it. Models: hf-gpt2, hf-reformer,
longctx-transformer, longctx-longformer, longctx-transfo-xl, longctx-transfo-xl-mem1024,
longctx-reformer. The logic lives in `longctx/experiments/benchmark_generation.py`.
"""

import argparse
import sys
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from longctx.experiments import benchmark_generation as bench
from longctx.experiments.benchmark import parse_int_list

DEFAULT_OUTPUT = "runs/benchmark-generation/generation.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(bench.DEFAULT_MODELS),
                        help=f"comma-separated (default: {','.join(bench.DEFAULT_MODELS)}); "
                             f"known: {', '.join(bench.MODELS)}")
    parser.add_argument("--prompt_lengths", default=None,
                        help="comma-separated prompt lengths (default: CPU 1024 to 16384, CUDA "
                             "1024 to 32768)")
    parser.add_argument("--new_tokens", type=int, default=None,
                        help="tokens each generate() call makes, exactly (default 128)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed generate() calls per cell; the median is reported "
                             "(default 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed generate() calls per cell first (default 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda if available (default)")
    size = parser.add_argument_group("model size, the same for every model (defaults: CPU "
                                     "256/2/4/1024, CUDA 512/6/8/2048)")
    size.add_argument("--hidden_size", type=int, default=None)
    size.add_argument("--num_layers", type=int, default=None)
    size.add_argument("--num_heads", type=int, default=None)
    size.add_argument("--intermediate_size", type=int, default=None)
    parser.add_argument("--window", type=int, default=None,
                        help="longctx-longformer attention_window (default 512)")
    parser.add_argument("--xl_memory", type=int, default=None,
                        help="longctx-transfo-xl mem_len (default 512; the model "
                             "longctx-transfo-xl-mem1024 has 1024)")
    parser.add_argument("--gpt2_positions", type=int, default=None,
                        help="build hf-gpt2 with this n_positions (e.g. 1024, as released) "
                             "instead of for each length; longer prompts are then reported as "
                             "unsupported")
    parser.add_argument("--max_seconds_per_generate", type=float, default=None,
                        help="skip a model at longer prompts once one generate() call took "
                             "longer than this (the skip is reported); default: never")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's); 1 steadies timings on a "
                             "machine shared with other jobs")
    parser.add_argument("--baseline", default=bench.BASELINE,
                        help=f"model the ratios divide by (default {bench.BASELINE}; 'none')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (64 wide, prompts 128 and 256, 8 new tokens, 1 repeat); "
                             "explicit flags still win")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help=f"JSON results (default {DEFAULT_OUTPUT}); plots go beside it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output (and its plots) instead of refusing")
    return parser.parse_args(argv)


def settings_from_args(args) -> bench.GenerationSettings:
    device = (("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
              else args.device)
    defaults = {**bench.DEVICE_DEFAULTS[device], "new_tokens": 128, "repeats": 3, "warmup": 1,
                "window": 512, "xl_memory": 512}
    if args.quick:
        defaults.update(bench.QUICK)
    def pick(key):
        return defaults[key] if getattr(args, key) is None else getattr(args, key)

    models = bench.select_models(args.models)
    baseline = None if args.baseline.lower() == "none" else args.baseline
    if baseline is not None and baseline not in models:
        if args.baseline != bench.BASELINE:
            raise ValueError(f"--baseline {baseline} is not among --models {','.join(models)}")
        baseline = None  # the default baseline, not benchmarked this time: no ratios
    return bench.GenerationSettings(
        models=models,
        prompt_lengths=(parse_int_list(args.prompt_lengths) if args.prompt_lengths
                        else list(defaults["prompt_lengths"])),
        new_tokens=pick("new_tokens"), device=device, hidden_size=pick("hidden_size"),
        num_layers=pick("num_layers"), num_heads=pick("num_heads"),
        intermediate_size=pick("intermediate_size"), window=pick("window"),
        xl_memory=pick("xl_memory"), repeats=pick("repeats"), warmup=pick("warmup"),
        gpt2_positions=args.gpt2_positions,
        max_seconds_per_generate=args.max_seconds_per_generate, baseline=baseline,
        seed=args.seed, threads=args.threads)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
        results = bench.run_generation_benchmark(settings, output=args.output,
                                                 overwrite=args.overwrite)
    except ValueError as error:  # unknown model, bad length, existing output, ...
        print(f"error: {error}", file=sys.stderr)
        return 2
    return bench.exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
