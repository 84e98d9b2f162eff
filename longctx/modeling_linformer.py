"""`longctx-linformer`: self-attention with linear complexity (Wang et al. 2020, "Linformer").

Keys and values are projected along the sequence, from n = `max_position_embeddings`
positions down to k = `projection_dim` rows, by learned matrices E (keys) and F (values); each
token's query then attends those k rows, so a layer costs O(length x k) time and memory::

    head = softmax(q (E^T k)^T / sqrt(head_dim)) (F^T v)      q: (length, d); E, F: (n, k)

Use (an encoder: masked LM, sequence classification, question answering)::

    import longctx
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("longctx-linformer", max_position_embeddings=4096,
                                  projection_dim=256, sharing="headwise", num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    logits = model(input_ids, attention_mask=attention_mask).logits

Inputs may be shorter than n; padded batches give each sample's own result. With
`output_attentions=True` the weights are (batch, heads, length, projection_dim): each query's
distribution over the k projected rows (there is no per-token weight).

Paper, lucidrains' `linformer` 0.2.3 (`LinformerSelfAttention`) and longctx compared
(tests/test_linformer_reference.py maps lucidrains' weights into one longctx layer and checks
outputs and input gradients within 1e-5):

- Sharing. Paper: E_i, F_i per head, with headwise, key-value and layerwise sharing as
  options. lucidrains: one E and one F per layer, always shared by the heads (the paper's
  headwise); `share_kv=True` shares E = F *and* uses the keys as values (W_V = W_K), more than
  the paper's key-value sharing; no per-head or layerwise mode; `one_kv_head` (one key/value
  head for all queries) is its own addition. longctx: the paper's four modes (`sharing`);
  "key-value" shares E = F only, values keep their own projection W_V.
- Inputs shorter than n. Paper: E and F are defined for one length n; shorter inputs are not
  discussed. lucidrains: the first `length` rows of its (n, k) E and F (the first `length`
  columns of the paper's k x n E). longctx: row j of E and F belongs to position j: the same
  rows for an unpadded input, and for a padded one each real token uses the row of its
  position (counting real tokens, as position embeddings do), so a left-padded sample gets the
  rows it would get alone.
- Padding. Paper: not discussed. lucidrains: no mask; padded positions are projected into
  every one of the k rows, so padding changes every token's output. longctx: the keys and
  values of padded positions are zeroed *before* the projection, so they never leak in; a
  padded batch equals each sample run alone.
- Bias. E and F have no bias in any of the three. lucidrains' query/key/value projections have
  no bias (its output projection has one); longctx's have biases, as its other attentions and
  BERT: a key's bias is part of the key, so it is projected with it (E^T (x W_K + b_K)), which
  is exactly the paper's E (K W_K) with a biased W_K. Mapping lucidrains' weights sets our
  query/key/value biases to zero.
- Scaling: 1 / sqrt(head_dim) on q . (projected key) in all three.
- Dropout: on the (length x k) attention probabilities, in lucidrains and longctx (the paper
  does not say where its dropout goes).
- Initialisation. Paper: its proofs use random Gaussian projections (entries N(0, 1/k)); how the
  trained E, F start is not stated. lucidrains: U(+-1/sqrt(k)). longctx: N(0, 1/n), so that at
  full length a projected key has the scale of one key (with variance ~1/k per entry, projected
  keys grow as sqrt(n/k), which saturates the softmax at large n).
- Causality. The paper trains bidirectional encoders (masked LM pretraining); the projection
  mixes all positions. lucidrains' `LinformerLM` applies no causal mask either. longctx
  refuses `is_decoder=True` (and has no causal LM head) with a ValueError.
- Not implemented from the paper: a projected dimension that differs per layer, and pooling or
  convolution in place of E and F.
"""

import torch
from torch import nn
from transformers import initialization as init

from .attention_dense import dense_attention, dense_attention_reference
from .configuration_linformer import NO_CAUSAL_MODEL, LongctxLinformerConfig
from .modeling_blocks import (
    LongctxPreTrainedModel,
    StackedBackbone,
    check_attention_mask,
    input_shape,
    key_padding_mask,
    merge_heads,
    position_ids_from_mask,
    split_heads,
)
from .modeling_heads import ForMaskedLM, ForQuestionAnswering, ForSequenceClassification


def project_sequence(x, projection, rows=None, key_padding_mask=None):
    """Mixes a sequence into `k` rows along its length.

    x: (batch, heads, length, dim) keys or values; projection: (heads or 1, n, k), E or F.
    rows: None for positions 0..length-1, else (batch, length) long, the row of E for each token.
    key_padding_mask: (batch, length) bool, True for real tokens; padded tokens are zeroed
    before the projection, so they never reach the k rows.
    Returns (batch, heads, k, dim).
    """
    if key_padding_mask is not None:
        x = x.masked_fill(~key_padding_mask[:, None, :, None], 0.0)
    if rows is None:
        weights = projection[:, : x.shape[2]]  # (heads or 1, length, k)
        return torch.einsum("hlk,bhld->bhkd", weights, x)
    weights = projection[:, rows].transpose(0, 1)  # (batch, heads or 1, length, k)
    return torch.einsum("bhlk,bhld->bhkd", weights, x)


