"""Blocks every longctx architecture is built from: embeddings, feed-forward, the residual block,
the pretrained-model base, and the input checks shared by all backbones.

The backbone contract
---------------------
A backbone (`XModel`, what `AutoModel` builds and what every head holds as `self.model`) is
built as `XModel(config)`, initialises its weights once (`post_init`), and promises:

- `output_size`: the width of `last_hidden_state`, which the heads size their layers by
  (hidden_size; Reformer 2 * hidden_size, its two streams side by side).
- forward takes transformers' usual keywords: exactly one of `input_ids` (batch, length) or
  `inputs_embeds` (batch, length, hidden_size); `attention_mask` (batch, past + new length), 1
  for tokens and 0 for padding, left or right; `use_cache`, `output_attentions`,
  `output_hidden_states`, `return_dict` (each None takes the config's value: `output_flags`);
  the cache as `cache` or `past_key_values` (its name before transformers 5.24; `compat`);
  and the architecture's own inputs (e.g. Longformer's `global_attention_mask`).
- It returns `BaseModelOutputWithPast` (its tuple when `return_dict` is False; the heads always
  ask for the object and read fields by name):
  - `last_hidden_state`: (batch, new length, output_size), for the new tokens only;
  - the cache under the installed transformers' field name (`compat.CACHE_NAME`: `cache` from
    5.24 on, `past_key_values` before), None when there is none;
  - `hidden_states` (only when asked for): num_hidden_layers + 1 tensors, the input of every
    layer and then the final output; Reformer's are its second stream (hidden_size wide);
  - `attentions` (only when asked for): one tensor per layer, each query's weights over the
    keys, (batch, heads, new length, keys) where keys counts the cache too (Linformer: its
    `projection_dim` projected rows). Asking for them runs the explicit reference kernels.
- Encoder or decoder, as `config.is_decoder` says:
  - an encoder keeps no cache and refuses one given to it (ValueError); its cache is None;
  - a decoder continues from the cache of its previous call (the mask then covers the cached
    tokens too, positions continue after them) and, with `use_cache` and no cache given,
    starts one: a transformers `DynamicCache`, or the architecture's own object (Reformer's
    `ReformerRecomputeCache`, Transformer-XL's memory, whose own rules its module states).
    While gradient checkpointing recomputes the layers in training, no cache is kept.
"""

import contextlib
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

from .compat import cache_field, given_cache
from .configuration_common import LongctxConfig, file_qualified_name
# Imported here so that every checkpoint carries question_answering.py (save_pretrained copies the
# files a modeling file imports with single-dot relative imports, recursively), which config.json's
# `custom_pipelines` names: without longctx, pipeline("question-answering", trust_remote_code=True).
from .question_answering import CUSTOM_PIPELINES as QUESTION_ANSWERING_PIPELINES

logger = logging.get_logger(__name__)


