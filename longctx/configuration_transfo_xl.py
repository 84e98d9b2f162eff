"""Configuration of `longctx-transfo-xl` (Dai et al. 2019, "Transformer-XL"): segment-level
recurrence with a memory of hidden states, relative positional attention, adaptive input and
adaptive softmax."""

import logging

from .attention_relative import RELATIVE_KERNELS
from .configuration_common import LongctxConfig

logger = logging.getLogger(__name__)

# transformers' `TransfoXLConfig` name -> the common longctx field it is (an alias both ways:
# `config.d_model` reads and writes `config.hidden_size`, and either name works as a keyword).
TRANSFO_XL_ALIASES = {
    "d_model": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "d_inner": "intermediate_size",
    "dropout": "hidden_dropout_prob",
    "dropatt": "attention_probs_dropout_prob",
    "layer_norm_epsilon": "layer_norm_eps",
    "pre_lnorm": "pre_norm",
    "n_token": "vocab_size",
}


class LongctxTransfoXLConfig(LongctxConfig):
    """transformers' `TransfoXLConfig` fields, one to one (their names are aliases of the common
    ones in `TRANSFO_XL_ALIASES`: d_model, n_layer, n_head, d_inner, dropout, dropatt,
    layer_norm_epsilon, pre_lnorm), plus:

    - `d_head`: width of one attention head (None: hidden_size // n_head); n_head * d_head may
      differ from d_model, as in transformers.
    - `mem_len`: hidden states kept per layer as memory for the next segment (0: no memory).
    - `same_length`: every token attends exactly its `mem_len` most recent tokens (itself
      included), as the paper evaluates; False: every earlier token in memory and segment.
      With mem_len=0 there is no window (transformers then masked every key).
    - `clamp_len`: relative distances beyond it use its encoding (<= 0: no clamping).
    - `cutoffs`, `div_val`: adaptive input and softmax. The vocabulary is split at the cutoffs
      into a head and tail clusters; cluster i embeds in d_embed // div_val**i dimensions.
      `cutoffs=[]` is a plain (projected) softmax.
    - `d_embed`: embedding width of the head cluster (None: hidden_size).
    - `tie_projs`: per cluster, whether the softmax reuses the input projection (None: from
      `proj_share_all_but_first`, as transformers does); `tie_word_embeddings`: whether the
      softmax reuses the embedding tables.
    - `d_embed`, `d_head` and `tie_projs` left None follow the fields they derive from when those
      change later (`update_from_string("d_model=512")`: d_embed 512 too); given ones stay (a
      d_embed other than d_model adds projections, as in transformers). They are saved as None.
    - `untie_r`: one pair of position biases (u, v) per layer, else one pair for all layers.
    - `relative_attention_kernel`: which exact kernel computes relative attention; the choice
      changes speed and memory, not the function computed (`attention_relative.relative_attention`
      has the details). "auto": "fused" on CPU in float32/64 without attention dropout once more
      than one block of 128 new tokens comes; one new token (decoding) without attention
      dropout: three small matmuls (`single_query_relative_attention`); "sdpa" otherwise.
      "fused": one C++ kernel (`attention_relative_fused`, compiled on first use, also from a
      saved model's remote code) for CPU, float32/64 and no attention dropout, memory linear in
      the length; where it cannot be built (no C++ compiler) a warning, once, and "blocks": the
      same values, more slowly.
      "blocks": query blocks of eager PyTorch ops and a hand-written backward
      (`attention_relative_blocks`) on any device, no attention dropout, memory linear in the
      length (so the way to long spans on CUDA); half precision is computed in float32. "sdpa":
      SDPA with the position scores as its mask; memory quadratic in training, but the one
      kernel whose backward can be differentiated again.

    Defaults follow the paper where they differ from the other longctx models: post-LN
    (`pre_lnorm=False`), ReLU feed-forward, no final LayerNorm. Transformer-XL is causal only:
    `is_decoder` is always True (False, which transformers' own
    TransfoXLConfig holds, and which "an encoder of every architecture" asks for, is read as True),
    so classification pools the last real token by default. It has no length limit:
    relative positions are computed for any length, so `max_position_embeddings` is unused.
    `attn_type`: 0 the paper's relative attention (the only one transformers supported), or 2,
    the paper's absolute-position ablation: sinusoidal encodings of each new token's position in
    its segment are added to its embedding, and the layers run plain softmax attention over memory
    + segment (no u, v or position projection). Positions restart at 0 in every segment, so memory
    tokens and new tokens share positions -- the ambiguity the ablation shows. The authors' code
    (attn_type 2) counts positions back from the segment's last token; here they count forward
    in real tokens from its first, as a vanilla Transformer does, so that a prefix's outputs do not
    depend on how long its segment is and padding moves no position (clamped at `clamp_len`).
    `sample_softmax` must be <= 0, and `adaptive` is kept for transformers' configs (its
    PyTorch model, and this one, always use the adaptive softmax of `cutoffs`).
    """

    model_type = "longctx-transfo-xl"
    attribute_map = TRANSFO_XL_ALIASES
    derived_fields = ("d_embed", "d_head", "tie_projs")

    vocab_size: int = 261
    hidden_size: int = 256
    intermediate_size: int = 1024
    hidden_act: str = "relu"
    pre_norm: bool = False
    is_decoder: bool = True
    d_embed: int | None = None
    d_head: int | None = None
    mem_len: int = 512
    clamp_len: int = -1
    same_length: bool = False
    cutoffs: list[int] | None = None
    div_val: int = 1
    proj_share_all_but_first: bool = True
    tie_projs: list[bool] | None = None
    untie_r: bool = True
    adaptive: bool = True
    attn_type: int = 0
    sample_softmax: int = -1
    relative_attention_kernel: str = "auto"

    def __post_init__(self, **kwargs):
        self._apply_aliases(TRANSFO_XL_ALIASES, kwargs)
        if not self.is_decoder:
            logger.info("longctx-transfo-xl is causal: is_decoder=False is read as True "
                        "(transformers' TransfoXLConfig says False for the same causal model).")
            self.is_decoder = True
        if self.cutoffs is None:
            self.cutoffs = []
        super().__post_init__(**kwargs)

    def _derived_value(self, name: str):
        if name == "tie_projs":  # as transformers: the head cluster never shares its projection
            return [False] + [bool(self.proj_share_all_but_first)] * len(self.cutoffs or [])
        if not isinstance(self.hidden_size, int) or not isinstance(self.num_attention_heads, int):
            return None  # `_check_fields` names the bad field
        if name == "d_embed":
            return self.hidden_size
        return self.hidden_size // max(1, self.num_attention_heads)  # d_head

    @property
    def head_dim(self) -> int:
        return self.d_head

    @property
    def input_length_limit(self) -> None:
        return None  # relative positions: max_position_embeddings is unused

    def cluster_bounds(self) -> list[tuple[int, int]]:
        """[(first id, end id)] of the head and each tail cluster."""
        ends = [0, *self.cutoffs, self.vocab_size]
        return list(zip(ends[:-1], ends[1:]))

    def cluster_width(self, cluster: int) -> int:
        return self.d_embed // (self.div_val ** cluster)

    def _check_fields(self):
        super()._check_fields()
        for name in ("d_embed", "d_head"):
            self._require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name,
                          "must be a positive integer (or None for the default)")
        self._require(self.hidden_size % 2 == 0, "hidden_size",
                      "must be even: the relative position encodings are sin and cos pairs of "
                      "d_model / 2 frequencies")
        self._require(isinstance(self.mem_len, int) and self.mem_len >= 0, "mem_len",
                      "must be a non-negative integer: hidden states kept per layer (0: no memory)")
        self._require(isinstance(self.clamp_len, int), "clamp_len",
                      "must be an integer (<= 0: no clamping)")
        cutoffs = list(self.cutoffs)
        self._require(all(isinstance(c, int) for c in cutoffs) and cutoffs == sorted(set(cutoffs))
                      and all(0 < c < self.vocab_size for c in cutoffs), "cutoffs",
                      f"must be increasing token ids in (0, vocab_size={self.vocab_size}), e.g. "
                      f"[20000, 40000, 200000] for a 267735-token vocabulary, or [] for a plain "
                      f"softmax")
        self._require(isinstance(self.div_val, int) and self.div_val >= 1, "div_val",
                      "must be an integer >= 1 (1: every cluster embeds in d_embed dimensions)")
        if self.div_val > 1:
            self._require(self.cluster_width(len(cutoffs)) >= 1, "div_val",
                          f"leaves the last cluster d_embed // div_val**{len(cutoffs)} = 0 "
                          f"dimensions; use a smaller div_val, fewer cutoffs or a larger d_embed")
        self._require(len(self.tie_projs) == len(cutoffs) + 1, "tie_projs",
                      f"must hold one bool per cluster ({len(cutoffs) + 1}), or be None")
        self._require(self.attn_type in (0, 2), "attn_type",
                      "must be 0 (the paper's relative positional attention) or 2 (its "
                      "absolute-position ablation)")
        self._require(self.sample_softmax <= 0, "sample_softmax",
                      "must be <= 0 (no sampled softmax)")
        self._require_kernel("relative_attention_kernel", RELATIVE_KERNELS, ("fused", "blocks"),
                             "SDPA")
        self._require(self.type_vocab_size == 0, "type_vocab_size",
                      "must be 0: Transformer-XL has no token types")
