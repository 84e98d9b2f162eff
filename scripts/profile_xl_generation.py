"""Greedy generation speed of longctx-transfo-xl against transformers' GPT-2, same size (issue 22).

    PYTHONPATH=$PWD python scripts/profile_xl_generation.py [--repeats 5] [--threads 2] [--profile]

Both models: 2 layers x 256 wide, 4 heads, feed-forward 1,024, vocabulary 261 (bytes + specials),
no dropout, random weights, batch 1. Each generates `--new-tokens` (128) greedy tokens after a
random prompt of `--prompt` (1,024) ids; Transformer-XL with memories of `--memories` (512, 1,024)
states per layer, GPT-2 with its key-value cache (n_positions covers prompt + new tokens).

Timing: after a warm-up of every model, the models run in turn, `--repeats` rounds (interleaved, so
that a noisy shared machine slows them alike); per round, a model times one `generate()` (prefill
of the prompt + new tokens) and one prefill-only call (`generate(max_new_tokens=1)`: the prompt's
forward pass and the first token). Reported, as medians over the rounds:
- total tokens/s = new tokens / generate time,
- decode tokens/s = (new tokens - 1) / (generate time - prefill-only time): the per-token steps,
and each model's ratio to GPT-2 (>1: faster). `--profile` prints torch.profiler's top operators of
one Transformer-XL generate() (memory `--memories[0]`).
"""

import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import longctx  # noqa: F401 -- registers the longctx model types

VOCAB, WIDTH, LAYERS, HEADS, INNER = 261, 256, 2, 4, 1024


def build_gpt2(max_positions: int):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=max_positions, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
        n_inner=INNER, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
        eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def build_transfo_xl(mem_len: int):
    config = AutoConfig.for_model(
        "longctx-transfo-xl", is_decoder=True, vocab_size=VOCAB, hidden_size=WIDTH,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INNER,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, mem_len=mem_len,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config).eval()


def generate_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Wall time of one greedy generate() of exactly `new_tokens` tokens."""
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    seconds = time.perf_counter() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens, out.shape
    return seconds


def measure(models: dict, prompt: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """name -> (median total tokens/s, median decode tokens/s), the models interleaved."""
    for model in models.values():  # warm-up: builds kernels, fills allocator caches
        generate_seconds(model, prompt, new_tokens)
    totals = {name: [] for name in models}
    decodes = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            whole = generate_seconds(model, prompt, new_tokens)
            prefill = generate_seconds(model, prompt, 1)
            totals[name].append(new_tokens / whole)
            decodes[name].append((new_tokens - 1) / max(whole - prefill, 1e-9))
    return {name: (statistics.median(totals[name]), statistics.median(decodes[name]))
            for name in models}


def print_table(rates: dict, baseline: str):
    base_total, base_decode = rates[baseline]
    print(f"{'model':<22}{'total tok/s':>12}{'vs gpt2':>9}{'decode tok/s':>14}{'vs gpt2':>9}")
    for name, (total, decode) in rates.items():
        print(f"{name:<22}{total:>12.1f}{total / base_total:>9.2f}{decode:>14.1f}"
              f"{decode / base_decode:>9.2f}")


def print_profile(model, prompt: torch.Tensor, new_tokens: int, rows: int = 25):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_seconds(model, prompt, new_tokens)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt", type=int, default=1024, help="prompt length (ids)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--memories", type=int, nargs="+", default=[512, 1024],
                        help="Transformer-XL mem_len values")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's top ops of one Transformer-XL generate()")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error(f"--new-tokens={args.new_tokens}: at least 2 (decode = new tokens - 1)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prompt = torch.randint(1, VOCAB, (1, args.prompt))
    models = {"gpt2": build_gpt2(max(2048, args.prompt + args.new_tokens))}
    for memory in args.memories:
        models[f"transfo-xl mem {memory}"] = build_transfo_xl(memory)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads; prompt {args.prompt}, {args.new_tokens} new tokens "
          f"(greedy, batch 1), {args.repeats} interleaved rounds, medians", flush=True)
    print_table(measure(models, prompt, args.new_tokens, args.repeats), "gpt2")
    if args.profile:
        print_profile(models[f"transfo-xl mem {args.memories[0]}"], prompt, args.new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