class LongctxPreTrainedModel(PreTrainedModel):
    """Base of every longctx model; each architecture subclasses it with its `config_class`."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # Read by transformers, not by us: with it, `attn_implementation` defaults to "sdpa" and an
    # explicit attn_implementation="sdpa" (from_pretrained's argument, the example scripts'
    # --attn_implementation) is accepted instead of raising. The kernels use SDPA either way.
    _supports_sdpa = True
    _skip_keys_device_placement = ["cache", "past_key_values"]
    # Filled by `_register` in `__init__.py` (run by `import longctx`): every Auto class of the
    # architecture -> "module.Class". Written into config.json's `auto_map` on save, so a
    # checkpoint saved from any head loads through every other Auto class with
    # trust_remote_code=True.
    longctx_auto_map: dict = {}

    def __init__(self, config, *args, **kwargs):
        # Fields changed after the config was built (e.g. `--config_overrides`) are checked here,
        # as ValueErrors naming the field instead of a shape error deep in the model.
        if isinstance(config, LongctxConfig):
            config.check_fields()
        super().__init__(config, *args, **kwargs)

    def _initialize_weights(self, module, *args, **kwargs):
        """transformers skips a custom-code module whose own parameters (recurse=False) are all
        loaded, and so skipped one whose parameters are all in a ParameterList / ParameterDict
        child (Reformer's axial position embeddings, Transformer-XL's adaptive embedding and
        softmax): they stayed as constructed in a new model, and uninitialised memory when a
        checkpoint lacked them. Such a module is initialised while one of those is not loaded
        (the `transformers.initialization` functions leave loaded tensors as they are)."""
        if not getattr(module, "_is_hf_initialized", False) and _holds_unloaded_parameters(module):
            self._init_weights(module)
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self.longctx_auto_map:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                    **self.longctx_auto_map}
        with self._custom_pipelines_in_config():
            return super().save_pretrained(save_directory, *args, **kwargs)

    @contextlib.contextmanager
    def _custom_pipelines_in_config(self):
        """A question-answering model's config.json names the pipeline (only that head's: with a
        single custom pipeline, pipeline() without a task picks it, which would turn any other
        checkpoint into a QA pipeline over a random head). The config keeps it only while it is
        written: one holding `custom_pipelines` makes pipeline() demand trust_remote_code=True
        even where `import longctx` serves the task (LongctxConfig drops it on load there)."""
        if not self._is_question_answering_head():
            yield
            return
        own = getattr(self.config, "custom_pipelines", None)
        self.config.custom_pipelines = {**(own or {}), **QUESTION_ANSWERING_PIPELINES}
        try:
            yield
        finally:
            if own is None:
                del self.config.custom_pipelines
            else:
                self.config.custom_pipelines = own

    def _is_question_answering_head(self) -> bool:
        own_name = file_qualified_name(type(self))
        return self.longctx_auto_map.get("AutoModelForQuestionAnswering") == own_name


def _holds_unloaded_parameters(module: nn.Module) -> bool:
    """Whether a ParameterList / ParameterDict child of `module` holds a parameter not loaded
    from a checkpoint (transformers flags loaded ones `_is_hf_initialized`)."""
    return any(not getattr(parameter, "_is_hf_initialized", False)
               for child in module.children()
               if isinstance(child, (nn.ParameterList, nn.ParameterDict))
               for parameter in child.parameters())


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, length, heads * dim) -> (batch, heads, length, dim)"""
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, length, dim) -> (batch, length, heads * dim)"""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


class Embeddings(nn.Module):
    """Token (+ learned absolute position) (+ token type) embeddings, then dropout.

    Post-norm models (BERT convention) also normalise the sum; pre-norm models leave that to
    the first block and end with a final LayerNorm instead.
    """

    def __init__(self, config, absolute_positions: bool = True):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                                    if absolute_positions else None)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, config.hidden_size)
                                      if config.type_vocab_size else None)
        self.layer_norm = (nn.Identity() if config.pre_norm
                           else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, position_ids=None, token_type_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            check_ids_below(input_ids, self.word_embeddings.num_embeddings, "input_ids",
                            "vocab_size")
            hidden = self.word_embeddings(input_ids)
        else:
            hidden = inputs_embeds
        if self.position_embeddings is not None:
            hidden = hidden + self.position_embeddings(position_ids)
        if token_type_ids is not None:
            types = (self.token_type_embeddings.num_embeddings
                     if self.token_type_embeddings is not None else 1)
            check_ids_below(token_type_ids, types, "token_type_ids", "type_vocab_size")
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            hidden = hidden + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.layer_norm(hidden))


def check_ids_below(ids: torch.Tensor, limit: int, name: str, config_field: str):
    """An id outside an embedding table is an IndexError on CPU and a device assert on CUDA."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= limit):
        raise ValueError(
            f"{name} holds values in [{int(ids.min())}, {int(ids.max())}] but the model's "
            f"{config_field} allows [0, {limit}) (0 only, for token types of a model with "
            f"type_vocab_size=0); use the tokenizer the model was trained with, or a config whose "
            f"{config_field} covers these ids.")


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden):
        return self.dense_out(self.activation(self.dense_in(hidden)))


class ResidualBlock(GradientCheckpointingLayer):
    """attention + feed-forward, each in a residual branch with dropout, pre- or post-LayerNorm.

    `attention` is the architecture's module: `attention(hidden, **attention_kwargs)` returns
    (output, attention weights or None). The block is all the architectures have in common.
    """

    def __init__(self, config, attention: nn.Module):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attention = attention
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, **attention_kwargs):
        attended, weights = self._residual(hidden, self.attention_norm,
                                           lambda x: self.attention(x, **attention_kwargs))
        hidden, _ = self._residual(attended, self.feed_forward_norm,
                                   lambda x: (self.feed_forward(x), None))
        return hidden, weights

    def _residual(self, hidden, norm, branch):
        if self.pre_norm:
            out, extra = branch(norm(hidden))
            return hidden + self.dropout(out), extra
        out, extra = branch(hidden)
        return norm(hidden + self.dropout(out)), extra


def final_norm(config) -> nn.Module:
    """Pre-norm stacks end with a LayerNorm; post-norm stacks are already normalised."""
    return (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_norm
            else nn.Identity())


