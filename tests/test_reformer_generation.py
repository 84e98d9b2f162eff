"""`longctx-reformer` generation with the bucket cache (generation_cache="buckets", the default):
exactly the recompute path where no layer hashes; a slow dense reference of the cached step where
LSH layers hash; generate() feeding one token per step, left-padded batches and beam search; the
recompute option still a full forward over the prefix."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.attention_lsh import lsh_hash, random_rotations
from longctx.compat import cache_of
from longctx.modeling_blocks import merge_heads, split_heads
from longctx.modeling_reformer import DecodeStep, ReformerBucketCache, ReformerRecomputeCache

VOCAB = 64
BASE = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=256, hidden_act="gelu", is_decoder=True, hash_seed=5,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
# No layer hashes: every test sequence fits one LSH chunk; local chunks of 4 are exercised.
UNHASHED = dict(BASE, attn_layers=["local", "lsh", "local"], lsh_attn_chunk_length=64,
                local_attn_chunk_length=4)
LOCAL_ONLY = dict(BASE, attn_layers=["local", "local"], local_attn_chunk_length=4)
HASHED = dict(BASE, attn_layers=["local", "lsh", "lsh"], lsh_attn_chunk_length=4,
              local_attn_chunk_length=4, num_hashes=2, num_buckets=[4, 2])


def model_for(fields, seed=0, **overrides):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("longctx-reformer", **{**fields, **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def prompts(lengths, seed=1):
    """Left-padded prompts (batch, max(lengths)) and their mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[row, width - n:] = 1
    return ids, mask


def step_logits(model, ids, mask, prefill: int):
    """Logits of each token after the first `prefill`, fed one at a time with the model's cache."""
    out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
    cache, pieces = cache_of(out), []
    for t in range(prefill, ids.shape[1]):
        out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache, use_cache=True)
        cache = cache_of(out)
        pieces.append(out.logits)
    return torch.cat(pieces, dim=1), cache


def generate(model, ids, mask, **options):
    options = dict(dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0),
                   **options)
    return model.generate(ids, attention_mask=mask, **options)


def both_caches(fields, run, **overrides):
    """run(model) with the bucket cache and with the recompute cache, on the same weights."""
    model = model_for(fields, **overrides)
    buckets = run(model)
    model.config.generation_cache = "recompute"
    return buckets, run(model)


# ------------------------------------------------------------- (a) exact where nothing is hashed
@pytest.mark.parametrize("fields", [UNHASHED, LOCAL_ONLY], ids=["lsh-unhashed", "local-only"])
def test_bucket_cache_equals_recompute_where_nothing_is_hashed(fields):
    ids, mask = prompts([11, 6, 14], seed=2)
    (got, cache), (want, _) = both_caches(fields, lambda m: step_logits(m, ids, mask, prefill=5))
    assert isinstance(cache, ReformerBucketCache) and cache.seen == ids.shape[1]
    real = mask[:, 5:].bool()
    torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)
    tokens = both_caches(fields, lambda m: generate(m, ids, mask, max_new_tokens=20))
    assert torch.equal(*tokens)


def test_local_cache_keeps_only_the_chunks_still_looked_at():
    model = model_for(LOCAL_ONLY)
    ids, mask = prompts([9], seed=3)
    out = model(ids, attention_mask=mask, use_cache=True)
    cache = cache_of(out)
    for _ in range(24):  # 33 tokens: chunks of 4, one chunk back -> columns from 28 on are kept
        out = model(ids[:, :1], cache=cache, use_cache=True)
    assert cache.seen == 33 and int(cache.lengths[0]) == 33
    assert all(state.keys.first == 28 for state in cache.layers), [
        state.keys.first for state in cache.layers]


