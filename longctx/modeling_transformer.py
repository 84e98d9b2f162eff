"""`longctx-transformer`: the dense baseline. Absolute learned positions and softmax attention
over every pair of tokens (SDPA); an encoder, or a decoder with a key/value cache."""

from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast

from .attention_dense import dense_attention, dense_attention_reference
from .configuration_transformer import LongctxTransformerConfig
from .modeling_blocks import (
    Embeddings,
    LongctxPreTrainedModel,
    ResidualBlock,
    check_attention_mask,
    check_positions,
    final_norm,
    input_shape,
    key_padding_mask,
    merge_heads,
    position_ids_from_mask,
    split_heads,
)
from .modeling_heads import ForCausalLM, ForMaskedLM, ForQuestionAnswering, ForSequenceClassification


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

    def forward(self, hidden, key_padding_mask=None, past_key_values=None, output_attentions=False):
        q, k, v = (split_heads(proj(hidden), self.num_heads) for proj in (self.query, self.key, self.value))
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (batch, heads, past + new, dim)
        dropout_p = self.dropout_p if self.training else 0.0
        kernel_args = dict(key_padding_mask=key_padding_mask, causal=self.causal, dropout_p=dropout_p)
        if output_attentions:  # SDPA cannot return weights: the explicit path computes the same
            out, weights = dense_attention_reference(q, k, v, **kernel_args)
        else:
            out, weights = dense_attention(q, k, v, **kernel_args), None
        return self.output(merge_heads(out)), weights


class LongctxTransformerPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxTransformerConfig
    _no_split_modules = ["ResidualBlock"]


class LongctxTransformerModel(LongctxTransformerPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(
            ResidualBlock(config, DenseSelfAttention(config, i)) for i in range(config.num_hidden_layers))
        self.final_norm = final_norm(config)
        self.output_size = config.hidden_size
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        batch, length = input_shape(input_ids, inputs_embeds)
        cache = self._cache(past_key_values, use_cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, batch, past_length + length)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, past_length, length, device)
        check_positions(position_ids, self.config.max_position_embeddings)

        hidden = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        all_hidden, all_weights = (), ()
        padding = key_padding_mask(attention_mask)
        for layer in self.layers:
            all_hidden += (hidden,)
            hidden, weights = layer(hidden, key_padding_mask=padding, past_key_values=cache,
                                    output_attentions=output_attentions)
            all_weights += (weights,)
        hidden = self.final_norm(hidden)
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden, past_key_values=cache,
            hidden_states=all_hidden + (hidden,) if output_hidden_states else None,
            attentions=all_weights if output_attentions else None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def _cache(self, past_key_values, use_cache):
        """Decoders keep keys and values for `generate()`; encoders have nothing to cache."""
        if not self.config.is_decoder:
            if past_key_values is not None:
                raise ValueError("past_key_values is only for decoders; this model has is_decoder=False.")
            return None
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if past_key_values is None and use_cache:
            return DynamicCache(config=self.config)
        return past_key_values


class LongctxTransformerForCausalLM(ForCausalLM, LongctxTransformerPreTrainedModel, GenerationMixin):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForMaskedLM(ForMaskedLM, LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForSequenceClassification(ForSequenceClassification, LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel


class LongctxTransformerForQuestionAnswering(ForQuestionAnswering, LongctxTransformerPreTrainedModel):
    backbone_class = LongctxTransformerModel
