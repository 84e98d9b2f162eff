"""Configuration of `longctx-longformer` (Beltagy et al. 2020): sliding-window attention plus
global attention on chosen tokens, numerically the Longformer of transformers."""

from .attention_sliding import KERNELS
from .configuration_common import LongctxConfig


class LongctxLongformerConfig(LongctxConfig):
    """`attention_window` is the whole window, as in transformers' `LongformerConfig`: a token sees
    `attention_window // 2` neighbours on each side (decoders: that many before it), plus the
    tokens of `global_attention_mask`. An int, or one even value per layer.

    `sep_token_id` separates question and context: question answering puts global attention on
    the tokens before the first one, as transformers does.

    `default_global_attention`: whether classification and QA put global attention on the first
    token / the question when no `global_attention_mask` is passed (transformers' behaviour).
    False is the "no global attention" ablation: only an explicit mask makes tokens global.

    `sliding_window_kernel`: "auto" (FlexAttention on CUDA when attention dropout is off, the
    chunked SDPA kernel otherwise), "chunked" or "flex" (CUDA; no attention dropout). On CPU
    without dropout the chunked kernel runs as mask-free flash calls over key blocks
    (`attention_band_cpu`). All are exact: the choice changes speed, not the function computed.
    """

    model_type = "longctx-longformer"
    attention_window: int | list[int] = 512
    sep_token_id: int | None = 2
    sliding_window_kernel: str = "auto"
    default_global_attention: bool = True

    @property
    def sliding_window(self) -> int | None:
        """How many tokens a decoder's cache keeps per layer (the largest window, plus the new
        token): transformers' `DynamicCache(config=...)`, which `generate()` builds, reads it and
        drops older keys, so generation memory is constant in the generated length."""
        if not self.is_decoder:
            return None
        return max(self.one_sided_window(i) for i in range(self.num_hidden_layers)) + 1

    def one_sided_window(self, layer_idx: int) -> int:
        windows = self.attention_window
        return (windows if isinstance(windows, int) else windows[layer_idx]) // 2

    def _check_fields(self):
        super()._check_fields()
        windows = self.attention_window
        self._require(isinstance(windows, (int, list, tuple)), "attention_window",
                      "must be an int or a list of one int per layer, e.g. attention_window=512")
        per_layer = [windows] if isinstance(windows, int) else list(windows)
        self._require(all(isinstance(w, int) and w > 0 and w % 2 == 0 for w in per_layer),
                      "attention_window",
                      "must hold positive even integers (the window is split evenly around each "
                      "token), e.g. attention_window=512")
        self._require(isinstance(windows, int) or len(per_layer) == self.num_hidden_layers,
                      "attention_window",
                      f"must be an int or a list of one value per layer "
                      f"(num_hidden_layers={self.num_hidden_layers})")
        self._require_kernel("sliding_window_kernel", KERNELS, "flex", "the chunked kernel")
        self._require(self.sep_token_id is None or 0 <= self.sep_token_id < self.vocab_size,
                      "sep_token_id",
                      f"must be None or a token id in [0, vocab_size={self.vocab_size})")