# ------------------------------------------------------------- (b) the hashed step vs a reference
def reference_lsh_step(attention, hidden, lengths, rotations, num_buckets, rounds):
    """The LSH layer's output for the token after the first lengths[b] of each (right-aligned)
    row of hidden (batch, length, hidden_size), computed densely: per round, softmax over the
    earlier real keys in the token's bucket, plus the token's own key at -1e5; rounds combined by
    softmax of their logsumexps. Output projection included."""
    normed = attention.layer_norm(hidden)
    qk = split_heads(attention.query_key(normed), attention.num_heads).double()
    v = split_heads(attention.value(normed), attention.num_heads).double()
    batch, heads, _, dim = qk.shape
    buckets = lsh_hash(qk.float(), num_buckets, rounds, rotations=rotations)
    buckets = buckets.view(batch, heads, rounds, -1)  # (batch, heads, rounds, length)
    out = torch.zeros(batch, heads, 1, dim, dtype=torch.float64)
    for b in range(batch):
        t = int(lengths[b])
        for h in range(heads):
            keys = qk[b, h, :t + 1] / qk[b, h, :t + 1].pow(2).mean(-1, keepdim=True).add(
                1e-6).sqrt() / math.sqrt(dim)
            dots = keys @ qk[b, h, t]  # (t + 1,)
            outs, lses = [], []
            for r in range(rounds):
                same = buckets[b, h, r, :t + 1] == buckets[b, h, r, t]
                scores = torch.where(same, dots, torch.full_like(dots, -1e9))
                scores[t] = -1e5
                lses.append(torch.logsumexp(scores, 0))
                outs.append(torch.softmax(scores, 0) @ v[b, h, :t + 1])
            shares = torch.softmax(torch.stack(lses), 0)
            out[b, h, 0] = sum(share * o for share, o in zip(shares, outs))
    return attention.output(merge_heads(out.float()))


def right_aligned(hidden_rows):
    """Rows of different lengths -> (batch, max length, width), real entries first."""
    width = max(row.shape[0] for row in hidden_rows)
    batch = torch.zeros(len(hidden_rows), width, hidden_rows[0].shape[1])
    for b, row in enumerate(hidden_rows):
        batch[b, :row.shape[0]] = row
    return batch


@pytest.mark.parametrize("hash_seed", [5, None])
def test_hashed_step_equals_dense_reference(hash_seed):
    """An LSH layer's cached steps after a prompt the full kernel hashed: each step's output equals
    the reference over every earlier key in the token's bucket (two rounds, factorised buckets,
    rows of different lengths), and the rotations stay those of the prompt."""
    model = model_for(HASHED, hash_seed=hash_seed)
    attention = model.model.layers[1].attention
    torch.manual_seed(7)
    prompt_lengths, steps = torch.tensor([12, 7]), 10
    rows = [torch.randn(n + steps, 32) for n in prompt_lengths.tolist()]
    prompt = right_aligned([row[:n] for row, n in zip(rows, prompt_lengths.tolist())])
    padding = torch.arange(prompt.shape[1])[None, :] < prompt_lengths[:, None]
    record = {}
    with torch.no_grad():
        attention(prompt, key_padding_mask=padding, record=record)
        state, lengths = record[1], prompt_lengths.clone()
        rotations = (random_rotations(2, 16, [4, 2], 2, seed=hash_seed) if hash_seed is not None
                     else None)
        for i in range(steps):
            step = DecodeStep(lengths, int(lengths.max()), 64)
            new = torch.stack([row[n + i] for row, n in zip(rows, prompt_lengths.tolist())])
            got = attention.decode(new[:, None], state, step)
            if rotations is None:  # drawn once, at the first step, and kept
                rotations = state.rotations
            assert torch.equal(state.rotations, rotations)
            full = right_aligned([row[:n + i + 1] for row, n in zip(rows,
                                                                    prompt_lengths.tolist())])
            want = reference_lsh_step(attention, full, lengths, rotations, [4, 2], 2)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            lengths = lengths + 1


def test_hashed_model_steps_use_the_same_rotations_as_the_prompt():
    """Without hash_seed the prompt's forward draws the rotations; the steps keep them (two
    generations from the same RNG state agree, whatever is drawn from it in between)."""
    model = model_for(HASHED, hash_seed=None)
    ids, mask = prompts([13, 9], seed=4)
    torch.manual_seed(3)
    first, cache = step_logits(model, ids, mask, prefill=9)
    rotations = [s.rotations for s in cache.layers if hasattr(s, "rotations")]
    assert all(r is not None for r in rotations)
    torch.manual_seed(3)
    out = model(ids[:, :9], attention_mask=mask[:, :9], use_cache=True)
    again = cache_of(out)
    pieces = []
    for t in range(9, ids.shape[1]):
        torch.randn(100)  # the global RNG moves between steps: the hash must not
        out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=again, use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), first, rtol=0, atol=0)


# ------------------------------------------------------------- (c) generate()
@pytest.mark.parametrize("fields", [UNHASHED, HASHED], ids=["unhashed", "hashed"])
def test_generate_feeds_one_token_per_step(fields):
    model = model_for(fields)
    ids, mask = prompts([7, 4], seed=5)
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True)
    generate(model, ids, mask, max_new_tokens=6)
    hook.remove()
    assert lengths == [7] + [1] * 5, lengths


