"""What Reformer's LSH attention does that users may not assume (issue 19), measured and printed
(`pytest -s` shows the sizes): a decoder's logits at position t change when tokens after t
change, and a right-padded row differs from the same row alone. transformers' Reformer computes
the same way. The attention weights themselves never touch a future key (test_reformer.py checks
that); what moves is which past keys share t's sorted chunk, since t's place in the sort counts
the entries of every lower bucket, later tokens' included. Local attention layers, or inputs no
longer than `lsh_attn_chunk_length` (no hashing), have neither effect."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import longctx  # noqa: F401 -- registers longctx-reformer

LENGTH = 32
SETTINGS = {  # name -> config overrides; chunks of 4 so that 32 tokens make 8 sorted chunks
    "local + LSH, 1 hash": dict(),
    "local + LSH, 2 hashes": dict(num_hashes=2),
    "LSH + LSH": dict(attn_layers=["lsh", "lsh"]),
    "local only": dict(attn_layers=["local", "local"]),
    "LSH, input within one chunk": dict(lsh_attn_chunk_length=LENGTH),
}
EXACT = ("local only", "LSH, input within one chunk")


def decoder(**overrides):
    fields = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, attn_layers=["local", "lsh"], hash_seed=5,
                  lsh_attn_chunk_length=4, local_attn_chunk_length=4, num_buckets=4,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=True)
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-reformer", **{**fields, **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    # The initialisation's small weights make attention nearly uniform, which hides which keys a
    # query sees; weights of a trained model's scale make the effects show (as the conversion
    # tests redraw theirs).
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    return model


def random_ids(length, generator):
    return torch.randint(5, 261, (1, length), generator=generator)


@torch.no_grad()
def future_token_effect(model, trials=2):
    """The largest change of the logits at positions <= t when every token after t is redrawn,
    over t, and the logits' range for scale."""
    generator = torch.Generator().manual_seed(1)
    ids = random_ids(LENGTH, generator)
    logits = model(ids).logits[0]  # (length, vocab)
    largest = 0.0
    for t in range(LENGTH - 1):
        for _ in range(trials):
            changed = ids.clone()
            changed[0, t + 1:] = random_ids(LENGTH - t - 1, generator)
            moved = model(changed).logits[0, :t + 1] - logits[:t + 1]
            largest = max(largest, moved.abs().max().item())
    return largest, (logits.max() - logits.min()).item()


@torch.no_grad()
def right_padding_effect(model, lengths=(10, 14, 20, 27), seeds=(2, 3, 4)):
    """The largest difference, over its real positions, between a row right-padded to LENGTH and
    the same row alone, over a few rows (whether a row's sort changes depends on its tokens)."""
    largest = 0.0
    for real in lengths:
        for seed in seeds:
            ids = random_ids(real, torch.Generator().manual_seed(seed))
            padded = torch.cat([ids, torch.zeros(1, LENGTH - real, dtype=torch.long)], dim=1)
            mask = (torch.arange(LENGTH) < real).long()[None]
            alone = model(ids).logits[0]
            moved = model(padded, attention_mask=mask).logits[0, :real] - alone
            largest = max(largest, moved.abs().max().item())
    return largest


@pytest.mark.parametrize("setting", SETTINGS)
def test_lsh_logits_depend_on_later_tokens_and_on_right_padding(setting):
    model = decoder(**SETTINGS[setting])
    future, logit_range = future_token_effect(model)
    padding = right_padding_effect(model)
    print(f"\n{setting}: later tokens move earlier logits by up to {future:.3f} (logit range "
          f"{logit_range:.2f}); right padding moves them by up to {padding:.3f}")
    if setting in EXACT:  # what removes both effects: no hashing
        assert future == 0 and padding < 1e-5
    else:  # what the README and modeling_reformer.py's docstring state
        assert 1e-3 < future < logit_range
        assert 1e-3 < padding < logit_range
