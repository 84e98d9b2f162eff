"""`longctx-transfo-xl`: Transformer-XL (Dai et al. 2019), numerically transformers 4.35.2's
TransfoXL (checkpoints convert with `python -m longctx.convert`; tests/test_convert_transfo_xl.py).

- Segment-level recurrence: each layer keeps the hidden states of the last `mem_len` tokens it
  saw (its inputs, without gradient) and attends them as extra keys and values in the next
  segment. The memory is `mems` (also `cache`, transformers' name): pass it back to continue.
- Relative positional attention: score(i, j) = (q_i + u) . k_j + (q_i + v) . W_r R[i - j], with R
  the sinusoidal encoding of the distance (clamped at `clamp_len`), u and v learned per head.
- Adaptive input and adaptive softmax over the vocabulary clusters of `cutoffs` / `div_val`.

Use::

    config = AutoConfig.for_model("longctx-transfo-xl", mem_len=512)
    model = AutoModelForCausalLM.from_config(config)
    memory = None
    for segment in segments:                      # (batch, length) ids of consecutive segments
        out = model(segment, labels=segment, mems=memory)
        memory = out.mems                         # out.losses: (batch, length - 1) per token

Differences from transformers 4.35.2 (by design):
- A first segment without `mems` has an empty memory; transformers starts from `mem_len` zero
  vectors, which its first tokens attend. Pass `mems=[zeros(batch, mem_len, d_model)] * n_layer`
  for its numbers.
- `losses` are in token order; transformers' adaptive softmax returns them grouped by cluster.
- Memory tensors are (batch, length, d_model), transformers' (length, batch, d_model).
- `attention_mask` is supported (padding, and left-padded `generate()`); transformers had none.

Efficiency: the attention kernels and the choice between them are `attention_relative`'s. On CPU
(no attention dropout, float32/64) relative attention runs the fused C++ kernel of
`attention_relative_fused` (flash-style tiles, forward and backward; compiled on first use), or
where that cannot be built the block kernel of `attention_relative_blocks` (eager ops over query
blocks, a hand-written backward); both skip future keys and keep memory linear in the length.
Elsewhere, unless `relative_attention_kernel="blocks"` asks for the block kernel, SDPA with the
position term as a mask, whose gradient makes training run SDPA's math kernel (memory quadratic
in the length). With a memory of half the span, a new token costs more than in the dense encoder,
by arithmetic 1.18x its attention FLOPs and 1.33x its linear layers' (keys and values of the
memory); without memory, about as much (causal: half the score tiles skipped)
(measured: results/cpu-2026-11-23/README.md).

Decoding (`generate()`, or any call without gradient): the memory keeps each layer's keys and
values (see `TransfoXLMemory`) and the layers keep the projected encodings of the mem_len + 1
distances a new token sees, so a token costs its own projections plus attention over the memory,
as a GPT-2 step costs over its key-value cache; one query runs
`attention_relative.single_query_relative_attention` (measured against transformers' GPT-2:
results/xl-generation/README.md, `scripts/profile_xl_generation.py`).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutputWithPast

from .attention_dense import masked_attention_reference, masked_sdpa
from .attention_relative import VisibleKeys, relative_attention, relative_attention_reference
from .compat import cache_field, cache_of, given_cache
from .configuration_transfo_xl import LongctxTransfoXLConfig
from .modeling_blocks import (
    LongctxPreTrainedModel,
    backbone_output,
    check_ids_below,
    check_mask_values,
    input_shape,
    merge_heads,
    output_flags,
    split_heads,
)
from .modeling_heads import (
    ForQuestionAnswering,
    ForSequenceClassification,
    GeneratesWithOwnCache,
    HeadBase,
    check_labels,
)


# -------------------------------------------------------------------------------------- encodings
def sinusoid_encoding(distances: torch.Tensor, width: int, dtype) -> torch.Tensor:
    """(n,) float distances -> (n, width): [sin(d f), cos(d f)] over frequencies
    f = 10000^(-2i/width) (computed as transformers does, so that the float32 values are
    identical)."""
    even = torch.arange(0.0, width, 2.0, device=distances.device)  # (width / 2,): 2i
    inverse_frequency = 1 / (10000 ** (even / width))
    angles = torch.outer(distances, inverse_frequency)  # (n, width / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


# ----------------------------------------------------------------------------------------- memory
class TransfoXLMemory:
    """What a Transformer-XL carries from one segment to the next: per layer, the layer inputs of
    the last `mem_len` tokens, (batch, length, d_model), without gradient; which of them are real
    tokens (None: all); and how many tokens were seen in all (`generate()` feeds only the rest).

    Iterates and indexes like transformers' list of per-layer `mems`.

    Made without gradient (generation, evaluation), it also keeps per layer the keys and values
    of its tokens, (batch, heads, length, dim) each, with a stamp of the weights that projected
    them (`projected`): the next call then projects only its new tokens, as GPT-2's key-value
    cache does, instead of the whole memory again at every generated token. A stamp names the
    projection modules and each of their parameters' identity, version and storage, so weights
    changed since (an optimizer step, load_state_dict, .to()) make the next call project the
    memory afresh; only a change that bypasses autograd's version counter (writing through
    `.data`) goes unseen."""

    def __init__(self, hidden: list[torch.Tensor], padding: torch.Tensor | None = None,
                 seen: int | None = None, projected: list[tuple] | None = None):
        self.hidden = list(hidden)
        self.padding = padding
        self.seen = self.length if seen is None else seen
        self.projected = projected  # per layer (stamp, keys, values), or None

    @classmethod
    def wrap(cls, mems, num_layers: int) -> "TransfoXLMemory | None":
        """A memory from a `TransfoXLMemory`, or from per-layer tensors (batch, length, d_model)."""
        if mems is None or isinstance(mems, cls):
            memory = mems
        elif isinstance(mems, (list, tuple)) and all(_is_layer_memory(t) for t in mems):
            memory = cls([t.detach() for t in mems])
        else:
            raise ValueError(f"mems / past_key_values is a {type(mems).__name__}; pass the `mems` "
                             f"a previous call returned, or one (batch, length, d_model) tensor "
                             f"per layer.")
        if memory is not None and len(memory.hidden) != num_layers:
            raise ValueError(f"mems holds {len(memory.hidden)} layers but the model has "
                             f"n_layer={num_layers}; pass the memory this model returned.")
        return memory

    @property
    def length(self) -> int:
        return self.hidden[0].shape[1] if self.hidden else 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self):
        return len(self.hidden)

    def __iter__(self):
        return iter(self.hidden)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.hidden[layer]

    def projections(self, layer: int, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's (keys, values) of the memory tokens, if the weights of `stamp` projected
        them; else None (the caller projects the memory)."""
        if self.projected is None:
            return None
        saved_stamp, keys, values = self.projected[layer]
        return (keys, values) if same_stamp(saved_stamp, stamp) else None

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Beam search: keep the rows of the chosen beams."""
        self.hidden = [h.index_select(0, beam_idx.to(h.device)) for h in self.hidden]
        if self.padding is not None:
            self.padding = self.padding.index_select(0, beam_idx.to(self.padding.device))
        if self.projected is not None:
            self.projected = [(stamp, *(t.index_select(0, beam_idx.to(t.device)) for t in kv))
                              for stamp, *kv in self.projected]

    def extended(self, layer_inputs: list[torch.Tensor], new_padding: torch.Tensor | None,
                 mem_len: int, projected: list[tuple] | None = None):
        """The memory after a segment: its last `mem_len` tokens of (memory + segment), detached.
        `projected`: per layer (stamp, keys, values) of memory + segment, (batch, heads, memory +
        length, dim), to keep for the next call (None: keep none)."""
        # per layer (batch, at most mem_len, d_model)
        hidden = [_last_tokens(old, new, mem_len).detach()
                  for old, new in zip(self.hidden, layer_inputs)]
        padding = None
        if self.padding is not None or new_padding is not None:
            (batch, length), device = layer_inputs[0].shape[:2], layer_inputs[0].device
            old = _real_if_none(self.padding, batch, self.length, device)
            new = _real_if_none(new_padding, batch, length, device)
            padding = torch.cat([old, new], dim=1)[:, -mem_len:]  # (batch, at most mem_len)
        if projected is not None:
            projected = [(stamp, *(_tail(t, mem_len, dim=2) for t in kv))
                         for stamp, *kv in projected]
        return TransfoXLMemory(hidden, padding, self.seen + layer_inputs[0].shape[1], projected)


def _last_tokens(old: torch.Tensor, new: torch.Tensor, count: int) -> torch.Tensor:
    """The last `count` tokens of (old + new) along dim 1, copied from only those rows (a new
    tensor: a view would keep a long segment's whole input alive)."""
    from_old = max(0, min(count - new.shape[1], old.shape[1]))
    return torch.cat([old[:, old.shape[1] - from_old:], new[:, -count:]], dim=1)


def _tail(t: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """The last `count` entries along `dim`: a view, or a copy where the view would keep a tensor
    more than twice as long alive (after a long prompt)."""
    tail = t.narrow(dim, max(0, t.shape[dim] - count), min(count, t.shape[dim]))
    return tail.clone() if t.shape[dim] > 2 * count else tail


def weights_stamp(*modules: nn.Module) -> tuple:
    """What identifies the weights of `modules` now: each module, and each parameter with its
    version (bumped by in-place changes) and storage address (changed by .to() or a new .data)."""
    return tuple((module, tuple((p, p._version, p.data_ptr()) for p in module.parameters()))
                 for module in modules)


def same_stamp(a: tuple, b: tuple) -> bool:
    """Whether two `weights_stamp`s name the same modules and the same parameter states."""
    if len(a) != len(b):
        return False
    for (module_a, params_a), (module_b, params_b) in zip(a, b):
        if module_a is not module_b or len(params_a) != len(params_b):
            return False
        for (p, version, address), (q, other_version, other_address) in zip(params_a, params_b):
            if p is not q or version != other_version or address != other_address:
                return False
    return True


@dataclass
class DistanceEncodings:
    """Sinusoids of the distances k_len - 1, ..., 0 (one row each, d_model wide): the last k_len
    rows of `table`. `reusable`: the table is the model's cached one (no gradient, no dropout), so
    its projection can be cached too; else the table has exactly k_len rows."""

    table: torch.Tensor  # (at least k_len, d_model)
    k_len: int
    reusable: bool = False

    @property
    def rows(self) -> torch.Tensor:
        return self.table[-self.k_len:]  # (k_len, d_model)


def _is_layer_memory(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 3


def _real_if_none(padding: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """`padding`, or (batch, length) True: every token real."""
    if padding is not None:
        return padding
    return torch.ones(batch, length, dtype=torch.bool, device=device)


def reuses_projections(like: torch.Tensor) -> bool:
    """Whether keys, values and position projections may be kept between calls: without
    gradient (they would be cut from the graph) and without autocast (its dtype is not in the
    stamp)."""
    return not torch.is_grad_enabled() and not torch.is_autocast_enabled(like.device.type)


def check_memory_shape(memory: TransfoXLMemory, batch: int, width: int):
    shape = tuple(memory[0].shape)
    if shape[0] != batch or shape[2] != width:
        raise ValueError(f"mems tensors have shape {shape} but the input needs (batch={batch}, "
                         f"length, d_model={width}); longctx memories are batch first "
                         f"(transformers' TransfoXL mems are (length, batch, d_model): transpose "
                         f"them with .transpose(0, 1)).")
    shapes = [tuple(layer.shape) for layer in memory]
    if any(other != shape for other in shapes):
        # Every layer attends over the same memory positions: layers of other lengths would fail
        # deep in the attention (or be masked with the first layer's padding) without a word.
        raise ValueError(f"mems layers have shapes {shapes}; every layer's memory must have the "
                         f"same (batch, length, d_model) = {shape}: pass the mems a previous call "
                         f"returned.")


def empty_memory(num_layers: int, batch: int, width: int, like: torch.Tensor) -> TransfoXLMemory:
    return TransfoXLMemory([like.new_zeros(batch, 0, width)] * num_layers, seen=0)


# ----------------------------------------------------------------------------------------- layers
class RelativeSelfAttention(nn.Module):
    """Projects queries (new tokens), keys and values (memory + new tokens) and the distance
    encodings; dispatches to the relative attention kernel; projects back. No biases on the
    projections (paper and transformers)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.d_head
        inner = self.num_heads * self.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.query = nn.Linear(config.hidden_size, inner, bias=False)
        self.key_value = nn.Linear(config.hidden_size, 2 * inner, bias=False)
        self.output = nn.Linear(inner, config.hidden_size, bias=False)
        self.relative = config.attn_type == 0  # 2: the absolute-position ablation, plain attention
        self.kernel = config.relative_attention_kernel
        self.position = nn.Linear(config.hidden_size, inner, bias=False) if self.relative else None
        # u and v of the paper; with untie_r=False the backbone owns one pair for all layers
        self.content_bias = self.position_bias = None
        # (table, stamp, projected rows): the position projection of the backbone's cached
        # distance table, reused while both stay the same (see `_projected_distances`)
        self._distance_cache = None
        if config.untie_r and self.relative:
            self.content_bias = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))
            self.position_bias = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))

    def forward(self, hidden, context, encodings, visible, shared_biases=None,
                output_attentions=False, memory_keys_values=None):
        """hidden: (batch, q_len, d_model) new tokens; context: (batch, k_len, d_model) memory + new
        tokens, or only the new tokens where `memory_keys_values` gives the memory's (keys,
        values), (batch, heads, memory, dim) each; encodings: DistanceEncodings of distances
        k_len - 1 .. 0; visible: VisibleKeys. Returns (output (batch, q_len, d_model), weights or
        None, (keys, values) of memory + new tokens, (batch, heads, k_len, dim) each)."""
        q = split_heads(self.query(hidden), self.num_heads)  # (batch, heads, q_len, dim)
        # (batch, heads, k_len, dim) each
        k, v = (split_heads(t, self.num_heads) for t in self.key_value(context).chunk(2, dim=-1))
        if memory_keys_values is not None:
            k, v = (torch.cat([old, new], dim=2) for old, new in zip(memory_keys_values, (k, v)))
        dropout_p = self.dropout_p if self.training else 0.0
        if not self.relative:
            return (*self._plain(q, k, v, visible.mask(), dropout_p, output_attentions), (k, v))
        r = self._projected_distances(encodings)  # (heads, k_len, dim)
        own_biases = (self.content_bias, self.position_bias)
        u, bias_v = shared_biases if self.content_bias is None else own_biases  # (heads, dim) each
        if output_attentions:  # SDPA cannot return weights: the explicit path computes the same
            out, weights = relative_attention_reference(q, k, v, r, u, bias_v, visible.mask(),
                                                        dropout_p=dropout_p)
        else:
            out = relative_attention(q, k, v, r, u, bias_v, visible, dropout_p=dropout_p,
                                     kernel=self.kernel)
            weights = None
        return self.output(merge_heads(out)), weights, (k, v)  # output (batch, q_len, d_model)

    def _projected_distances(self, encodings: DistanceEncodings) -> torch.Tensor:
        """(heads, k_len, dim) projected encodings. The backbone's cached table is projected once
        (per table and weights) and its last k_len rows reused: a generated token would otherwise
        project the encodings of its whole memory again."""
        if not encodings.reusable:
            return self._heads_first(self.position(encodings.rows))
        stamp = weights_stamp(self.position)
        cached = self._distance_cache
        if cached is None or cached[0] is not encodings.table or not same_stamp(cached[1], stamp):
            # contiguous per head: the single-query kernel reads each head's rows in one stride
            projected = self._heads_first(self.position(encodings.table)).contiguous()
            cached = (encodings.table, stamp, projected)
            self._distance_cache = cached
        return cached[2][:, -encodings.k_len:]

    def _heads_first(self, projected: torch.Tensor) -> torch.Tensor:
        """(k_len, heads x dim) -> (heads, k_len, dim)"""
        return projected.view(-1, self.num_heads, self.head_dim).transpose(0, 1)

    def _plain(self, q, k, v, allowed, dropout_p, output_attentions):
        """attn_type 2: softmax(q k^T / sqrt(dim)) v over the visible keys, no position term."""
        if output_attentions:
            out, weights = masked_attention_reference(q, k, v, allowed, dropout_p=dropout_p)
        else:
            out, weights = masked_sdpa(q, k, v, allowed, dropout_p=dropout_p), None
        return self.output(merge_heads(out)), weights


class TransfoXLFeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear (transformers' PositionwiseFF core)."""

    def __init__(self, config):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden):
        return self.dense_out(self.dropout(self.activation(self.dense_in(hidden))))


class TransfoXLBlock(GradientCheckpointingLayer):
    """Relative attention over memory + segment, then feed-forward; post-LN (paper, default) or
    pre-LN (`pre_lnorm`: the memory is normalised with the same LayerNorm as the segment)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attention = RelativeSelfAttention(config, layer_idx)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = TransfoXLFeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, memory, encodings, visible, shared_biases=None,
                output_attentions=False, memory_keys_values=None):
        """Returns (hidden, attention weights or None, (keys, values) of memory + new tokens).
        `memory_keys_values`: the memory's keys and values, projected by the weights of
        `projection_stamp()`: then only the new tokens are projected."""
        if memory_keys_values is None:
            context = torch.cat([memory, hidden], dim=1)  # (batch, memory + length, d_model)
        else:
            context = hidden  # (batch, length, d_model): the memory's part is given
        length = hidden.shape[1]
        if self.pre_norm:  # LayerNorm is per token: the memory's rows need no new one
            context = self.attention_norm(context)
            attended, weights, keys_values = self.attention(
                context[:, -length:], context, encodings, visible, shared_biases,
                output_attentions, memory_keys_values)
            hidden = hidden + self.dropout(attended)
            hidden = hidden + self.dropout(self.feed_forward(self.feed_forward_norm(hidden)))
            return hidden, weights, keys_values
        attended, weights, keys_values = self.attention(hidden, context, encodings, visible,
                                                        shared_biases, output_attentions,
                                                        memory_keys_values)
        hidden = self.attention_norm(hidden + self.dropout(attended))
        hidden = self.feed_forward_norm(hidden + self.dropout(self.feed_forward(hidden)))
        return hidden, weights, keys_values

    def projection_stamp(self) -> tuple:
        """The weights that make this layer's keys and values from its inputs."""
        if self.pre_norm:
            return weights_stamp(self.attention.key_value, self.attention_norm)
        return weights_stamp(self.attention.key_value)


def resized_rows(parameter: nn.Parameter, rows: int, cluster_rows: int, mean_resizing: bool,
                 std: float) -> nn.Parameter:
    """`parameter` (tokens, ...) cut or grown to `rows` tokens, keeping its first ones. A new row
    is the mean of the last `cluster_rows` rows, those of the cluster it joins (mean_resizing: a
    new token then starts with its cluster's average score, the reasoning of transformers' own
    mean resizing), or else as initialised: N(0, std) for a weight, zero for a bias."""
    old = parameter.data
    added = rows - old.shape[0]
    if added <= 0:
        new = old[:rows].clone()
    elif mean_resizing:
        mean = old[-cluster_rows:].float().mean(dim=0, keepdim=True).to(old.dtype)
        new = torch.cat([old, mean.expand(added, *old.shape[1:])])
    elif old.dim() == 1:
        new = torch.cat([old, old.new_zeros(added)])
    else:
        new = torch.cat([old, old.new_empty(added, *old.shape[1:]).normal_(0.0, std)])
    return nn.Parameter(new, requires_grad=parameter.requires_grad)


class NoSingleEmbeddingWeight(AttributeError):
    """`.weight` of an adaptive embedding that keeps one table per cluster (div_val > 1)."""


class AdaptiveEmbedding(nn.Module):
    """Adaptive input (Baevski & Auli 2019): cluster i of the vocabulary embeds in
    d_embed // div_val**i dimensions, projected to d_model; all scaled by sqrt(d_model).
    With div_val=1, one table (projected only if d_embed != d_model), which `.weight` returns,
    (vocab_size, d_embed), as nn.Embedding's: transformers' example scripts read its size."""

    def __init__(self, config):
        super().__init__()
        self.vocab_size, self.width = config.vocab_size, config.hidden_size
        self.div_val, self.cutoffs = config.div_val, list(config.cutoffs)
        self.bounds = config.cluster_bounds() if config.div_val > 1 else [(0, config.vocab_size)]
        self.tables = nn.ModuleList(nn.Embedding(end - start, config.cluster_width(i))
                                    for i, (start, end) in enumerate(self.bounds))
        projected = config.div_val > 1 or config.d_embed != config.hidden_size
        self.projections = nn.ParameterList(
            nn.Parameter(torch.zeros(config.hidden_size, table.embedding_dim))
            for table in self.tables if projected)

    def forward(self, input_ids):
        check_ids_below(input_ids, self.vocab_size, "input_ids", "vocab_size")
        if len(self.tables) == 1:
            embedded = self.tables[0](input_ids)
            if len(self.projections):
                embedded = F.linear(embedded, self.projections[0])
            return embedded * self.width ** 0.5
        # Every cluster embeds every token (ids clamped into it) and keeps its own: a token's
        # embedding then never depends on which other tokens are in the batch (bit for bit), and
        # there is no data-dependent shape; the tail clusters are narrow, so this costs little.
        out = 0
        for table, projection, (start, end) in zip(self.tables, self.projections, self.bounds):
            inside = (input_ids >= start) & (input_ids < end)
            local = (input_ids - start).clamp(0, end - start - 1)
            out = out + F.linear(table(local), projection) * inside[..., None]
        return out * self.width ** 0.5

    def cluster_parameters(self, cluster: int, start: int, end: int):
        """(weight rows, projection or None) of a softmax cluster, when the softmax is tied to
        us."""
        if len(self.tables) == 1:
            projection = self.projections[0] if len(self.projections) else None
            return self.tables[0].weight[start:end], projection
        return self.tables[cluster].weight, self.projections[cluster]

    @property
    def num_embeddings(self) -> int:
        return self.vocab_size

    def __getattr__(self, name: str):
        # nn.Module keeps parameters and submodules out of __dict__, so this runs for every one of
        # them; `weight` is not one: it is the single table's, or an error that says why not.
        if name == "weight":
            return self._single_table_weight()
        return super().__getattr__(name)

    def _single_table_weight(self) -> nn.Parameter:
        if len(self.tables) == 1:
            return self.tables[0].weight
        widths = [table.embedding_dim for table in self.tables]
        raise NoSingleEmbeddingWeight(
            f"AdaptiveEmbedding has no single weight: with div_val={self.div_val} each of its "
            f"{len(widths)} clusters (cutoffs={self.cutoffs}) has its own table (tables[i].weight, "
            f"widths {widths}). Read the vocabulary size from config.vocab_size "
            f"({self.vocab_size}); model.resize_token_embeddings(n) grows the last cluster. A "
            f"model built with div_val=1 keeps one (vocab_size, d_embed) table, which .weight "
            f"returns.")

    def resize_vocabulary(self, vocab_size: int, last_cluster_start: int, mean_resizing: bool,
                          std: float):
        """Ids added at (or removed from) the end of the vocabulary join (leave) the last cluster,
        whose rows are the last ones of the last table."""
        table = self.tables[-1]
        rows = table.num_embeddings + vocab_size - self.vocab_size
        cluster_rows = self.vocab_size - last_cluster_start
        table.weight = resized_rows(table.weight, rows, cluster_rows, mean_resizing, std)
        table.num_embeddings = rows
        self.bounds[-1] = (self.bounds[-1][0], vocab_size)
        self.vocab_size = vocab_size


class AdaptiveLogSoftmax(nn.Module):
    """Adaptive softmax (Grave et al. 2017) as transformers' ProjectedAdaptiveLogSoftmax: the head
    scores the first cluster's tokens and one logit per tail cluster; a tail token's log-prob is
    its cluster's head log-prob plus its log-prob within the cluster. Weights (and projections,
    per `tie_projs`) are the input embedding's when tied; biases and cluster logits are its own."""

    def __init__(self, config):
        super().__init__()
        self.bounds = config.cluster_bounds()
        self.div_val = config.div_val
        self.tie_weights = config.tie_word_embeddings
        self.projected = config.div_val > 1 or config.d_embed != config.hidden_size
        single = config.div_val == 1
        sizes = [config.vocab_size] if single else [end - start for start, end in self.bounds]
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(size)) for size in sizes)
        self.weights = nn.ParameterDict()
        if not config.tie_word_embeddings:
            for i, size in enumerate(sizes):
                width = config.cluster_width(0 if single else i)
                self.weights[str(i)] = nn.Parameter(torch.zeros(size, width))
        self.projections = nn.ParameterDict()
        for i, tied in enumerate(config.tie_projs):
            if self.projected and not tied:
                self.projections[str(i)] = nn.Parameter(
                    torch.zeros(config.hidden_size, config.cluster_width(0 if single else i)))
        self.num_tails = len(self.bounds) - 1
        if self.num_tails:
            self.cluster_weight = nn.Parameter(torch.zeros(self.num_tails, config.d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(self.num_tails))

    def resize_vocabulary(self, vocab_size: int, last_cluster_start: int, mean_resizing: bool,
                          std: float):
        """As AdaptiveEmbedding's: the last cluster's rows are the last ones of the last bias (and
        of the last weight when untied) in both layouts (div_val 1: one of each, for all ids)."""
        old_vocab_size = self.bounds[-1][1]
        cluster_rows = old_vocab_size - last_cluster_start
        last = len(self.biases) - 1
        rows = self.biases[last].shape[0] + vocab_size - old_vocab_size
        self.biases[last] = resized_rows(self.biases[last], rows, cluster_rows, mean_resizing, std)
        if str(last) in self.weights:
            self.weights[str(last)] = resized_rows(self.weights[str(last)], rows, cluster_rows,
                                                   mean_resizing, std)
        self.bounds[-1] = (self.bounds[-1][0], vocab_size)

    def _cluster(self, i: int, embeddings: AdaptiveEmbedding):
        """(weight, bias, projection or None) of cluster i."""
        start, end = self.bounds[i]
        tied_weight, tied_projection = embeddings.cluster_parameters(i, start, end)
        table = 0 if self.div_val == 1 else i
        if self.tie_weights:
            weight = tied_weight
        else:
            weight = self.weights[str(table)]
            weight = weight[start:end] if self.div_val == 1 else weight
        bias = self.biases[0][start:end] if self.div_val == 1 else self.biases[i]
        projection = self.projections[str(i)] if str(i) in self.projections else tied_projection
        return weight, bias, projection if self.projected else None

    @staticmethod
    def _logits(hidden, weight, bias, projection):
        if projection is not None:
            hidden = F.linear(hidden, projection.t())
        return F.linear(hidden, weight, bias)

    def _head_log_probs(self, hidden, embeddings):
        weight, bias, projection = self._cluster(0, embeddings)
        if self.num_tails:
            weight = torch.cat([weight, self.cluster_weight], dim=0)
            bias = torch.cat([bias, self.cluster_bias], dim=0)
        return F.log_softmax(self._logits(hidden, weight, bias, projection).float(), dim=-1)

    def log_probs(self, hidden, embeddings) -> torch.Tensor:
        """(..., d_model) -> (..., vocab_size) log-probabilities (float32)."""
        head = self._head_log_probs(hidden, embeddings)
        shortlist = self.bounds[0][1]
        pieces = [head[..., :shortlist]]
        for i in range(1, len(self.bounds)):
            logits = self._logits(hidden, *self._cluster(i, embeddings))
            tail = F.log_softmax(logits.float(), dim=-1)  # (..., cluster size)
            pieces.append(head[..., shortlist + i - 1, None] + tail)
        return torch.cat(pieces, dim=-1)

    def target_losses(self, hidden, targets, embeddings) -> torch.Tensor:
        """(n, d_model), (n,) targets -> (n,) negative log-likelihoods (0 where the target is -100);
        a tail cluster's scores are computed only for the rows whose target is in it."""
        head = self._head_log_probs(hidden, embeddings)
        shortlist = self.bounds[0][1]
        # The first cluster's losses are taken from `head` for every row (0 where the target is
        # elsewhere), so the losses stay on the autograd graph even when every target is -100
        in_head = (targets >= 0) & (targets < shortlist)
        head_targets = targets.clamp(0, shortlist - 1)[:, None]
        losses = torch.where(in_head, -head.gather(1, head_targets).squeeze(1), 0.0)
        for i in range(1, len(self.bounds)):
            start, end = self.bounds[i]
            rows = ((targets >= start) & (targets < end)).nonzero().squeeze(1)
            if not rows.numel():
                continue
            local = (targets[rows] - start)[:, None]
            logits = self._logits(hidden[rows], *self._cluster(i, embeddings))
            tail = F.log_softmax(logits.float(), dim=-1)  # (rows, cluster size)
            log_prob = head[rows, shortlist + i - 1] + tail.gather(1, local).squeeze(1)
            losses = losses.index_copy(0, rows, -log_prob)
        return losses


# ------------------------------------------------------------------------------------ the models
def _shares_position_biases(config) -> bool:
    """untie_r=False with relative attention: the backbone owns one (u, v) pair for all layers."""
    return not config.untie_r and config.attn_type == 0


class LongctxTransfoXLPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxTransfoXLConfig
    _no_split_modules = ["TransfoXLBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, RelativeSelfAttention) and module.content_bias is not None:
            init.normal_(module.content_bias, 0.0, std)
            init.normal_(module.position_bias, 0.0, std)
        elif isinstance(module, LongctxTransfoXLModel) and _shares_position_biases(self.config):
            init.normal_(module.content_bias, 0.0, std)
            init.normal_(module.position_bias, 0.0, std)
        elif isinstance(module, AdaptiveEmbedding):
            for projection in module.projections:
                init.normal_(projection, 0.0, std)
        elif isinstance(module, AdaptiveLogSoftmax):
            self._init_softmax(module, std)
        else:
            super()._init_weights(module)

    def resize_token_embeddings(self, new_num_tokens: int | None = None,
                                pad_to_multiple_of: int | None = None, mean_resizing: bool = True):
        """transformers' method (its arguments and result: the input embeddings), for the
        adaptive embedding and softmax, whose tables transformers' generic version cannot resize.
        Ids are added at (or removed from) the end of the vocabulary, so they join (leave) the last
        cluster -- all of it with cutoffs=[] -- in the embedding and in a causal LM's softmax;
        every other id keeps its rows. mean_resizing: a new row starts at the mean of its
        cluster's rows; else as initialised. Updates config.vocab_size."""
        embeddings = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embeddings
        vocab_size = self._checked_vocab_size(new_num_tokens, pad_to_multiple_of)
        last_cluster_start = self.config.cutoffs[-1] if self.config.cutoffs else 0
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (AdaptiveEmbedding, AdaptiveLogSoftmax)):
                module.resize_vocabulary(vocab_size, last_cluster_start, mean_resizing, std)
        self.config.vocab_size = vocab_size
        return embeddings

    def _checked_vocab_size(self, new_num_tokens, pad_to_multiple_of) -> int:
        """The new vocabulary size (rounded up to `pad_to_multiple_of`); ValueError where the last
        cluster would be left empty or a special token id would fall outside."""
        vocab_size = self.config.vocab_size if new_num_tokens is None else new_num_tokens
        if not isinstance(vocab_size, int):
            raise ValueError(f"new_num_tokens={new_num_tokens!r} must be an integer (or None: the "
                             f"current vocab_size, padded to pad_to_multiple_of)")
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
                raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive "
                                 f"integer (or None)")
            vocab_size = -(-vocab_size // pad_to_multiple_of) * pad_to_multiple_of
        cutoffs = self.config.cutoffs
        if vocab_size <= (cutoffs[-1] if cutoffs else 0):
            fix = (f"resizing adds or removes ids at the end of the last cluster, which "
                   f"cutoffs={cutoffs} start at {cutoffs[-1]}: pass more than {cutoffs[-1]}, or "
                   f"build the model from a config whose vocab_size and cutoffs cover the tokenizer"
                   if cutoffs else "pass a positive integer")
            padded = f" (padded to {vocab_size})" if pad_to_multiple_of is not None else ""
            raise ValueError(f"new_num_tokens={new_num_tokens!r}{padded} would leave the last "
                             f"cluster without ids; {fix}.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            token = getattr(self.config, name)
            if token is not None and token >= vocab_size:
                raise ValueError(f"new_num_tokens={new_num_tokens!r} leaves out {name}={token}; "
                                 f"resize to at least {token + 1} tokens, or first set "
                                 f"config.{name} to an id below {vocab_size}.")
        return vocab_size

    @staticmethod
    def _init_softmax(module, std):
        for bias in module.biases:
            init.zeros_(bias)
        for parameter in [*module.weights.values(), *module.projections.values()]:
            init.normal_(parameter, 0.0, std)
        if module.num_tails:
            init.normal_(module.cluster_weight, 0.0, std)
            init.zeros_(module.cluster_bias)


class LongctxTransfoXLModel(LongctxTransfoXLPreTrainedModel):
    """Adaptive embeddings -> `n_layer` relative-attention blocks over memory + segment (no final
    norm, as the paper). Returns the new memory (`mems`, `cache`) whenever mem_len > 0 (as
    transformers' TransfoXL always returned `mems`), unless the call itself passes use_cache=False.
    `config.use_cache` does not switch it off: transformers' Trainer sets it to False on every model
    it trains (and saves it so), which would silently turn the recurrence off in evaluation."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = AdaptiveEmbedding(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(TransfoXLBlock(config, i)
                                    for i in range(config.num_hidden_layers))
        if _shares_position_biases(config):
            bias_shape = (config.num_attention_heads, config.d_head)
            self.content_bias = nn.Parameter(torch.zeros(bias_shape))
            self.position_bias = nn.Parameter(torch.zeros(bias_shape))
        self.output_size = config.hidden_size
        # (key, table): the distance encodings that decoding steps share (`_distance_encodings`)
        self._distance_table = None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def forward(self, input_ids=None, attention_mask=None, mems=None, past_key_values=None,
                inputs_embeds=None, token_type_ids=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache=None):
        """`mems`, `cache` or `past_key_values` (three names of one thing: the memory a previous
        call returned) continue a sequence. `attention_mask`: (batch, length) of the new tokens, or
        (batch, all tokens seen + length) as `generate()` passes it; the memory remembers its own
        padding."""
        batch, length = input_shape(input_ids, inputs_embeds, self.dtype)
        memory = TransfoXLMemory.wrap(given_cache(mems, given_cache(cache, past_key_values)),
                                      self.config.num_hidden_layers)
        reference = input_ids if input_ids is not None else inputs_embeds
        if token_type_ids is not None:
            check_ids_below(token_type_ids, 1, "token_type_ids", "type_vocab_size")
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if memory is None:
            memory = empty_memory(len(self.layers), batch, self.config.hidden_size, hidden)
        check_memory_shape(memory, batch, self.config.hidden_size)
        new_padding = self._new_token_padding(attention_mask, batch, length, memory)
        key_padding = self._key_padding(memory, new_padding, batch, length, reference.device)
        same_length = self.config.same_length and self.config.mem_len > 0
        window = self.config.mem_len if same_length else None
        visible = VisibleKeys(length, memory.length, window, key_padding, reference.device)
        reuse = reuses_projections(hidden)
        encodings = None
        if self.config.attn_type == 0:
            encodings = self._distance_encodings(memory.length + length, hidden, reuse)
        else:
            hidden = hidden + self._absolute_encodings(new_padding, batch, length, hidden)
        hidden = self.dropout(hidden)

        flags = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        shared = None
        if _shares_position_biases(self.config):
            shared = (self.content_bias, self.position_bias)
        layer_inputs, all_weights, projected = [], (), []
        for index, (layer, layer_memory) in enumerate(zip(self.layers, memory.hidden)):
            layer_inputs.append(hidden)
            stamp = layer.projection_stamp() if reuse else None
            hidden, weights, keys_values = layer(
                hidden, layer_memory.to(hidden.dtype), encodings, visible, shared_biases=shared,
                output_attentions=flags.attentions,
                memory_keys_values=memory.projections(index, stamp) if reuse else None)
            all_weights += (weights,)
            projected.append((stamp, *keys_values))
        hidden = self.dropout(hidden)
        new_memory = None
        if use_cache is not False and self.config.mem_len > 0:
            new_memory = memory.extended(layer_inputs, new_padding, self.config.mem_len,
                                         projected if reuse else None)
        return backbone_output(flags.return_dict, hidden, new_memory,
                               tuple(layer_inputs) + (hidden,) if flags.hidden_states else None,
                               all_weights if flags.attentions else None)

    def _distance_encodings(self, k_len: int, like: torch.Tensor,
                            reuse: bool) -> DistanceEncodings:
        """The encodings of distances k_len - 1, ..., 0 (dropout applied). Where `reuse` allows
        it and no dropout applies, the last rows of one cached table of mem_len + 1 distances,
        the most a generated token sees: a table shared by every step, whose projections the
        layers then cache (a longer segment gets its own, uncached: the cache stays small)."""
        dropped = self.training and self.dropout.p > 0
        if not reuse or dropped or k_len > self.config.mem_len + 1:
            return DistanceEncodings(self.dropout(self._encodings(k_len, like)), k_len)
        table_length = self.config.mem_len + 1
        key = (table_length, self.config.clamp_len, like.dtype, like.device)
        cached = self._distance_table
        if cached is None or cached[0] != key:
            cached = (key, self._encodings(table_length, like))
            self._distance_table = cached
        return DistanceEncodings(cached[1], k_len, reusable=True)

    def _encodings(self, k_len: int, like: torch.Tensor) -> torch.Tensor:
        """Sinusoids of the distances k_len - 1, ..., 0, clamped at clamp_len (if > 0)."""
        distances = torch.arange(k_len - 1, -1, -1.0, device=like.device)
        if self.config.clamp_len > 0:
            distances = distances.clamp(max=self.config.clamp_len)
        return sinusoid_encoding(distances, self.config.hidden_size, like.dtype)

    def _absolute_encodings(self, new_padding, batch: int, length: int,
                            like: torch.Tensor) -> torch.Tensor:
        """attn_type 2: (batch or 1, length, d_model) sinusoids of each new token's position in its
        segment, counted in real tokens from the segment's first one (left padding shifts
        nothing)."""
        real = torch.ones(1, length, dtype=torch.long, device=like.device) if new_padding is None \
            else new_padding.long()
        positions = (real.cumsum(1) - real).flatten().float()  # real tokens before each one
        if self.config.clamp_len > 0:
            positions = positions.clamp(max=self.config.clamp_len)
        encodings = sinusoid_encoding(positions, self.config.hidden_size, like.dtype)
        return encodings.view(real.shape[0], length, -1)

    @staticmethod
    def _new_token_padding(attention_mask, batch: int, length: int, memory: TransfoXLMemory):
        """(batch, length) bool of the new tokens that are real, or None."""
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or \
                attention_mask.shape[1] not in (length, memory.seen + length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; longctx-transfo-xl takes "
                f"a 2D mask of 1 for tokens and 0 for padding, either of the new tokens ({batch}, "
                f"{length}) or of every token since the memory started ({batch}, "
                f"{memory.seen + length}).")
        check_mask_values(attention_mask)
        return attention_mask[:, -length:].bool()

    @staticmethod
    def _key_padding(memory, new_padding, batch, length, device):
        """(batch, memory + length) bool of real keys, or None when every key is real (fast
        path)."""
        if memory.padding is None and (new_padding is None or bool(new_padding.all())):
            return None
        ones = lambda n: torch.ones(batch, n, dtype=torch.bool, device=device)  # noqa: E731
        old = memory.padding if memory.padding is not None else ones(memory.length)
        return torch.cat([old, new_padding if new_padding is not None else ones(length)], dim=1)


@dataclass
class TransfoXLLMOutput(CausalLMOutputWithPast):
    """`losses`: (batch, length - 1) per-token negative log-likelihoods (0 at -100 labels), in token
    order; `loss` their mean over labelled tokens. `logits`: log-probabilities (batch, length,
    vocab_size), computed without labels and in evaluation (eval mode), where Trainer's metrics
    read them; a training step with labels skips them, so that the adaptive softmax skips the
    full vocabulary (as transformers' TransfoXL did with labels). `mems` (also `cache`;
    `past_key_values` before transformers 5.24): the memory for the next segment."""

    losses: torch.Tensor | None = None

    @property
    def mems(self):
        return cache_of(self)


class LongctxTransfoXLForCausalLM(GeneratesWithOwnCache, HeadBase, LongctxTransfoXLPreTrainedModel,
                                  GenerationMixin):
    """The memory (TransfoXLMemory) is the generation cache."""

    backbone_class = LongctxTransfoXLModel

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = AdaptiveLogSoftmax(config)
        self.post_init()

    def get_output_embeddings(self):
        return None  # the adaptive softmax reads the embedding tables itself: nothing to tie

    def forward(self, input_ids=None, attention_mask=None, labels=None, mems=None,
                logits_to_keep: int = 0, **kwargs):
        """`labels` are the input ids (shifted inside); -100 marks positions without loss."""
        outputs, as_tuple = self._backbone(dict(kwargs, input_ids=input_ids, mems=mems,
                                                attention_mask=attention_mask))
        hidden = outputs.last_hidden_state
        embeddings = self.model.embeddings
        loss = losses = logits = None
        if labels is not None:
            check_labels(labels, hidden.shape[:2], self.config.vocab_size, "vocab_size")
            targets = labels[:, 1:].to(hidden.device)
            losses = self.lm_head.target_losses(hidden[:, :-1].flatten(0, 1), targets.flatten(),
                                                embeddings)
            losses = losses.view_as(targets)  # (batch, length - 1)
            loss = losses.sum() / (targets != -100).sum().clamp(min=1)
        if labels is None or not self.training:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            logits = self.lm_head.log_probs(kept, embeddings)  # (batch, kept, vocab_size)
        return self._finish(TransfoXLLMOutput(
            loss=loss, logits=logits, losses=losses, **cache_field(cache_of(outputs)),
            hidden_states=outputs.hidden_states, attentions=outputs.attentions), as_tuple)


@dataclass
class TransfoXLSequenceClassifierOutput(SequenceClassifierOutputWithPast):
    """`mems` (transformers 4.35.2's name; also `cache`, or `past_key_values` before transformers
    5.24): the memory for the next segment."""

    @property
    def mems(self):
        return cache_of(self)


class LongctxTransfoXLForSequenceClassification(ForSequenceClassification,
                                                LongctxTransfoXLPreTrainedModel):
    """Pass a long document's segments in order with `mems` (the previous call's) to classify it
    at its last segment with the memory of the earlier ones."""

    backbone_class = LongctxTransfoXLModel
    output_class = TransfoXLSequenceClassifierOutput


class LongctxTransfoXLForQuestionAnswering(ForQuestionAnswering, LongctxTransfoXLPreTrainedModel):
    backbone_class = LongctxTransfoXLModel