def test_left_padded_rows_generate_what_they_generate_alone_in_the_hashed_regime():
    """Prompt lengths 7 and 5 both run at 8 tokens inside (chunks of 4), so the prompt's hashed
    forward is the same alone and in the batch; the cached steps then see only their row."""
    model = model_for(HASHED)
    ids, mask = prompts([7, 5], seed=6)
    batch = generate(model, ids, mask, max_new_tokens=16)
    for row in range(2):
        real = mask[row].bool()
        alone = generate(model, ids[row:row + 1, real], mask[row:row + 1, real],
                         max_new_tokens=16)
        assert torch.equal(batch[row, -16:], alone[0, -16:]), row


def test_beam_search_equals_recompute_where_nothing_is_hashed():
    ids, mask = prompts([9, 5], seed=7)
    tokens = both_caches(UNHASHED, lambda m: generate(m, ids, mask, num_beams=2,
                                                      max_new_tokens=10))
    assert torch.equal(*tokens)


def test_beam_search_runs_and_reorders_the_cache_in_the_hashed_regime():
    model = model_for(HASHED)
    ids, mask = prompts([9, 5], seed=8)
    beams = generate(model, ids, mask, num_beams=2, max_new_tokens=10, num_return_sequences=2)
    assert beams.shape == (4, 19)
    cache = cache_of(model(ids, attention_mask=mask, use_cache=True))
    before = [s.keys.data.clone() for s in cache.layers]
    cache.reorder_cache(torch.tensor([1, 1]))
    for old, state in zip(before, cache.layers):
        assert torch.equal(state.keys.data, old[[1, 1]])
    assert cache.lengths.tolist() == [5, 5]


@pytest.mark.parametrize("cache_name", ["cache", "past_key_values"])
def test_both_cache_names_reach_the_bucket_cache(cache_name):
    model = model_for(UNHASHED)
    ids, mask = prompts([8], seed=9)
    cache = cache_of(model(ids[:, :6], use_cache=True))
    out = model(ids[:, 6:7], use_cache=True, **{cache_name: cache})
    assert cache_of(out) is cache and cache.seen == 7
    full = model(ids[:, :7], use_cache=False).logits[:, -1:]
    torch.testing.assert_close(out.logits, full, rtol=0, atol=1e-5)


def test_cached_step_refuses_attention_weights_with_the_fix():
    model = model_for(HASHED)
    ids, _ = prompts([8], seed=10)
    cache = cache_of(model(ids, use_cache=True))
    with pytest.raises(ValueError, match="generation_cache='recompute'"):
        model(ids[:, :1], cache=cache, use_cache=True, output_attentions=True)


def test_training_mode_builds_no_bucket_cache():
    model = model_for(HASHED).train()
    ids, _ = prompts([8], seed=11)
    assert cache_of(model(ids, use_cache=True)) is None


# ------------------------------------------------------------- (d) the recompute option
def test_recompute_option_equals_a_full_forward_over_the_prefix():
    model = model_for(HASHED, generation_cache="recompute")
    ids, mask = prompts([13, 8], seed=12)
    got, cache = step_logits(model, ids, mask, prefill=5)
    assert isinstance(cache, ReformerRecomputeCache)
    for i, t in enumerate(range(5, ids.shape[1])):
        prefix = model(ids[:, :t + 1], attention_mask=mask[:, :t + 1]).logits[:, -1]
        real = mask[:, t].bool()
        torch.testing.assert_close(got[:, i][real], prefix[real], rtol=1e-5, atol=1e-6)


def test_bad_generation_cache_raises_naming_the_field():
    with pytest.raises(ValueError, match="generation_cache='fast'.*'buckets'.*'recompute'"):
        AutoConfig.for_model("longctx-reformer", **dict(HASHED, generation_cache="fast"))


def test_several_tokens_in_one_cached_call_equal_one_at_a_time():
    model = model_for(HASHED)
    ids, mask = prompts([12, 9], seed=13)
    one_at_a_time, _ = step_logits(model, ids, mask, prefill=6)
    cache = cache_of(model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True))
    together = model(ids[:, 6:], attention_mask=mask, cache=cache, use_cache=True).logits
    torch.testing.assert_close(together, one_at_a_time, rtol=0, atol=1e-6)
    assert cache.seen == ids.shape[1]
