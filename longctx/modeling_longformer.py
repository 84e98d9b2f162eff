"""`longctx-longformer`: sliding-window attention plus global attention (Beltagy et al. 2020),
numerically transformers' Longformer (checkpoints convert with `python -m longctx.convert`).

Local attention runs an exact kernel of `attention_sliding` in O(length * window) (chunked SDPA,
or FlexAttention on CUDA: `config.sliding_window_kernel`);
tokens of `global_attention_mask` are seen by every token (through the regular key/value
projections) and see every token (through their own global query/key/value projections).
"""

import torch
from torch import nn
from transformers.generation import GenerationMixin

from .attention_dense import dense_attention
from .attention_sliding import (
    global_indices,
    sliding_window_attention,
    sliding_window_attention_reference,
    sliding_window_decode,
)
from .configuration_longformer import LongctxLongformerConfig
from .modeling_blocks import (
    LongctxPreTrainedModel,
    StackedBackbone,
    check_attention_mask,
    input_shape,
    merge_heads,
    split_heads,
)
from .modeling_heads import (
    ForCausalLM,
    ForMaskedLM,
    ForQuestionAnswering,
    ForSequenceClassification,
)


class LongformerSelfAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.window = config.one_sided_window(layer_idx)
        self.causal = config.is_decoder
        self.dropout_p = config.attention_probs_dropout_prob
        self.kernel = config.sliding_window_kernel
        names = ("query", "key", "value", "query_global", "key_global", "value_global", "output")
        for name in names:
            setattr(self, name, nn.Linear(config.hidden_size, config.hidden_size))

    def forward(self, hidden, key_padding_mask=None, cache=None, output_attentions=False,
                global_mask=None, block_masks=None):
        q, k, v = (split_heads(proj(hidden), self.num_heads)
                   for proj in (self.query, self.key, self.value))
        dropout_p = self.dropout_p if self.training else 0.0
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # block_masks: this forward's memo of Flex block masks, shared by the layers (same masks)
        options = dict(key_padding_mask=key_padding_mask, dropout_p=dropout_p,
                       block_masks=block_masks)
        if self.causal:
            out, weights = self._causal(q, k, v, output_attentions, **options)
        else:
            out, weights = self._windowed(q, k, v, output_attentions, global_key_mask=global_mask,
                                          **options)
            if global_mask is not None:
                out = self._global_rows(hidden, out, global_mask, key_padding_mask, dropout_p)
        return self.output(merge_heads(out)), weights

    def _causal(self, q, k, v, output_attentions, key_padding_mask, dropout_p, block_masks):
        if q.shape[2] != k.shape[2]:  # new tokens after a cache, which keeps only the recent keys
            if output_attentions:
                raise ValueError("output_attentions=True is not supported while decoding with a "
                                 "cache; run a full forward (use_cache=False) to get attention "
                                 "weights.")
            recent = None if key_padding_mask is None else key_padding_mask[:, -k.shape[2]:]
            return sliding_window_decode(q, k, v, window=self.window, key_padding_mask=recent,
                                         dropout_p=dropout_p), None
        return self._windowed(q, k, v, output_attentions, key_padding_mask=key_padding_mask,
                              causal=True, dropout_p=dropout_p, block_masks=block_masks)

    def _windowed(self, q, k, v, output_attentions, block_masks=None, **options):
        """(output, weights): every token over its window (and the global tokens, through the
        regular projections); the explicit path when weights are asked for, else a fast kernel."""
        if output_attentions:  # (batch, heads, length, length) weights
            return sliding_window_attention_reference(q, k, v, window=self.window, **options)
        return sliding_window_attention(q, k, v, window=self.window, kernel=self.kernel,
                                        block_masks=block_masks, **options), None

    def _global_rows(self, hidden, out, global_mask, key_padding_mask, dropout_p):
        """Global tokens attend every token through the global projections; their rows replace
        the local result (weights, when returned, keep the local ones for those rows)."""
        index, valid = global_indices(global_mask)
        length = hidden.shape[1]
        rows = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        q = split_heads(self.query_global(rows), self.num_heads)
        k, v = (split_heads(proj(hidden), self.num_heads)
                for proj in (self.key_global, self.value_global))
        global_out = dense_attention(q, k, v, key_padding_mask=key_padding_mask,
                                     dropout_p=dropout_p)
        # Scatter the valid rows back; padding entries of `index` go to a spare row, dropped after.
        target = torch.where(valid, index, length)[:, None, :, None].expand_as(global_out)
        spare = torch.nn.functional.pad(out, (0, 0, 0, 1))
        return spare.scatter(2, target, global_out)[:, :, :length]


class LongctxLongformerPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxLongformerConfig
    _no_split_modules = ["ResidualBlock"]

    def _default_globals(self) -> bool:
        """Whether a head adds its default global tokens (encoders only; an ablation turns it
        off)."""
        return self.config.default_global_attention and not self.config.is_decoder

    def _default_globals_for(self, input_ids, attention_mask, inputs_embeds) -> bool:
        """`_default_globals`, after checking the inputs they are built from: a wrong shape
        would otherwise fail while building them, in an IndexError or RuntimeError that names no
        argument. Encoders only, so the mask covers the new tokens alone."""
        if not self._default_globals():
            return False
        batch, length = input_shape(input_ids, inputs_embeds, self.dtype)
        check_attention_mask(attention_mask, batch, length)
        return True


class LongctxLongformerModel(StackedBackbone, LongctxLongformerPreTrainedModel):
    attention_class = LongformerSelfAttention

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, **kwargs):
        """`global_attention_mask` (batch, length): 1 for tokens that attend, and are attended by,
        every token; padding positions never are."""
        global_mask = self._global_mask(global_attention_mask, attention_mask, input_ids, kwargs)
        layer_inputs = {"global_mask": global_mask, "block_masks": {}}
        return super().forward(input_ids, attention_mask, layer_inputs=layer_inputs, **kwargs)

    def _global_mask(self, global_attention_mask, attention_mask, input_ids, kwargs):
        if global_attention_mask is None:
            return None
        if self.config.is_decoder:
            raise ValueError("global_attention_mask is for encoders: a causal Longformer "
                             "(is_decoder=True) has sliding-window attention only.")
        shape = input_shape(input_ids, kwargs.get("inputs_embeds"), self.dtype)
        if tuple(global_attention_mask.shape) != shape:
            raise ValueError(f"global_attention_mask has shape "
                             f"{tuple(global_attention_mask.shape)}; it must be (batch, length) = "
                             f"{shape}, 1 for global tokens and 0 elsewhere.")
        check_attention_mask(attention_mask, *shape)  # before it is combined with the mask
        mask = global_attention_mask.bool()
        if attention_mask is not None:
            mask = mask & attention_mask.bool()
        return mask if bool(mask.any()) else None


def first_token_global(input_ids, attention_mask, inputs_embeds=None):
    """Global attention on each row's first real token (the <s>/CLS a classifier pools)."""
    reference = input_ids if input_ids is not None else inputs_embeds
    batch, length = reference.shape[:2]
    first = 0 if attention_mask is None else attention_mask.to(torch.long).argmax(dim=1)
    mask = torch.zeros(batch, length, dtype=torch.long, device=reference.device)
    mask[torch.arange(batch, device=reference.device), first] = 1
    return mask


def question_global(input_ids, sep_token_id):
    """Global attention on the tokens before each row's first separator: <s> and the question."""
    if input_ids is None or sep_token_id is None:
        raise ValueError("Question answering puts global attention on the question, found from "
                         "input_ids and config.sep_token_id; pass global_attention_mask explicitly "
                         "with inputs_embeds or when sep_token_id is None.")
    is_sep = input_ids == sep_token_id
    if not bool(is_sep.any(dim=1).all()):
        raise ValueError(f"A row of input_ids has no separator (sep_token_id={sep_token_id}) after "
                         f"its question; encode (question, context) pairs, or pass "
                         f"global_attention_mask.")
    first_sep = is_sep.to(torch.long).argmax(dim=1, keepdim=True)
    return (torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < first_sep).long()


class LongctxLongformerForCausalLM(ForCausalLM, LongctxLongformerPreTrainedModel, GenerationMixin):
    backbone_class = LongctxLongformerModel


class LongctxLongformerForMaskedLM(ForMaskedLM, LongctxLongformerPreTrainedModel):
    backbone_class = LongctxLongformerModel

    # The explicit signatures matter: Trainer keeps only dataset columns named in forward's.
    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, labels=None,
                **kwargs):
        return super().forward(input_ids, attention_mask, labels=labels,
                               global_attention_mask=global_attention_mask, **kwargs)


class LongctxLongformerForSequenceClassification(ForSequenceClassification,
                                                 LongctxLongformerPreTrainedModel):
    backbone_class = LongctxLongformerModel

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None, labels=None,
                **kwargs):
        inputs_embeds = kwargs.get("inputs_embeds")
        if global_attention_mask is None and self._default_globals_for(input_ids, attention_mask,
                                                                       inputs_embeds):
            global_attention_mask = first_token_global(input_ids, attention_mask, inputs_embeds)
        return super().forward(input_ids, attention_mask, labels=labels,
                               global_attention_mask=global_attention_mask, **kwargs)


class LongctxLongformerForQuestionAnswering(ForQuestionAnswering, LongctxLongformerPreTrainedModel):
    backbone_class = LongctxLongformerModel

    def forward(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                start_positions=None, end_positions=None, **kwargs):
        if global_attention_mask is None and self._default_globals_for(
                input_ids, attention_mask, kwargs.get("inputs_embeds")):
            global_attention_mask = question_global(input_ids, self.config.sep_token_id)
        return super().forward(input_ids, attention_mask, start_positions=start_positions,
                               end_positions=end_positions,
                               global_attention_mask=global_attention_mask, **kwargs)