def input_shape(input_ids, inputs_embeds, dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(batch, length) of the inputs, after checking their rank and dtype: a 1-D input or float ids
    would otherwise fail deep inside with an unpacking or embedding error that names neither.
    `dtype`: the model's, which `inputs_embeds` must have (None: not checked)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids (batch, length) or inputs_embeds "
                         "(batch, length, hidden_size).")
    if input_ids is not None and (input_ids.dim() != 2 or input_ids.is_floating_point()
                                  or input_ids.is_complex()):
        raise ValueError(f"input_ids is a {input_ids.dim()}-D {input_ids.dtype} tensor of shape "
                         f"{tuple(input_ids.shape)}; longctx models take integer token ids of "
                         "shape (batch, length): e.g. tokenizer(texts, return_tensors='pt'), or "
                         "input_ids[None] for a single sequence.")
    if inputs_embeds is not None and (inputs_embeds.dim() != 3
                                      or not inputs_embeds.is_floating_point()):
        raise ValueError(f"inputs_embeds is a {inputs_embeds.dim()}-D {inputs_embeds.dtype} tensor "
                         f"of shape {tuple(inputs_embeds.shape)}; longctx models take "
                         "floating-point embeddings of shape "
                         "(batch, length, hidden_size).")
    if inputs_embeds is not None:
        check_embeddings_dtype(inputs_embeds, dtype)
        return check_not_empty(inputs_embeds, "inputs_embeds")
    return check_not_empty(input_ids, "input_ids")


def check_not_empty(given: torch.Tensor, name: str) -> tuple[int, int]:
    """(batch, length) of `given`, neither 0: an empty batch or sequence would fail later in a
    pooling argmax or a reshape, naming neither."""
    if given.shape[0] == 0 or given.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(given.shape)}; longctx models need at least "
                         "one sequence of at least one token: leave empty texts out of the batch.")
    return tuple(given.shape[:2])


def check_embeddings_dtype(inputs_embeds: torch.Tensor, dtype: torch.dtype | None):
    """Embeddings of another dtype than the weights' fail in the first matmul or LayerNorm with a
    dtype error that does not name them (or are silently promoted). Under autocast the layers cast
    their inputs themselves, so any floating dtype is accepted there."""
    if dtype is None or inputs_embeds.dtype == dtype:
        return
    if torch.is_autocast_enabled(inputs_embeds.device.type):
        return
    raise ValueError(f"inputs_embeds is {inputs_embeds.dtype} but the model is {dtype}; convert "
                     "them with inputs_embeds.to(model.dtype) (or the model with model.to(...)).")


def check_attention_mask(attention_mask, batch: int, total_length: int):
    """A 2D (batch, past + new length) mask of 1 for tokens and 0 for padding."""
    if attention_mask is None:
        return
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, total_length):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; longctx models take a 2D "
            f"mask (batch, past + new length) = ({batch}, {total_length}) of 1 for tokens and 0 "
            "for padding.")
    check_mask_values(attention_mask)


def check_mask_values(attention_mask: torch.Tensor):
    """Only 0 and 1 (or bool): positions are counted from the mask's cumulative sum, so a 2 would
    shift every later position, and an additive mask (0 / -inf) would mark padding as tokens."""
    if attention_mask.dtype == torch.bool:
        return
    other = (attention_mask != 0) & (attention_mask != 1)
    if bool(other.any()):
        example = attention_mask[other][0].item()
        raise ValueError(f"attention_mask holds {example}; it must hold only 1 for tokens and 0 "
                         "for padding (bool, integer or float): e.g. the tokenizer's "
                         "attention_mask, or (mask > 0).long() for a mask of other values.")


def position_ids_from_mask(attention_mask, past_length: int, length: int, device) -> torch.Tensor:
    """Positions count real tokens only, so a left- or right-padded sequence gets the positions
    it would have alone (the convention of `generate()`, which pads decoders on the left)."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None, :]
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, -length:]


def check_positions(position_ids: torch.Tensor, max_positions: int):
    smallest = int(position_ids.min()) if position_ids.numel() else 0
    if smallest < 0:
        # An embedding lookup fails with an IndexError on -1; Reformer's axial positions would
        # wrap it around to the last position without a word.
        raise ValueError(f"position_ids holds {smallest}; positions count from 0: pass "
                         f"position_ids >= 0, or none (the model counts them from attention_mask).")
    largest = int(position_ids.max()) if position_ids.numel() else -1
    if largest >= max_positions:
        raise ValueError(
            f"Input needs position {largest} but max_position_embeddings={max_positions}: the "
            f"sequence (cache included) holds {largest + 1} tokens. Truncate the input (e.g. "
            f"tokenizer(..., truncation=True, max_length={max_positions})) or build the model with "
            f"a larger max_position_embeddings.")


def key_padding_mask(attention_mask) -> torch.Tensor | None:
    """Bool (batch, length) mask of real tokens, or None when nothing is padded (the fast path)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()


class OutputFlags(NamedTuple):
    """What a forward call returns besides its main result, and in which form."""

    attentions: bool
    hidden_states: bool
    return_dict: bool


def output_flags(config, output_attentions=None, output_hidden_states=None,
                 return_dict=None) -> OutputFlags:
    """The call's output switches, each resolved against the config: a switch the call leaves
    None takes the config's value (transformers' convention, so that e.g.
    `config.output_hidden_states=True` holds for every call that does not say otherwise)."""
    def resolved(given, field):
        return getattr(config, field) if given is None else given

    return OutputFlags(attentions=resolved(output_attentions, "output_attentions"),
                       hidden_states=resolved(output_hidden_states, "output_hidden_states"),
                       return_dict=resolved(return_dict, "return_dict"))


def backbone_output(return_dict: bool, last_hidden_state, cache, hidden_states, attentions):
    """The backbone's output, as an object or (return_dict False) a tuple; `return_dict` as
    `output_flags` resolved it."""
    output = BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **cache_field(cache),
                                     hidden_states=hidden_states, attentions=attentions)
    return output if return_dict else output.to_tuple()


def is_encoder_without_cache(config, cache) -> bool:
    """True for encoders, which have nothing to cache (and refuse a cache given to them)."""
    if config.is_decoder:
        return False
    if cache is not None:
        raise ValueError("A cache (cache / past_key_values) is only for decoders; this model has "
                         "is_decoder=False.")
    return True


class WordEmbeddingsAccess:
    """The input embeddings of a backbone whose `embeddings` module holds `word_embeddings`."""

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value


class StackedBackbone(WordEmbeddingsAccess):
    """Embeddings -> `num_hidden_layers` residual blocks around `attention_class` -> final norm.

    Mixed in before an architecture's pretrained base:
    `class XModel(StackedBackbone, XPreTrainedModel)` with `attention_class = ...`; the attention
    module is built as `attention_class(config, layer_idx)` and called as
    `attention(hidden, key_padding_mask=, cache=, output_attentions=,
    **layer_inputs)`. An architecture with inputs of its own (e.g. Longformer's global attention
    mask) overrides `forward` and passes them on in `layer_inputs`.
    """

    attention_class = None
    absolute_positions = True

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Embeddings(config, absolute_positions=self.absolute_positions)
        self.layers = nn.ModuleList(
            ResidualBlock(config, self.attention_class(config, i))
            for i in range(config.num_hidden_layers))
        self.final_norm = final_norm(config)
        self.output_size = config.hidden_size
        self._build_shared_modules(config)
        self.post_init()

    def _build_shared_modules(self, config):
        """Modules an architecture adds beside the stack (e.g. a matrix every layer uses), built
        here so that `post_init` initialises them with the rest; none by default."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, layer_inputs: dict | None = None,
                cache=None):
        """`cache` (or `past_key_values`, its name before transformers 5.24): a decoder's
        DynamicCache from the previous call."""
        batch, length = input_shape(input_ids, inputs_embeds, self.dtype)
        cache = self._cache(given_cache(cache, past_key_values), use_cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        check_attention_mask(attention_mask, batch, past_length + length)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, past_length, length, device)
        check_positions(position_ids, self.config.max_position_embeddings)

        hidden = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)
        flags = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        all_hidden, all_weights = (), ()
        padding = key_padding_mask(attention_mask)
        for layer in self.layers:
            all_hidden += (hidden,)
            hidden, weights = layer(hidden, key_padding_mask=padding, cache=cache,
                                    output_attentions=flags.attentions, **(layer_inputs or {}))
            all_weights += (weights,)
        hidden = self.final_norm(hidden)
        return backbone_output(flags.return_dict, hidden, cache,
                               all_hidden + (hidden,) if flags.hidden_states else None,
                               all_weights if flags.attentions else None)

    def _cache(self, cache, use_cache):
        """Decoders keep keys and values for `generate()`; encoders have nothing to cache."""
        if is_encoder_without_cache(self.config, cache):
            return None
        if self._recomputes_layers():
            return None
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            return DynamicCache(config=self.config)
        return cache

    def _recomputes_layers(self) -> bool:
        """Whether gradient checkpointing will run the layers twice in this call: a cache would
        then take each layer's keys twice, so it is left out, as transformers' own models do."""
        checkpointing = any(getattr(layer, "gradient_checkpointing", False)
                            for layer in self.layers)
        if not (checkpointing and self.training and torch.is_grad_enabled()):
            return False
        logger.warning_once("Gradient checkpointing recomputes the layers: this training forward "
                            "keeps no cache (use_cache=False).")
        return True
