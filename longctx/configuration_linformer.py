"""Configuration of `longctx-linformer` (Wang et al. 2020): keys and values projected along the
sequence, from `max_position_embeddings` positions down to `projection_dim` rows."""

from .configuration_common import LongctxConfig

# The parameter-sharing modes of the paper (section 4, "Additional efficiency techniques").
SHARING_CHOICES = ("none", "headwise", "key-value", "layerwise")
NO_CAUSAL_MODEL = ("Linformer is bidirectional (its projections mix all positions, so a token "
                   "would see the future) and has no causal LM; use is_decoder=False (masked LM, "
                   "classification, question answering), or a causal architecture such as "
                   "longctx-transformer or longctx-longformer for language modelling")


class LongctxLinformerConfig(LongctxConfig):
    """`projection_dim` is the paper's k: every layer attends `projection_dim` learned mixtures of
    the tokens instead of the tokens themselves, so attention costs O(length x k).

    `sharing` says which projection matrices (E for keys, F for values; each n x k with
    n = `max_position_embeddings`) are shared, as in the paper:

    - "none": an E and an F per head and per layer;
    - "headwise" (default): one E and one F per layer, shared by its heads;
    - "key-value": one matrix per layer, E = F, shared by its heads;
    - "layerwise": one matrix for every layer, head, keys and values.

    The default is "headwise": it is the layout of lucidrains' `linformer` package (its default,
    so such weights map one to one), keeps separate matrices for keys and values, and costs
    2 x n x k parameters per layer; the paper reports the modes within a fraction of a point
    of each other, so "key-value" or "layerwise" are good choices where parameters matter.

    Linformer is bidirectional: E and F mix every position into every projected row, so no
    causal mask exists for it and `is_decoder=True` is refused.
    """

    model_type = "longctx-linformer"
    projection_dim: int = 256
    sharing: str = "headwise"

    def _check_fields(self):
        super()._check_fields()
        self._require(isinstance(self.projection_dim, int) and self.projection_dim > 0,
                      "projection_dim",
                      "must be a positive integer (the paper's k, e.g. projection_dim=256)")
        self._require(self.sharing in SHARING_CHOICES, "sharing",
                      f"must be one of {SHARING_CHOICES}")
        self._require(not self.is_decoder, "is_decoder",
                      f"is impossible for longctx-linformer: {NO_CAUSAL_MODEL}")
