"""Configuration of `longctx-transformer`, the dense baseline every comparison is measured
against."""

from .configuration_common import LongctxConfig


class LongctxTransformerConfig(LongctxConfig):
    """Dense softmax attention (PyTorch SDPA) with learned absolute positions.

    `is_decoder=False` builds a bidirectional encoder (BERT-like); `is_decoder=True` a causal
    decoder with a key/value cache for `generate()` (GPT-2-like). All fields are the common
    longctx fields of `LongctxConfig`.
    """

    model_type = "longctx-transformer"
