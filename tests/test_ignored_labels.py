"""A batch whose labels are all ignored (-100; QA positions outside the input) has loss 0 on
every architecture and head: finite, on the autograd graph, with zero gradients -- so that
`loss.backward()` in a Trainer step works (Transformer-XL returned a constant 0 without a graph,
on which backward raises; the others NaN, which poisons the weights)."""

import pytest
import torch

from longctx import ARCHITECTURES

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
CONFIGS = {
    "longctx-transformer": TINY,
    "longctx-longformer": dict(TINY, attention_window=4),
    "longctx-linformer": dict(TINY, projection_dim=8),
    "longctx-reformer": dict(TINY, attn_layers=["lsh"], lsh_attn_chunk_length=4, num_buckets=4),
    "longctx-transfo-xl": dict(TINY, cutoffs=[100, 200], div_val=2),
}
BATCH, LENGTH = 2, 8
IGNORED = -100


def ignored_labels(head: str) -> dict:
    if head in ("AutoModelForCausalLM", "AutoModelForMaskedLM"):
        return dict(labels=torch.full((BATCH, LENGTH), IGNORED))
    if head == "AutoModelForSequenceClassification":
        return dict(labels=torch.full((BATCH,), IGNORED))
    outside = torch.full((BATCH,), LENGTH + 3)  # answers truncated away: no loss, as transformers
    return dict(start_positions=outside, end_positions=outside)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_all_labels_ignored_gives_zero_loss_with_zero_gradients(model_type):
    for head, cls in ARCHITECTURES[model_type].heads.items():
        torch.manual_seed(0)
        config = ARCHITECTURES[model_type].config(**CONFIGS[model_type],
                                                  is_decoder=head == "AutoModelForCausalLM")
        model = cls(config).train()
        ids = torch.randint(5, config.vocab_size, (BATCH, LENGTH))
        ids[:, 3] = 2  # a separator: Longformer's QA makes the question before it global
        loss = model(input_ids=ids, **ignored_labels(head)).loss
        assert loss is not None and loss.item() == 0.0, f"{model_type} {head}: loss {loss}"
        loss.backward()  # raises on a loss without a graph
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        assert gradients, f"{model_type} {head}: the loss reaches no parameter"
        assert all(torch.equal(g, torch.zeros_like(g)) for g in gradients), f"{model_type} {head}"
