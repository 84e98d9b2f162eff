"""Configuration of `longctx-reformer` (Kitaev et al. 2020, "Reformer: The Efficient Transformer"):
LSH and local chunked self-attention, axial position embeddings, chunked feed-forward and
reversible residual layers, numerically transformers' Reformer."""

import math

from .configuration_common import LongctxConfig

ATTENTION_KINDS = ("lsh", "local")
GENERATION_CACHES = ("buckets", "recompute")
# transformers' `ReformerConfig` name -> the common longctx field it is (read and written both
# ways).
REFORMER_ALIASES = {"feed_forward_size": "intermediate_size"}


def positive_int(value) -> int | None:
    """The value if it is a positive integer, else None (`_check_fields` then names the field)."""
    return value if isinstance(value, int) and value > 0 else None


def default_axial_shape(max_positions: int) -> tuple[int, int]:
    """Two near-equal factors whose product holds `max_positions` (64 x 64 for 4096)."""
    columns = math.isqrt(max_positions - 1) + 1
    return -(-max_positions // columns), columns


class LongctxReformerConfig(LongctxConfig):
    """transformers' `ReformerConfig` field names, one to one, so checkpoints map directly:

    - `attn_layers`: one of "lsh" / "local" per layer; it fixes `num_hidden_layers` (None: "local"
      and "lsh" alternating over `num_hidden_layers` layers).
    - LSH layers: `num_hashes` rounds of hashing into `num_buckets` buckets (an even int, or a
      list of even factors; None: chosen from the first long input as transformers does,
      2 * length / chunk rounded down to a power of 2, and stored in the config), chunks of
      `lsh_attn_chunk_length`, each query seeing `lsh_num_chunks_before` / `_after` neighbouring
      chunks; `hash_seed` fixes the random rotations (None: new ones every forward, as
      transformers).
    - Local layers: chunks of `local_attn_chunk_length` seeing `local_num_chunks_before` / `_after`.
    - `attention_head_size`: width of one head (None: hidden_size // num_attention_heads).
    - `axial_pos_embds`: axial position embeddings, position p = (p // cols, p % cols) of
      `axial_pos_shape` (rows, cols) (None: two near-equal factors holding
      max_position_embeddings), with `axial_pos_embds_dim` (summing to hidden_size; None: halves)
      dimensions per axis, initialised with std `axial_norm_std`; False: a learned table.
    - `chunk_size_feed_forward` / `chunk_size_lm_head`: run the feed-forward / LM head on that many
      positions at a time (0: all at once); the result is the same, the peak memory lower.
    - `feed_forward_size` is an alias of `intermediate_size`; `lsh_attention_probs_dropout_prob` and
      `local_attention_probs_dropout_prob` default to `attention_probs_dropout_prob`.
    - `generation_cache`: what a decoder keeps between `generate()` steps. "buckets" (default):
      per layer the keys and values of the earlier tokens (LSH layers: the shared keys with their
      bucket per hash round, the rotations fixed for the whole generation; local layers: the
      chunks a new token still looks back on); a new token attends, per round, to the earlier keys
      in its own bucket (LSH) or to its chunk and the ones before (local). Cost per token:
      O(length) for the bucket comparison, no re-sort. It equals a full forward when no layer
      hashes (local layers only, or sequences no longer than `lsh_attn_chunk_length`); in the
      hashed regime it is not the full forward's chunked sort (see modeling_reformer.py).
      "recompute": the token embeddings, and a full forward over the whole sequence per new token
      (exactly a forward over the prefix, at a forward's cost per token).
    - `reversible`: the layers' backward recomputes their activations from the outputs (memory
      independent of depth, as transformers always does); False: plain autograd (stores them,
      no recomputation).
    - The fields above that default from others (None) follow them when they change later
      (`update_from_string("hidden_size=512,num_hidden_layers=6")`: six alternating layers, axial
      widths [256, 256]); given ones stay, and one that no longer fits raises ValueError naming it
      when the model is built. They are saved as None.

    The layers are always pre-LayerNorm with a LayerNorm over both reversible streams at the end
    (`pre_norm` must stay True); there are no token types. Defaults follow transformers' where
    the two differ from the other longctx models: ReLU, layer_norm_eps 1e-12, untied LM head.
    """

    model_type = "longctx-reformer"
    attribute_map = REFORMER_ALIASES
    derived_fields = ("attn_layers", "attention_head_size", "lsh_attention_probs_dropout_prob",
                      "local_attention_probs_dropout_prob", "axial_pos_shape",
                      "axial_pos_embds_dim")

    hidden_act: str = "relu"
    layer_norm_eps: float = 1e-12
    tie_word_embeddings: bool = False  # the LM head reads both streams (2 x hidden_size wide)
    attn_layers: list[str] | None = None
    attention_head_size: int | None = None
    num_hashes: int = 1
    num_buckets: int | list[int] | None = None
    hash_seed: int | None = None
    lsh_attn_chunk_length: int = 64
    lsh_num_chunks_before: int = 1
    lsh_num_chunks_after: int = 0
    lsh_attention_probs_dropout_prob: float | None = None
    local_attn_chunk_length: int = 64
    local_num_chunks_before: int = 1
    local_num_chunks_after: int = 0
    local_attention_probs_dropout_prob: float | None = None
    axial_pos_embds: bool = True
    axial_pos_shape: list[int] | None = None
    axial_pos_embds_dim: list[int] | None = None
    axial_norm_std: float = 1.0
    chunk_size_lm_head: int = 0
    reversible: bool = True
    generation_cache: str = "buckets"

    def __post_init__(self, **kwargs):
        self._apply_aliases(REFORMER_ALIASES, kwargs)
        # transformers' configs hold tuples
        for name in ("attn_layers", "axial_pos_shape", "axial_pos_embds_dim"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        if isinstance(self.num_buckets, tuple):
            self.num_buckets = list(self.num_buckets)
        self._depth_from_attn_layers()
        super().__post_init__(**kwargs)

    def _derived_value(self, name: str):
        """attn_layers alternate "local" and "lsh" over num_hidden_layers; a head is hidden_size /
        num_attention_heads wide; each kind's attention dropout is attention_probs_dropout_prob;
        the axial shape holds max_position_embeddings; the axial widths halve hidden_size."""
        if name in ("lsh_attention_probs_dropout_prob", "local_attention_probs_dropout_prob"):
            return self.attention_probs_dropout_prob
        if name == "attn_layers":
            layers = positive_int(self.num_hidden_layers) or 0
            return [ATTENTION_KINDS[(i + 1) % 2] for i in range(layers)]
        if name == "axial_pos_shape":
            positions = positive_int(self.max_position_embeddings)
            return list(default_axial_shape(positions)) if positions else None
        width, heads = positive_int(self.hidden_size), positive_int(self.num_attention_heads)
        if name == "attention_head_size":
            return width // heads if width and heads else None
        return [width // 2, width - width // 2] if width else None  # axial_pos_embds_dim

    def _depth_from_attn_layers(self):
        """Given attn_layers fix num_hidden_layers (their number); a different num_hidden_layers
        given alongside them raises."""
        if self.attn_layers is None:
            return
        default = type(self).__dataclass_fields__["num_hidden_layers"].default
        if self.num_hidden_layers not in (default, len(self.attn_layers)):
            raise ValueError(f"{type(self).__name__}: num_hidden_layers={self.num_hidden_layers} "
                             f"but attn_layers lists {len(self.attn_layers)} layers; pass only "
                             f"attn_layers (it sets the depth).")
        self.num_hidden_layers = len(self.attn_layers)

    @property
    def head_dim(self) -> int:
        return self.attention_head_size

    @property
    def padding_multiple(self) -> int:
        """Inputs longer than the shortest chunk are padded to a multiple of every chunk length
        used."""
        return math.lcm(*self.chunk_lengths())

    def padded_length(self, length: int) -> int:
        """The length a sequence of `length` tokens runs at inside the model: above the shortest
        chunk, the next multiple of `padding_multiple`."""
        if length <= min(self.chunk_lengths()):
            return length
        return -(-length // self.padding_multiple) * self.padding_multiple

    def chunk_lengths(self) -> list[int]:
        lengths = {"lsh": self.lsh_attn_chunk_length, "local": self.local_attn_chunk_length}
        return [lengths[kind] for kind in sorted(set(self.attn_layers))]

    def _check_fields(self):
        super()._check_fields()
        self._require(all(kind in ATTENTION_KINDS for kind in self.attn_layers), "attn_layers",
                      f"must list one of {ATTENTION_KINDS} per layer, e.g. "
                      f"['local', 'lsh', 'local', 'lsh']")
        self._require(len(self.attn_layers) == self.num_hidden_layers, "attn_layers",
                      f"lists {len(self.attn_layers)} layers but num_hidden_layers="
                      f"{self.num_hidden_layers}; give one kind per layer, or set attn_layers "
                      "to None to alternate 'local' and 'lsh' over num_hidden_layers layers")
        for name in ("attention_head_size", "num_hashes", "lsh_attn_chunk_length",
                     "local_attn_chunk_length"):
            self._require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name,
                          "must be a positive integer")
        for name in ("lsh_num_chunks_before", "lsh_num_chunks_after", "local_num_chunks_before",
                     "local_num_chunks_after", "chunk_size_feed_forward", "chunk_size_lm_head"):
            self._require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name,
                          "must be a non-negative integer")
        for name in ("lsh_attention_probs_dropout_prob", "local_attention_probs_dropout_prob"):
            self._require(0.0 <= getattr(self, name) < 1.0, name, "must be in [0, 1)")
        self._check_buckets()
        self._check_axial()
        if self.is_decoder:
            for name in ("lsh_num_chunks_after", "local_num_chunks_after"):
                self._require(getattr(self, name) == 0, name,
                              "must be 0 for a decoder (is_decoder=True): causal attention looks "
                              "back only")
        self._require(self.pre_norm, "pre_norm",
                      "must be True: Reformer's reversible layers are pre-LayerNorm")
        self._require(not self.tie_word_embeddings, "tie_word_embeddings",
                      "must be False: the LM head reads both reversible streams (2 x hidden_size "
                      "wide), the embeddings are hidden_size wide")
        self._require(self.type_vocab_size == 0, "type_vocab_size",
                      "must be 0: Reformer has no token types")
        self._require(self.generation_cache in GENERATION_CACHES, "generation_cache",
                      f"must be one of {GENERATION_CACHES}: 'buckets' (keys, values and LSH "
                      "buckets per layer; the default) or 'recompute' (a full forward per new "
                      "token, exactly a forward over the prefix)")
        self._require(self.hash_seed is None or isinstance(self.hash_seed, int), "hash_seed",
                      "must be None (new random rotations every forward) or an integer")

    def _check_buckets(self):
        buckets = self.num_buckets
        factors = [buckets] if isinstance(buckets, int) else list(buckets or [])
        self._require(buckets is None
                      or (factors and all(isinstance(f, int) and f >= 2 and f % 2 == 0
                                          for f in factors)),
                      "num_buckets", "must be None (chosen from the input length), an even integer "
                      ">= 2, or a list of them (a factorised hash, e.g. [32, 64])")

    def _check_axial(self):
        if not self.axial_pos_embds:
            return
        shape, dims = list(self.axial_pos_shape or []), list(self.axial_pos_embds_dim or [])
        self._require(len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape),
                      "axial_pos_shape",
                      "must be two positive integers (rows, columns) whose product holds every "
                      f"position, e.g. {list(default_axial_shape(self.max_position_embeddings))}")
        self._require(len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims)
                      and sum(dims) == self.hidden_size, "axial_pos_embds_dim",
                      f"must be two positive integers summing to hidden_size={self.hidden_size}, "
                      f"e.g. "
                      f"[{self.hidden_size // 2}, {self.hidden_size - self.hidden_size // 2}] "
                      f"(None: those halves)")
        self._require(self.axial_norm_std > 0, "axial_norm_std", "must be positive")