class SequenceProjection(nn.Module):
    """E or F: one learned (n, k) matrix, or one per head (`num_matrices`). No bias (paper)."""

    def __init__(self, config, num_matrices: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_matrices, config.max_position_embeddings,
                                               config.projection_dim))
        self.reset_parameters()

    def reset_parameters(self):
        # N(0, 1/n): at full length a projected row has the scale of one token (module doc).
        init.normal_(self.weight, mean=0.0, std=self.weight.shape[1] ** -0.5)


class LinformerSelfAttention(nn.Module):
    """Projects queries, keys and values; mixes keys (E) and values (F) into k rows; attends."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.dropout_p = config.attention_probs_dropout_prob
        for name in ("query", "key", "value", "output"):
            setattr(self, name, nn.Linear(config.hidden_size, config.hidden_size))
        # Layerwise sharing: the backbone owns the one matrix and passes it to every layer.
        self.key_projection = self.value_projection = None
        if config.sharing != "layerwise":
            per_head = self.num_heads if config.sharing == "none" else 1
            self.key_projection = SequenceProjection(config, per_head)
            if config.sharing != "key-value":
                self.value_projection = SequenceProjection(config, per_head)

    def forward(self, hidden, key_padding_mask=None, cache=None, output_attentions=False,
                projection_rows=None, layerwise_projection=None):
        q, k, v = (split_heads(proj(hidden), self.num_heads)
                   for proj in (self.query, self.key, self.value))
        key_matrix, value_matrix = self._matrices(layerwise_projection)
        # keys and values mixed into the k projected rows: (batch, heads, k, dim)
        k = project_sequence(k, key_matrix, projection_rows, key_padding_mask)
        v = project_sequence(v, value_matrix, projection_rows, key_padding_mask)
        dropout_p = self.dropout_p if self.training else 0.0
        if output_attentions:  # SDPA cannot return weights: the explicit path computes the same
            out, weights = dense_attention_reference(q, k, v, dropout_p=dropout_p)
        else:
            out, weights = dense_attention(q, k, v, dropout_p=dropout_p), None
        return self.output(merge_heads(out)), weights

    def _matrices(self, layerwise_projection):
        """(E, F) as (heads or 1, n, k) tensors, per the config's sharing mode."""
        keys = self.key_projection if self.key_projection is not None else layerwise_projection
        values = self.value_projection if self.value_projection is not None else keys
        return keys.weight, values.weight


class LongctxLinformerPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxLinformerConfig
    _no_split_modules = ["ResidualBlock"]

    def _init_weights(self, module):
        if isinstance(module, SequenceProjection):
            module.reset_parameters()
        else:
            super()._init_weights(module)


class LongctxLinformerModel(StackedBackbone, LongctxLinformerPreTrainedModel):
    attention_class = LinformerSelfAttention

    def _build_shared_modules(self, config):
        # Layerwise sharing: one matrix for every layer, passed to each in `layer_inputs`.
        self.layerwise_projection = (SequenceProjection(config, 1)
                                     if config.sharing == "layerwise" else None)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                **kwargs):
        batch, length = input_shape(input_ids, inputs_embeds, self.dtype)
        check_attention_mask(attention_mask, batch, length)
        rows = None  # fast path: tokens at positions 0..length-1 use rows 0..length-1 of E and F
        if position_ids is not None or key_padding_mask(attention_mask) is not None:
            device = (input_ids if input_ids is not None else inputs_embeds).device
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, 0, length, device)
            rows = position_ids.expand(batch, length)
        layer_inputs = {"projection_rows": rows,
                        "layerwise_projection": self.layerwise_projection}
        return super().forward(input_ids, attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, layer_inputs=layer_inputs, **kwargs)


class LongctxLinformerForMaskedLM(ForMaskedLM, LongctxLinformerPreTrainedModel):
    backbone_class = LongctxLinformerModel


class LongctxLinformerForSequenceClassification(ForSequenceClassification,
                                                LongctxLinformerPreTrainedModel):
    backbone_class = LongctxLinformerModel


class LongctxLinformerForQuestionAnswering(ForQuestionAnswering, LongctxLinformerPreTrainedModel):
    backbone_class = LongctxLinformerModel


class LongctxLinformerForCausalLM(LongctxLinformerPreTrainedModel):
    """Registered only so that `AutoModelForCausalLM` says why there is none (instead of
    transformers' generic "Unrecognized configuration class")."""

    def __init__(self, config, *args, **kwargs):
        raise ValueError(f"AutoModelForCausalLM with longctx-linformer: {NO_CAUSAL_MODEL}.")
