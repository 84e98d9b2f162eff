"""`longctx-transformer`: the dense baseline. Absolute learned positions and softmax attention
over every pair of tokens (SDPA); an encoder, or a decoder with a key/value cache."""

from torch import nn
from transformers.generation import GenerationMixin

from .attention_dense import dense_attention, dense_attention_reference
from .configuration_transformer import LongctxTransformerConfig
from .modeling_blocks import LongctxPreTrainedModel, StackedBackbone, merge_heads, split_heads
from .modeling_heads import (
    ForCausalLM,
    ForMaskedLM,
    ForQuestionAnswering,
    ForSequenceClassification,
)


class DenseSelfAttention(nn.Module):
    """Projects, reads/extends the cache, dispatches to the dense kernel, projects back."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.causal = config.is_decoder
        self.dropout_p = config.attention_probs_dropout_prob
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden, key_padding_mask=None, cache=None, output_attentions=False):
        q, k, v = (split_heads(proj(hidden), self.num_heads)
                   for proj in (self.query, self.key, self.value))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (batch, heads, past + new, dim)
        dropout_p = self.dropout_p if self.training else 0.0
        kernel_args = dict(key_padding_mask=key_padding_mask, causal=self.causal,
                           dropout_p=dropout_p)
        if output_attentions:  # SDPA cannot return weights: the explicit path computes the same
            out, weights = dense_attention_reference(q, k, v, **kernel_args)
        else:
            out, weights = dense_attention(q, k, v, **kernel_args), None
        return self.output(merge_heads(out)), weights


class LongctxTransformerPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxTransformerConfig
    _no_split_modules = ["ResidualBlock"]


class LongctxTransformerModel(StackedBackbone, LongctxTransformerPreTrainedModel):
    attention_class = DenseSelfAttention


class LongctxTransformerForCausalLM(ForCausalLM, LongctxTransformerPreTrainedModel,
                                    GenerationMixin):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForMaskedLM(ForMaskedLM, LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForSequenceClassification(ForSequenceClassification,
                                                  LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForQuestionAnswering(ForQuestionAnswering,
                                             LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel
