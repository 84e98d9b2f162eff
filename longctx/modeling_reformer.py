"""`longctx-reformer` (Kitaev et al. 2020): LSH and local chunked self-attention, axial position
embeddings, chunked feed-forward and reversible residual layers, numerically transformers'
ReformerModel (checkpoints convert with `python -m longctx.convert`).

The stack: embeddings X -> two streams X1 = X2 = X -> per layer Y1 = X1 + Attention(X2),
Y2 = X2 + FeedForward(Y1) -> LayerNorm(concat(Y1, Y2)), so the hidden states are
2 x hidden_size wide (`output_size`), and the heads read both streams, as transformers' do.
In training the backward pass recomputes each layer from the stack's output (`reversible.py`),
reusing the forward's LSH buckets and dropout masks; only the last layer keeps its activations
from the forward pass (see `_layers`).

Inputs the chunked kernels cannot take as they are, the model arranges itself:
- a length above the shortest chunk that is not a multiple of every chunk length is padded on the
  right (masked), as transformers does in evaluation (it refuses in training; here both work);
- left padding (what `generate()` and the harness use for decoders) is moved to the right, per
  row, and moved back on output: chunks are aligned to the first real token, so a left-padded
  row gives what it gives alone (transformers only handles right padding).
Positions count real tokens (`position_ids_from_mask`), like the other longctx models;
transformers counts from the first column, which is the same for right-padded batches.

LSH attention is causal in its weights (no query weighs a later key) but not in what it computes,
and transformers' Reformer is the same: a query's sorted chunk, so which earlier keys it sees,
depends on how many entries of all lower buckets precede it, later tokens' included. In a tiny
decoder (tests/test_reformer_causality.py prints the sizes) redrawing the tokens after t moved
the logits at t by 1.5-9.9 (their range: about 17), and rows right-padded to 32 tokens differed
from the rows alone by 1.0-8.1 (the chunks wrap around and the rounds start at multiples of the
padded length). So a training loss at t can depend on later tokens, and a
longer input changes the outputs at earlier positions; `generate()` equals a forward over the
prefix. No setting removes it at LSH's cost: a sort in which t's place ignores later tokens
needs a sort per prefix, or all earlier keys of t's bucket (quadratic at worst), or chunks fixed
by position, which is local attention. What removes it drops hashing: `attn_layers` of "local"
only, or inputs no longer than `lsh_attn_chunk_length` (plain attention).

Generation caches (config.generation_cache). "buckets", the default: the prompt runs the full
forward above and each layer keeps its keys and values (rows right-aligned, as the forward
arranges them): LSH layers their length-normalised shared keys with the bucket of each hash round
(the rotations fixed for the whole generation: hash_seed's, or the ones the prompt's forward
drew, or drawn once at the first hashed step), local layers the chunks a new token may still look
back on. A new token then runs alone through the layers (the two reversible streams of one
position): in each LSH round it attends to the earlier keys of its own bucket, its own key at
-1e5, the rounds combined by their logsumexps as the full kernel does; in a local layer, to its
chunk and the `local_num_chunks_before` chunks before it. A step costs O(length) (one bucket
comparison per cached key; no hashing of cached keys, no sort), not a forward. The rule: where
nothing hashes (local layers only, or sequences no longer than `lsh_attn_chunk_length`) this is
exactly the full forward over the prefix (with local_num_chunks_before <= 1: with more, the full
forward's chunks wrap around and count a key twice while fewer chunks exist than it looks back
on); once LSH layers hash, it is attention within the bucket, which the full forward approximates
by its chunked sort, so the greedy tokens can differ from a full forward's (how often on a trained
model: results/reformer-generation-cache/). "recompute": the cache keeps the token embeddings and
every call recomputes the whole sequence (`ReformerRecomputeCache`): exactly a full forward over
the prefix, at a full forward per token.
"""

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

from .compat import given_cache
from .attention_lsh import (
    length_normalised_keys,
    local_attention,
    local_attention_reference,
    lsh_attention,
    lsh_attention_reference,
    lsh_hash,
    random_rotations,
)
from .attention_lsh_cache import bucket_columns, ColumnBuffer, decode_attention
from .configuration_reformer import LongctxReformerConfig
from .modeling_blocks import (
    backbone_output,
    is_encoder_without_cache,
    LongctxPreTrainedModel,
    check_attention_mask,
    check_ids_below,
    check_positions,
    input_shape,
    key_padding_mask,
    merge_heads,
    output_flags,
    position_ids_from_mask,
    split_heads,
    WordEmbeddingsAccess,
)
from .modeling_heads import (
    DecoderOutputEmbeddings,
    ForCausalLM,
    ForMaskedLM,
    ForQuestionAnswering,
    ForSequenceClassification,
    GeneratesWithOwnCache,
)
from .reversible import RandomReplay, ReversibleBlock, reversible_stack

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------- embeddings
class AxialPositionEmbeddings(nn.Module):
    """Position p = (row p // cols, column p % cols) of `axial_pos_shape` (rows, cols) is the
    concatenation of a row vector and a column vector: rows * cols positions from rows + cols
    vectors. Weights (rows, 1, d_rows) and (1, cols, d_cols), transformers' layout.

    Training with dropout drops whole columns (every position p with the same p % cols, per row
    of the batch), as transformers' dropout2d does."""

    def __init__(self, config):
        super().__init__()
        (rows, cols), (row_dim, col_dim) = config.axial_pos_shape, config.axial_pos_embds_dim
        self.shape = (rows, cols)
        self.dropout = config.hidden_dropout_prob
        self.weights = nn.ParameterList([nn.Parameter(torch.ones(rows, 1, row_dim)),
                                         nn.Parameter(torch.ones(1, cols, col_dim))])

    def forward(self, position_ids):  # (batch, length) -> (batch, length, hidden)
        rows, cols = self.shape
        largest = int(position_ids.max()) if position_ids.numel() else -1
        if largest >= rows * cols:
            needed_cols = math.isqrt(largest) + 1
            raise ValueError(
                f"Input needs position {largest} but axial_pos_shape={list(self.shape)} holds "
                f"{rows * cols} positions; build the model with an axial_pos_shape whose product "
                f"is at least {largest + 1} (e.g. [{-(-(largest + 1) // needed_cols)}, "
                f"{needed_cols}]), or truncate the input.")
        row_vectors = self.weights[0][:, 0][position_ids // cols]
        col_vectors = self.weights[1][0][position_ids % cols]
        encodings = torch.cat([row_vectors, col_vectors], dim=-1)
        if self.training and self.dropout:
            keep = torch.rand(position_ids.shape[0], cols, device=encodings.device) >= self.dropout
            kept = keep.gather(1, (position_ids % cols).expand(position_ids.shape[0], -1))
            encodings = encodings * kept[..., None].to(encodings.dtype) / (1 - self.dropout)
        return encodings


class LearnedPositionEmbeddings(nn.Module):
    """`axial_pos_embds=False`: one learned vector per position, with dropout (transformers')."""

    def __init__(self, config):
        super().__init__()
        self.embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, position_ids):
        return self.dropout(self.embedding(position_ids))


class ReformerEmbeddings(nn.Module):
    """dropout(token embeddings) + position embeddings (transformers' order)."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (AxialPositionEmbeddings(config) if config.axial_pos_embds
                                    else LearnedPositionEmbeddings(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def tokens(self, input_ids):
        check_ids_below(input_ids, self.word_embeddings.num_embeddings, "input_ids", "vocab_size")
        return self.word_embeddings(input_ids)

    def forward(self, token_embeddings, position_ids):
        return self.dropout(token_embeddings) + self.position_embeddings(position_ids)


# ------------------------------------------------------------------------------------- attention
class LayerReplay:
    """What one layer's forward drew at random and its recomputation must reuse: the LSH rotations
    (drawn before the layer runs, so that the dropout draws inside it come in the same order when
    it runs again), the buckets they gave, and the dropout RNG states."""

    def __init__(self, random: RandomReplay, rotations=None):
        self.random = random
        self.rotations = rotations
        self.buckets = None


class ReformerAttention(nn.Module):
    """LayerNorm -> LSH or local self-attention -> output projection -> dropout: the branch f of a
    reversible layer. No projection has a bias (transformers' layout)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config  # num_buckets=None is settled (and stored) at the first long input
        self.kind = config.attn_layers[layer_idx]
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        width = config.num_attention_heads * config.attention_head_size
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        names = ("query_key", "value") if self.kind == "lsh" else ("query", "key", "value")
        for name in names:
            setattr(self, name, nn.Linear(config.hidden_size, width, bias=False))
        self.output = nn.Linear(width, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, key_padding_mask=None, replay: LayerReplay | None = None,
                output_attentions=False, num_hashes=None, record: dict | None = None):
        """`record`: a dict that receives, under this layer's index, what a bucket cache keeps
        (the layer's keys and values, and for LSH its rotations)."""
        normed = self.layer_norm(hidden)
        if self.kind == "lsh":
            out, weights = self._lsh(normed, key_padding_mask, replay, output_attentions,
                                     num_hashes, record)
        else:
            out, weights = self._local(normed, key_padding_mask, output_attentions, record)
        return self.dropout(self.output(merge_heads(out))), weights

    def _lsh(self, normed, key_padding_mask, replay, output_attentions, num_hashes, record):
        config = self.config
        qk, v = (split_heads(proj(normed), self.num_heads)
                 for proj in (self.query_key, self.value))
        num_hashes = num_hashes or config.num_hashes
        if record is not None:
            rotations = replay.rotations if replay is not None else None
            record[self.layer_idx] = LshLayerState.from_forward(qk, v, rotations, num_hashes)
        options = dict(num_hashes=num_hashes, num_buckets=self._num_buckets(qk.shape[2]),
                       chunk_length=config.lsh_attn_chunk_length,
                       num_chunks_before=config.lsh_num_chunks_before,
                       num_chunks_after=config.lsh_num_chunks_after, causal=config.is_decoder,
                       key_padding_mask=key_padding_mask,
                       dropout_p=config.lsh_attention_probs_dropout_prob if self.training else 0.0,
                       buckets=self._buckets(qk, num_hashes, key_padding_mask, replay))
        out = lsh_attention(qk, v, **options)
        # Weights (batch, heads, length, length) for inspection come from the dense reference; the
        # output stays the kernel's (in float32 the two round differently where a hash round sees
        # only the query itself, and decoders' first tokens do).
        return out, (lsh_attention_reference(qk, v, combine_rounds=True, **options)[1]
                     if output_attentions else None)

    def _num_buckets(self, length: int):
        """config.num_buckets, or transformers' choice for the first long input: 2 * length / chunk
        rounded down to a power of 2, factorised in two when above its limit; stored in the
        config."""
        config = self.config
        if config.num_buckets is not None or length <= config.lsh_attn_chunk_length:
            return config.num_buckets or 2
        power = (2 * (length // config.lsh_attn_chunk_length)).bit_length() - 1
        limit = 2 * max(
            int((config.max_position_embeddings // config.lsh_attn_chunk_length) ** 0.5),
            config.lsh_attn_chunk_length)
        config.num_buckets = (2 ** power if 2 ** power <= limit
                              else [2 ** (power // 2), 2 ** (power - power // 2)])
        return config.num_buckets

    def _buckets(self, qk, num_hashes, key_padding_mask, replay):
        """The hash of this forward, drawn once and reused by the reversible recomputation."""
        if qk.shape[2] <= self.config.lsh_attn_chunk_length:
            return None  # no hashing: plain attention over the sequence
        if replay is not None and replay.buckets is not None:
            return replay.buckets
        rotations = replay.rotations if replay is not None else None
        buckets = lsh_hash(qk, self._num_buckets(qk.shape[2]), num_hashes,
                           key_padding_mask=key_padding_mask,
                           **({"rotations": rotations} if rotations is not None
                              else {"seed": self.config.hash_seed}))
        if replay is not None:
            replay.buckets = buckets
        return buckets

    def draw_rotations(self, length: int, num_hashes, like: torch.Tensor):
        """Random rotations for this forward when they come from the global RNG (no hash_seed, a
        sequence long enough to hash); None otherwise."""
        config = self.config
        if (self.kind != "lsh" or config.hash_seed is not None
                or length <= config.lsh_attn_chunk_length):
            return None
        return random_rotations(self.num_heads, config.attention_head_size,
                                self._num_buckets(length), num_hashes or config.num_hashes,
                                dtype=like.dtype, device=like.device)

    def _local(self, normed, key_padding_mask, output_attentions, record):
        config = self.config
        q, k, v = (split_heads(proj(normed), self.num_heads)
                   for proj in (self.query, self.key, self.value))
        if record is not None:
            record[self.layer_idx] = LocalLayerState.from_forward(k, v)
        options = dict(chunk_length=config.local_attn_chunk_length,
                       num_chunks_before=config.local_num_chunks_before,
                       num_chunks_after=config.local_num_chunks_after, causal=config.is_decoder,
                       key_padding_mask=key_padding_mask,
                       dropout_p=(config.local_attention_probs_dropout_prob if self.training
                                  else 0.0))
        out = local_attention(q, k, v, **options)
        return out, local_attention_reference(q, k, v, **options)[1] if output_attentions else None


    # ------------------------------------------------------------------- one token with a cache
    def decode(self, hidden, state, step: "DecodeStep"):
        """hidden (batch, 1, hidden_size) of the new token -> the branch's output for it, its keys
        and values written into `state` (see ReformerBucketCache)."""
        normed = self.layer_norm(hidden)
        if self.kind == "lsh":
            out = self._decode_lsh(normed, state, step)
        else:
            out = self._decode_local(normed, state, step)
        return self.dropout(self.output(merge_heads(out)))

    def _decode_lsh(self, normed, state, step):
        qk, v = (split_heads(proj(normed), self.num_heads)
                 for proj in (self.query_key, self.value))  # (batch, heads, 1, dim)
        keys = length_normalised_keys(qk)
        state.keys.write(keys, step.columns, step.last)
        state.values.write(v, step.columns, step.last)
        end = step.last + 1
        columns = torch.arange(end, device=qk.device)
        earlier = (columns[None, :] < step.columns[:, None])[:, None, None]  # (batch, 1, 1, end)
        is_self = (columns[None, :] == step.columns[:, None])[:, None, None]
        visible = earlier
        if step.padded_length > self.config.lsh_attn_chunk_length:  # the hashed regime
            buckets = self._cached_buckets(state, keys, step)  # (batch, heads, end, rounds)
            query_buckets = buckets.gather(2, step.columns.view(-1, 1, 1, 1).expand(
                -1, buckets.shape[1], 1, buckets.shape[3]))  # (batch, heads, 1, rounds)
            visible = earlier & (buckets == query_buckets).transpose(2, 3)  # (b, h, rounds, end)
        return decode_attention(qk, state.keys.upto(end), state.values.upto(end), visible,
                                is_self)

    def _cached_buckets(self, state, keys, step):
        """The bucket ids of columns 0 .. step.last, the new token's written in: at the first
        hashed step, every cached key is hashed once (rotations fixed from then on)."""
        if state.buckets is None:
            if state.rotations is None:  # the prompt was not hashed: fix the rotations now
                state.rotations = self.fixed_rotations(step.padded_length, state.num_hashes,
                                                       keys)
            state.num_buckets = self._num_buckets(step.padded_length)
            state.buckets = ColumnBuffer.holding(
                bucket_columns(state.keys.upto(step.last + 1), state.num_buckets,
                               state.rotations), spare=state.keys.data.shape[2] - step.last)
        else:
            state.buckets.write(bucket_columns(keys, state.num_buckets, state.rotations),
                                step.columns, step.last)
        return state.buckets.upto(step.last + 1)

    def fixed_rotations(self, length: int, num_hashes: int, like: torch.Tensor):
        """The rotations of a generation: hash_seed's, or drawn once from the global RNG."""
        return random_rotations(self.num_heads, self.config.attention_head_size,
                                self._num_buckets(length), num_hashes, seed=self.config.hash_seed,
                                dtype=like.dtype, device=like.device)

    def _decode_local(self, normed, state, step):
        q, k, v = (split_heads(proj(normed), self.num_heads)
                   for proj in (self.query, self.key, self.value))  # (batch, heads, 1, dim)
        state.keys.write(k / math.sqrt(q.shape[-1]), step.columns, step.last)
        state.values.write(v, step.columns, step.last)
        end = step.last + 1
        columns = torch.arange(state.keys.first, end, device=q.device)
        first_seen = local_window_start(step.columns, self.config)  # (batch,)
        visible = ((columns[None, :] >= first_seen[:, None])
                   & (columns[None, :] <= step.columns[:, None]))[:, None, None]  # (b, 1, 1, n)
        return decode_attention(q, state.keys.upto(end), state.values.upto(end), visible)


def local_window_start(columns, config):
    """First key column a local layer's query at `columns` sees: the start of the
    local_num_chunks_before chunks before its own (chunks start at multiples of the chunk length
    from the row's first real token; 0 while the sequence fits one chunk, where columns < chunk)."""
    chunk = config.local_attn_chunk_length
    return ((columns // chunk - config.local_num_chunks_before) * chunk).clamp(min=0)


class ChunkedFeedForward(nn.Module):
    """LayerNorm -> dense -> dropout -> activation -> dense -> dropout (transformers' order): the
    branch g of a reversible layer, run on `chunk_size_feed_forward` positions at a time (0:
    all)."""

    def __init__(self, config):
        super().__init__()
        self.chunk_size = config.chunk_size_feed_forward
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden):
        if not self.chunk_size or hidden.shape[1] <= self.chunk_size:
            return self._chunk(hidden)
        return torch.cat([self._chunk(part) for part in hidden.split(self.chunk_size, dim=1)],
                         dim=1)

    def _chunk(self, hidden):
        inner = self.activation(self.dropout(self.dense_in(self.layer_norm(hidden))))
        return self.dropout(self.dense_out(inner))


class ReformerLayer(GradientCheckpointingLayer):
    """One reversible layer: Y1 = X1 + attention(X2), Y2 = X2 + feed_forward(Y1).

    Called as a module only by the plain-autograd path (`reversible=False`, or hidden states or
    attention weights asked for), which gradient checkpointing then applies to: the recomputation
    reuses the forward's LSH buckets (`replay`) and, restored by torch's checkpoint, its dropout
    masks. The reversible path calls `block`'s branches and is never checkpointed."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.attention = ReformerAttention(config, layer_idx)
        self.feed_forward = ChunkedFeedForward(config)

    def forward(self, x1, x2, replay: LayerReplay, **attention_kwargs):
        attended, weights = self.attention(x2, replay=replay, **attention_kwargs)
        y1 = x1 + attended
        return y1, x2 + self.feed_forward(y1), weights

    def block(self, replay: LayerReplay, **attention_kwargs) -> ReversibleBlock:
        """f and g for `reversible_stack`, replaying this forward's buckets and dropout masks."""
        def f(x2):
            with replay.random.scope("attention"):
                return self.attention(x2, replay=replay, **attention_kwargs)[0]

        def g(y1):
            with replay.random.scope("feed_forward"):
                return self.feed_forward(y1)

        return ReversibleBlock(f, g, list(self.attention.parameters()),
                               list(self.feed_forward.parameters()))


# ------------------------------------------------------------------------------------------ cache
SPARE_COLUMNS = 64  # free columns a bucket cache has after the prompt (it grows by doubling)


class LshLayerState:
    """An LSH layer's cache: the length-normalised shared keys and the values (batch, heads,
    columns, head_dim), the bucket ids (batch, heads, columns, rounds; hashed at the first step
    that hashes) and the rotations fixed for the whole generation."""

    def __init__(self, keys: ColumnBuffer, values: ColumnBuffer, rotations, num_hashes: int):
        self.keys, self.values = keys, values
        self.rotations, self.num_hashes = rotations, num_hashes
        self.buckets, self.num_buckets = None, None

    @classmethod
    def from_forward(cls, qk, v, rotations, num_hashes):
        """From a full forward's shared keys and values (rows right-aligned)."""
        return cls(ColumnBuffer.holding(length_normalised_keys(qk.detach()), SPARE_COLUMNS),
                   ColumnBuffer.holding(v.detach(), SPARE_COLUMNS), rotations, num_hashes)

    def buffers(self):
        return [b for b in (self.keys, self.values, self.buckets) if b is not None]


class LocalLayerState:
    """A local layer's cache: keys divided by sqrt(head_dim) and values, from the first column
    a row may still look back on."""

    def __init__(self, keys: ColumnBuffer, values: ColumnBuffer):
        self.keys, self.values = keys, values

    @classmethod
    def from_forward(cls, k, v):
        return cls(ColumnBuffer.holding(k.detach() / math.sqrt(k.shape[-1]), SPARE_COLUMNS),
                   ColumnBuffer.holding(v.detach(), SPARE_COLUMNS))

    def buffers(self):
        return [self.keys, self.values]


class DecodeStep(NamedTuple):
    """Where the new token goes: columns (batch,) its column per right-aligned row (the number of
    real tokens before it), last = an upper bound of max(columns) as a Python int, and the
    length the whole sequence would run at in a full forward (which decides hashing)."""

    columns: torch.Tensor
    last: int
    padded_length: int


class ReformerBucketCache:
    """A decoder's generation state with `generation_cache="buckets"` (the default): per layer the
    keys and values of every earlier token (LSH layers: with their buckets; local layers: the
    chunks still looked at), in rows right-aligned as the full forward arranges them
    (`lengths`: real tokens per row). The first call runs a full forward and fills it; each
    later token runs alone through the layers (`LongctxReformerModel._decode`)."""

    def __init__(self):
        self.layers = None
        self.lengths = None  # (batch,) real tokens per row
        self.last = -1  # an upper bound of max(lengths) - 1, kept as a Python int
        self.seen = 0  # columns taken, padding included (what generate() has fed)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self):
        return self.seen

    def fill(self, states: dict, attention_mask, length: int, device):
        """After the prompt's full forward: `states` per layer index, from `record`."""
        self.layers = [states[i] for i in range(len(states))]
        if attention_mask is None:
            batch = self.layers[0].keys.data.shape[0]
            self.lengths = torch.full((batch,), length, dtype=torch.long, device=device)
        else:
            self.lengths = attention_mask.long().sum(dim=1)
        self.last = int(self.lengths.max()) - 1
        self.seen = length

    def next_step(self, config) -> DecodeStep:
        return DecodeStep(self.lengths, self.last + 1, config.padded_length(self.seen + 1))

    def advance(self, is_real, config):
        """After a token: rows where it was real count it; local layers forget the chunks no row
        looks at any more (checked once per chunk: it needs the shortest row)."""
        self.lengths = self.lengths + is_real.long()
        self.last, self.seen = self.last + 1, self.seen + 1
        chunk = config.local_attn_chunk_length
        if self.seen % chunk == 0:
            shortest = int(self.lengths.min())
            first = max(0, (shortest // chunk - config.local_num_chunks_before) * chunk)
            for state in self.layers:
                if isinstance(state, LocalLayerState):
                    state.keys.drop_before(first)
                    state.values.drop_before(first)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        beam_idx = beam_idx.to(self.lengths.device)
        self.lengths = self.lengths.index_select(0, beam_idx)
        for state in self.layers:
            for buffer in state.buffers():
                buffer.reorder(beam_idx)


class ReformerRecomputeCache:
    """`generation_cache="recompute"`: a decoder's generation state: the token embeddings
    (batch, seen, hidden) and positions of every token so far; each call recomputes the whole
    sequence (exact; see the module doc)."""

    def __init__(self, embeddings: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None):
        self.embeddings = embeddings
        self.position_ids = position_ids

    @property
    def seen(self) -> int:
        return 0 if self.embeddings is None else self.embeddings.shape[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self):
        return self.seen

    def extended(self, embeddings, position_ids) -> "ReformerRecomputeCache":
        embeddings = embeddings.detach()
        if self.embeddings is None:
            return ReformerRecomputeCache(embeddings, position_ids)
        if self.embeddings.shape[0] != embeddings.shape[0]:
            raise ValueError(f"The cache holds {self.embeddings.shape[0]} rows but the input has "
                             f"{embeddings.shape[0]}; pass the cache this model returned for this "
                             "batch.")
        positions = None
        if self.position_ids is not None and position_ids is not None:
            positions = torch.cat([self.position_ids, position_ids], dim=1)
        return ReformerRecomputeCache(torch.cat([self.embeddings, embeddings], dim=1), positions)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self.embeddings = self.embeddings.index_select(0, beam_idx.to(self.embeddings.device))
        if self.position_ids is not None:
            self.position_ids = self.position_ids.index_select(
                0, beam_idx.to(self.position_ids.device))


# ------------------------------------------------------------------------------------- the models
class LongctxReformerPreTrainedModel(LongctxPreTrainedModel):
    config_class = LongctxReformerConfig
    _no_split_modules = ["ReformerLayer"]

    def activation_checkpointing_enable(self, *args, **kwargs):
        """Accepted (Trainer's --gradient_checkpointing calls it), and applied to the layers when
        they run with plain autograd. The reversible layers already recompute their activations in
        the backward pass, so with `reversible=True` (the default) it changes nothing; a warning
        says so, once."""
        super().activation_checkpointing_enable(*args, **kwargs)
        self._warn_if_reversible()

    def gradient_checkpointing_enable(self, *args, **kwargs):
        """transformers' name for `activation_checkpointing_enable` before 5.23, a deprecated alias
        of it after (which then warns once, through the method above)."""
        super().gradient_checkpointing_enable(*args, **kwargs)
        self._warn_if_reversible()

    def _warn_if_reversible(self):
        if self.config.reversible:
            logger.warning_once(
                "longctx-reformer: gradient checkpointing is not applied to the reversible layers "
                "(reversible=True), which already recompute their activations in the backward "
                "pass, keeping activation memory independent of depth; it applies when the layers "
                "run with plain autograd (reversible=False, or output_hidden_states / "
                "output_attentions asked for in training).")

    def _init_weights(self, module):
        if isinstance(module, AxialPositionEmbeddings):
            for weight in module.weights:
                init.normal_(weight, 0.0, self.config.axial_norm_std)
        else:
            super()._init_weights(module)


class LongctxReformerModel(WordEmbeddingsAccess, LongctxReformerPreTrainedModel):
    """Embeddings -> reversible LSH / local layers -> LayerNorm over both streams -> dropout.
    `last_hidden_state` is (batch, length, 2 * hidden_size); `hidden_states`, when asked for,
    are the second stream before each layer and after the last (hidden_size wide), as transformers.
    Asking for them (or for attention weights) runs the layers with plain autograd, without the
    reversible backward, so that they carry gradients."""

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = ReformerEmbeddings(config)
        self.layers = nn.ModuleList(ReformerLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.output_size = 2 * config.hidden_size
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, num_hashes=None, cache=None):
        """`num_hashes` overrides config.num_hashes for this call (transformers' argument; a
        bucket cache keeps the prompt's). `cache` (or `past_key_values`, its name before
        transformers 5.24): the cache of the previous call, a ReformerBucketCache or a
        ReformerRecomputeCache (config.generation_cache picks which a first call starts)."""
        batch, length = input_shape(input_ids, inputs_embeds, self.dtype)
        if token_type_ids is not None:
            check_ids_below(token_type_ids, 1, "token_type_ids", "type_vocab_size")
        if position_ids is not None:  # before a cache takes them in
            check_positions(position_ids, self.config.max_position_embeddings)
        cache = self._cache(given_cache(cache, past_key_values), use_cache)
        past = cache.seen if cache is not None else 0
        check_attention_mask(attention_mask, batch, past + length)
        tokens = self.embeddings.tokens(input_ids) if inputs_embeds is None else inputs_embeds
        flags = output_flags(self.config, output_attentions, output_hidden_states, return_dict)
        if isinstance(cache, ReformerBucketCache):
            return self._with_bucket_cache(tokens, attention_mask, position_ids, cache, flags,
                                           num_hashes)
        if cache is not None:  # the cache keeps detached copies; this forward keeps the gradient
            past_tokens, cache = cache.embeddings, cache.extended(tokens, position_ids)
            tokens = tokens if past_tokens is None else torch.cat([past_tokens, tokens], dim=1)
            position_ids = cache.position_ids
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, 0, past + length, tokens.device)
        check_positions(position_ids, self.config.max_position_embeddings)
        hidden, all_hidden, all_weights = self._encode(tokens, attention_mask, position_ids,
                                                       flags.attentions, flags.hidden_states,
                                                       num_hashes)
        return backbone_output(flags.return_dict, hidden[:, -length:], cache,
                               all_hidden if flags.hidden_states else None,
                               all_weights if flags.attentions else None)

    def _cache(self, cache, use_cache):
        """The cache given, or a new empty one of config.generation_cache's kind when use_cache
        (none for a bucket cache in training: it would keep two activations per layer, which the
        reversible layers exist not to keep)."""
        if is_encoder_without_cache(self.config, cache):
            return None
        if cache is not None and not isinstance(cache, (ReformerBucketCache,
                                                        ReformerRecomputeCache)):
            raise ValueError(f"cache (past_key_values) is a {type(cache).__name__}; "
                             f"longctx-reformer takes the ReformerBucketCache or "
                             f"ReformerRecomputeCache a previous call returned (or None to "
                             f"start).")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None or not use_cache:
            return cache
        if self.config.generation_cache == "recompute":
            return ReformerRecomputeCache()
        return None if self.training else ReformerBucketCache()

    # ------------------------------------------------------------------ generation_cache="buckets"
    def _with_bucket_cache(self, tokens, attention_mask, position_ids, cache, flags, num_hashes):
        """First call: a full forward that fills the cache. Later calls: each new token alone
        through the layers against the cache (`_decode_token`)."""
        length = tokens.shape[1]
        if cache.layers is None:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, 0, length, tokens.device)
            check_positions(position_ids, self.config.max_position_embeddings)
            record = {}
            hidden, all_hidden, all_weights = self._encode(
                tokens, attention_mask, position_ids, flags.attentions, flags.hidden_states,
                num_hashes, record=record)
            cache.fill(record, attention_mask, length, tokens.device)
            return backbone_output(flags.return_dict, hidden, cache,
                                   all_hidden if flags.hidden_states else None,
                                   all_weights if flags.attentions else None)
        if flags.attentions:
            raise ValueError("output_attentions=True with a bucket cache: a cached step has no "
                             "full attention matrix; build the model with "
                             "generation_cache='recompute' (or pass use_cache=False).")
        is_real = (torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
                   if attention_mask is None else attention_mask[:, -length:].bool())
        outputs, per_layer = [], []
        for t in range(length):
            positions = None if position_ids is None else position_ids[:, t:t + 1]
            hidden, all_hidden = self._decode_token(tokens[:, t:t + 1], is_real[:, t],
                                                    positions, cache)
            outputs.append(hidden)
            per_layer.append(all_hidden)
        all_hidden = tuple(torch.cat(states, dim=1) for states in zip(*per_layer))
        return backbone_output(flags.return_dict, torch.cat(outputs, dim=1), cache,
                               all_hidden if flags.hidden_states else None, None)

    def _decode_token(self, tokens, is_real, position_ids, cache):
        """tokens (batch, 1, hidden) of one new column -> (final hidden (batch, 1, 2 * hidden),
        X2 before each layer and after the last). Its position counts the row's real tokens."""
        if position_ids is None:  # position_ids_from_mask's rule: padding takes the last one
            position_ids = (cache.lengths - (~is_real).long()).clamp(min=0)[:, None]
        check_positions(position_ids, self.config.max_position_embeddings)
        x1 = x2 = self.embeddings(tokens, position_ids)  # (batch, 1, hidden)
        step = cache.next_step(self.config)
        all_hidden = ()
        for layer, state in zip(self.layers, cache.layers):
            all_hidden += (x2,)
            x1 = x1 + layer.attention.decode(x2, state, step)
            x2 = x2 + layer.feed_forward(x1)
        cache.advance(is_real, self.config)
        return self.dropout(self.final_norm(torch.cat([x1, x2], dim=-1))), all_hidden + (x2,)

    def _encode(self, tokens, attention_mask, position_ids, output_attentions,
                output_hidden_states, num_hashes, record=None):
        """The stack over whole rows: right-aligns, pads to the chunk multiple, runs, undoes
        both. `record` (a dict) receives each layer's cache state, rows right-aligned."""
        total = tokens.shape[1]
        order = right_aligning_order(attention_mask)
        if order is not None:
            tokens, attention_mask = take_rows(tokens, order), take_rows(attention_mask, order)
            position_ids = take_rows(position_ids.expand(tokens.shape[0], -1), order)
        tokens, attention_mask, position_ids = self._pad_to_chunks(tokens, attention_mask,
                                                                   position_ids)
        padding = key_padding_mask(attention_mask)
        hidden = self.embeddings(tokens, position_ids)
        streams, all_hidden, all_weights = self._layers(hidden, padding, output_attentions,
                                                        output_hidden_states, num_hashes, record)
        hidden = self.dropout(self.final_norm(torch.cat(streams, dim=-1)))

        def restore(x, both_axes=False):  # drop the chunk padding, undo the right-alignment
            x = x[:, :, :total, :total] if both_axes else x[:, :total]
            if order is None:
                return x
            return (take_rows(take_rows(x, inverse(order), dim=2), inverse(order), dim=3)
                    if both_axes else take_rows(x, inverse(order)))

        return (restore(hidden), tuple(restore(h) for h in all_hidden),
                tuple(restore(w, both_axes=True) for w in all_weights if w is not None))

    def _pad_to_chunks(self, tokens, attention_mask, position_ids):
        """Lengths above the shortest chunk become a multiple of every chunk length (masked padding,
        position 0: padding is never attended, so what it holds does not matter)."""
        batch, length = tokens.shape[:2]
        extra = self.config.padded_length(length) - length
        if not extra:
            return tokens, attention_mask, position_ids
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=tokens.device)
        return (F.pad(tokens, (0, 0, 0, extra)), F.pad(attention_mask, (0, extra)),
                F.pad(position_ids.expand(batch, -1), (0, extra)))

    def _layers(self, hidden, padding, output_attentions, output_hidden_states, num_hashes,
                record=None):
        """((Y1, Y2), X2 before each layer and after the last, attention weights per layer)."""
        kwargs = dict(key_padding_mask=padding, num_hashes=num_hashes, record=record)
        random = self.training and self._draws_dropout()
        replays = [LayerReplay(RandomReplay(random, hidden.device),
                               layer.attention.draw_rotations(hidden.shape[1], num_hashes, hidden))
                   for layer in self.layers]
        needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(
            p.requires_grad for p in self.layers.parameters()))
        if (self.config.reversible and needs_grad
                and not (output_attentions or output_hidden_states)):
            blocks = [layer.block(replay, **kwargs) for layer, replay in zip(self.layers, replays)]
            *inner, last = blocks
            x1, x2 = reversible_stack(hidden, hidden, inner) if inner else (hidden, hidden)
            # The last layer keeps its activations: the backward would recompute it first thing, and
            # recomputing a layer holds as much memory, so the peak is unchanged with one layer
            # fewer recomputed. Its branches run directly, as the others' do: gradient
            # checkpointing (on the layer's forward) would only add that recomputation back.
            x1 = x1 + last.f(x2)
            return (x1, x2 + last.g(x1)), (), ()
        x1, x2, all_hidden, all_weights = hidden, hidden, (), ()
        for layer, replay in zip(self.layers, replays):
            all_hidden += (x2,)
            x1, x2, weights = layer(x1, x2, replay, output_attentions=output_attentions, **kwargs)
            all_weights += (weights,)
        return (x1, x2), all_hidden + (x2,), all_weights

    def _draws_dropout(self) -> bool:
        config = self.config
        return any(p > 0 for p in (config.hidden_dropout_prob,
                                   config.lsh_attention_probs_dropout_prob,
                                   config.local_attention_probs_dropout_prob))


def right_aligning_order(attention_mask):
    """Per row, the column order that puts real tokens first and padding last (None when every
    row already is so: no padding, or right padding)."""
    if attention_mask is None:
        return None
    real = attention_mask.bool()
    if bool((real[:, 1:] <= real[:, :-1]).all()):
        return None
    return torch.sort((~real).to(torch.int8), dim=1, stable=True).indices


def inverse(order):
    return torch.argsort(order, dim=1)


def take_rows(x, order, dim: int = 1):
    """x with its positions along `dim` reordered per batch row by `order` (batch, length)."""
    shape = [order.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = order.shape[1]
    index = order.view(shape).expand(*x.shape[:dim], order.shape[1], *x.shape[dim + 1:])
    return x.gather(dim, index)


# ------------------------------------------------------------------------------------------ heads
class ReformerLMHead(nn.Module):
    """transformers' `ReformerOnlyLMHead`: one projection of both streams to the vocabulary, with a
    bias, on `chunk_size_lm_head` positions at a time (0: all). Not tied to the embeddings (they
    are hidden_size wide, the streams twice that)."""

    def __init__(self, config, input_size: int):
        super().__init__()
        self.chunk_size = config.chunk_size_lm_head
        self.decoder = nn.Linear(input_size, config.vocab_size)

    def forward(self, hidden):
        if not self.chunk_size or hidden.shape[1] <= self.chunk_size:
            return self.decoder(hidden)
        return torch.cat([self.decoder(part) for part in hidden.split(self.chunk_size, dim=1)],
                         dim=1)


class ReformerHeadMixin(DecoderOutputEmbeddings):
    """The LM heads' projection is transformers' Reformer head, not the shared one, which
    assumes hidden_size-wide outputs tied to the embeddings. Listed before the shared head, so
    that the shared head's constructor builds this one."""

    _tied_weights_keys = {}

    def _build_lm_head(self, config) -> nn.Module:
        return ReformerLMHead(config, self.model.output_size)


class LongctxReformerForCausalLM(GeneratesWithOwnCache, ReformerHeadMixin, ForCausalLM,
                                 LongctxReformerPreTrainedModel, GenerationMixin):
    """The generation cache is a ReformerBucketCache (config.generation_cache="buckets", the
    default) or a ReformerRecomputeCache ("recompute"); see the module doc."""

    backbone_class = LongctxReformerModel


class LongctxReformerForMaskedLM(ReformerHeadMixin, ForMaskedLM, LongctxReformerPreTrainedModel):
    backbone_class = LongctxReformerModel


class LongctxReformerForSequenceClassification(ForSequenceClassification,
                                               LongctxReformerPreTrainedModel):
    backbone_class = LongctxReformerModel


class LongctxReformerForQuestionAnswering(ForQuestionAnswering, LongctxReformerPreTrainedModel):
    backbone_class = LongctxReformerModel


__all__ = ["LongctxReformerModel", "LongctxReformerForCausalLM", "LongctxReformerForMaskedLM",
           "LongctxReformerForSequenceClassification", "LongctxReformerForQuestionAnswering"]
