"""Greedy generation speed of longctx-reformer with its two generation caches against transformers'
ReformerModelWithLMHead on the same weights (converted), issue 22:

    python scripts/profile_reformer_generation.py --prompt 1024 --new 128 --repeats 3

The models run interleaved, `--repeats` times each; the medians are printed with their ratios to
transformers'. Tokens/s counts the new tokens over the whole generate() call (prompt included).
`--profile NAME` prints a cProfile of one more generation of that model.
"""

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx.convert import convert_transformers_model


def build_transformers(args):
    """2 layers (local, LSH) x 256 wide, 4 heads, chunks of 64, one hash, the benchmark's sizes
    (longctx/experiments/benchmark.py: build_hf_reformer), as a decoder with an LM head."""
    config = transformers.ReformerConfig(
        vocab_size=320, hidden_size=args.hidden_size, num_attention_heads=4,
        attention_head_size=args.hidden_size // 4, feed_forward_size=4 * args.hidden_size,
        hidden_act="gelu", attn_layers=["local", "lsh"] * (args.layers // 2), num_hashes=1,
        lsh_attn_chunk_length=64, local_attn_chunk_length=64,
        num_buckets=2 ** ((2 * (args.prompt // 64)).bit_length() - 1), hash_seed=0,
        axial_pos_embds=True, axial_pos_shape=(32, 64),
        axial_pos_embds_dim=(args.hidden_size // 2, args.hidden_size // 2),
        max_position_embeddings=2048, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
        axial_pos_embds_init_std=0.02, is_decoder=True, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    return transformers.ReformerModelWithLMHead(config).eval()


def generation_time(model, prompt, new_tokens):
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return time.perf_counter() - start, out[:, prompt.shape[1]:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="models not to run")
    parser.add_argument("--profile", default=None, help="cProfile one more run of this model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = build_transformers(args)
    buckets = convert_transformers_model(reference)
    buckets.config.generation_cache = "buckets"
    recompute = convert_transformers_model(reference)
    recompute.config.generation_cache = "recompute"
    models = {"transformers": reference, "longctx-buckets": buckets,
              "longctx-recompute": recompute}
    models = {name: model for name, model in models.items() if name not in args.skip}
    prompt = torch.randint(3, 320, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    times, outputs = {name: [] for name in models}, {}
    for name, model in models.items():  # warm-up
        generation_time(model, prompt[:, :128], 4)
    for repeat in range(args.repeats):
        for name, model in models.items():
            seconds, outputs[name] = generation_time(model, prompt, args.new)
            times[name].append(seconds)
            print(f"repeat {repeat} {name}: {seconds:.2f} s", flush=True)
    print(f"\nprompt {args.prompt}, {args.new} new tokens, greedy, batch 1, "
          f"{args.layers} layers x {args.hidden_size}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats}")
    base = statistics.median(times["transformers"]) if "transformers" in times else None
    for name in models:
        median = statistics.median(times[name])
        ratio = f"  {base / median:.2f}x transformers" if base else ""
        print(f"{name:20s} {args.new / median:8.1f} tokens/s{ratio}")
    if "transformers" in outputs:
        for name, out in outputs.items():
            same = int((out == outputs["transformers"]).sum())
            print(f"{name:20s} {same}/{out.numel()} tokens equal to transformers'")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        generation_time(models[args.profile], prompt, args.new)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
