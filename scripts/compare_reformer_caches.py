"""How often longctx-reformer's two generation caches pick different greedy tokens on a trained
model (issue 22): generation_cache="buckets" (each new token attends to the earlier keys of its
own LSH bucket) against "recompute" (a full forward over the prefix per token).

    python scripts/compare_reformer_caches.py CHECKPOINT \
        --text ../shared/data/books/austen-sense.txt --prompts 8 --prompt_length 256 --new 128

Prompts are byte windows spread evenly over the text. Printed: per prompt the first position
where the greedy continuations differ; differing positions per 1,000 generated tokens (all, and
before the first divergence, i.e. first divergences per 1,000 tokens generated identically); and,
teacher-forced on the recompute continuation, positions where the bucket cache's argmax differs
(per 1,000), which counts each disagreement once instead of its cascade. Both paths use the same
fixed rotations (--hash_seed).
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx.compat import cache_of


def prompts_from(text_path, count, length, tokenizer):
    ids = tokenizer(Path(text_path).read_text(encoding="utf-8"),
                    add_special_tokens=False)["input_ids"]
    stride = (len(ids) - length) // count
    return torch.tensor([ids[i * stride:i * stride + length] for i in range(count)])


def greedy(model, prompts, new, cache_kind):
    model.config.generation_cache = cache_kind
    with torch.no_grad():
        out = model.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[:, prompts.shape[1]:]


def bucket_argmax_on(model, prompts, continuation):
    """The bucket cache's greedy choice at each step, fed `continuation` (teacher forcing)."""
    model.config.generation_cache = "buckets"
    with torch.no_grad():
        out = model(prompts, use_cache=True)
        choices, cache = [out.logits[:, -1].argmax(-1)], cache_of(out)
        for t in range(continuation.shape[1] - 1):
            out = model(continuation[:, t:t + 1], cache=cache, use_cache=True)
            choices.append(out.logits[:, -1].argmax(-1))
    return torch.stack(choices, dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--text", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt_length", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--hash_seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    model.config.hash_seed = args.hash_seed
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    prompts = prompts_from(args.text, args.prompts, args.prompt_length, tokenizer)
    buckets = greedy(model, prompts, args.new, "buckets")
    recompute = greedy(model, prompts, args.new, "recompute")
    differ = buckets != recompute  # (prompts, new)
    first = [int(row.nonzero()[0]) if row.any() else args.new for row in differ]
    identical = sum(first)
    diverged = sum(f < args.new for f in first)
    forced = bucket_argmax_on(model, prompts, recompute) != recompute
    total = differ.numel()
    print(f"{args.prompts} prompts x {args.new} new tokens (prompt {args.prompt_length}), greedy, "
          f"hash_seed {args.hash_seed}")
    print("first differing position per prompt:", first)
    print(f"differing positions: {int(differ.sum())}/{total} = "
          f"{1000 * int(differ.sum()) / total:.1f} per 1,000 generated")
    print(f"first divergences: {diverged} in {identical + diverged} tokens generated up to them = "
          f"{1000 * diverged / max(identical + diverged, 1):.1f} per 1,000")
    print(f"teacher-forced on the recompute continuation: {int(forced.sum())}/{total} argmax "
          f"differ = {1000 * int(forced.sum()) / total:.1f} per 1,000")
    for row in range(min(2, args.prompts)):
        print(f"--- prompt {row} recompute: {tokenizer.decode(recompute[row])!r}")
        print(f"--- prompt {row} buckets:   {tokenizer.decode(buckets[row])!r}")


if __name__ == "__main__":
    main()
