"""Configuration fields shared by every longctx architecture, checked when a config is built.

transformers 5 configs are dataclasses: a subclass declares fields with defaults and extends
`_check_fields` for its own. Every bad value raises `ValueError` naming the field, the value
and the fix (the strict-dataclass validators of transformers raise other exception types).

Derived fields (e.g. Transformer-XL's `d_head`, None: hidden_size // num_attention_heads) are
listed in `derived_fields` and computed by `_derived_value`. The config remembers which were
derived rather than given: changing a field after the config is built (`config.hidden_size =
512`, or `config.update_from_string`, the path of `--config_overrides` in transformers'
example scripts) derives them again, while a given value stays. A derived field is saved as
None, so that it is derived again on load; the models call `check_fields()` when built, since
a given value may no longer fit the fields changed after it.
"""

import sys
from typing import ClassVar

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .compat import CACHE_NAME

POOLING_CHOICES = ("first", "last", "mean")
CLASSIFIER_HEADS = ("pooler", "linear")


def pipelines_served_elsewhere(custom_pipelines: dict) -> dict:
    """The entries of a config's `custom_pipelines` (task -> {"impl": "module.Class", ...}) whose
    class this process has not registered for that task itself.

    pipeline() builds a task named in the config's `custom_pipelines` from the checkpoint's copy of
    the code, and refuses without trust_remote_code=True, before it looks at its registry. Where
    `import longctx` registered the very class a longctx checkpoint names (the question-answering
    pipeline), the entry would only make pipeline("question-answering", model=folder) fail, so
    the config drops it; the file keeps it for processes without longctx."""
    pipelines = sys.modules.get("transformers.pipelines")
    if pipelines is None:  # never imported: nothing is registered (the registry lives there)
        return dict(custom_pipelines)
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks
    return {task: entry for task, entry in custom_pipelines.items()
            if _name_or_none(registered.get(task, {}).get("impl")) != entry.get("impl")}


def file_qualified_name(cls: type) -> str:
    """"module_file.Class": how `auto_map` and `custom_pipelines` name a class, its module by
    the file alone (what the module is called inside a checkpoint folder)."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _name_or_none(cls) -> str | None:
    return file_qualified_name(cls) if isinstance(cls, type) else None


class LongctxConfig(PreTrainedConfig):
    vocab_size: int = 261  # the byte tokenizer: 5 special tokens + 256 bytes
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    max_position_embeddings: int = 4096
    type_vocab_size: int = 0  # 0: no token type embeddings
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # None: hidden_dropout_prob
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # True: pre-LN blocks and a final LayerNorm (GPT-2); False: post-LN blocks and a LayerNorm
    # on the embeddings (BERT, RoBERTa, Longformer).
    pre_norm: bool = True
    # How sequence classification pools the sequence: "first" (CLS) token, "last" non-pad
    # token, or "mean" over non-pad tokens. None: "last" for decoders, "first" for encoders.
    classifier_pooling: str | None = None
    # The layers after pooling: "pooler" (dropout, dense, tanh, dropout, projection: RoBERTa,
    # Longformer, Reformer) or "linear" (one bias-free projection, `score`: GPT-2, TransfoXL).
    classifier_head: str = "pooler"
    # The pooler's activation (classifier_head "pooler"): tanh (BERT, RoBERTa, Longformer); models
    # elongated from ELECTRA keep its gelu, from DistilBERT its relu (`convert_elongate`).
    classifier_activation: str = "tanh"
    is_decoder: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    # Outputs that Trainer's evaluation must not gather as predictions: the cache (a DynamicCache,
    # Transformer-XL's memory) is no tensor. transformers 5.19 declares [] here, which
    # overrides the Trainer's own default (the cache's name) and makes evaluation fail.
    keys_to_ignore_at_inference: ClassVar[list[str]] = [CACHE_NAME]

    # Fields whose None means "derive from the others"; `_derived_value` computes them.
    derived_fields = ()

    def __post_init__(self, **kwargs):
        # Architectures normalise their own fields first, then call this: derivations see them.
        self._derived = {name for name in self.derived_fields if getattr(self, name) is None}
        self._derive_again()
        if kwargs.get("custom_pipelines"):
            kwargs["custom_pipelines"] = pipelines_served_elsewhere(kwargs["custom_pipelines"])
            if not kwargs["custom_pipelines"]:
                del kwargs["custom_pipelines"]
        super().__post_init__(**kwargs)
        self._check_fields()

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        derived = self.__dict__.get("_derived")
        field = self.attribute_map.get(key, key)
        if derived is None or field.startswith("_"):  # still in __init__, or private state
            return
        if field in self.derived_fields and value is None:  # derive it again
            derived.add(field)
        elif field in self.derived_fields:  # given now: it stays
            derived.discard(field)
        self._derive_again()

    def _derive_again(self):
        """Sets every field that was derived (not given) from the current values of the others."""
        for name in self.derived_fields:
            if name in self._derived:
                super().__setattr__(name, self._derived_value(name))

    def _derived_value(self, name: str):
        raise NotImplementedError(f"{type(self).__name__} lists {name} in derived_fields "
                                  f"but does not derive it")

    def to_dict(self) -> dict:
        """transformers' dict, with None for the derived fields: loading derives them again from
        the saved fields (the same values), and they keep following those fields afterwards."""
        output = super().to_dict()
        for name in output.pop("_derived", ()):
            output[name] = None
        return output

    def check_fields(self):
        """Raises ValueError naming the first bad field. The models call it when built: fields
        set after the config was built (`update_from_string`, setattr) are checked only here."""
        self._check_fields()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def input_length_limit(self) -> int | None:
        """The most tokens one input may hold (what a tokenizer saved with the model states as its
        `model_max_length`); None: any length."""
        return self.max_position_embeddings

    @property
    def pooling(self) -> str:
        if self.classifier_pooling is not None:
            return self.classifier_pooling
        return "last" if self.is_decoder else "first"

    def _check_fields(self):
        """Extended by architecture configs; each check raises `ValueError` with the fix."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            self._require(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                          name, "must be a positive integer")
        self._require(isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0,
                      "type_vocab_size", "must be 0 (no token types) or a positive integer")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            self._require(value is None or 0.0 <= value < 1.0, name, "must be in [0, 1)")
        eps = self.layer_norm_eps  # 0 divides by zero on a constant vector: NaN
        self._require(isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0,
                      "layer_norm_eps", "must be a positive number, e.g. 1e-5")
        heads = self.num_attention_heads
        self._require(self.hidden_size % heads == 0, "hidden_size",
                      f"must be divisible by num_attention_heads={heads}; "
                      f"use e.g. hidden_size={heads * max(1, round(self.hidden_size / heads))}")
        self._require(self.hidden_act in ACT2FN, "hidden_act",
                      "must be one of transformers' activations, e.g. 'gelu', 'relu', 'gelu_new'")
        self._require(self.classifier_pooling is None or self.classifier_pooling in POOLING_CHOICES,
                      "classifier_pooling", f"must be None or one of {POOLING_CHOICES}")
        self._require(self.classifier_head in CLASSIFIER_HEADS, "classifier_head",
                      f"must be one of {CLASSIFIER_HEADS}")
        self._require(self.classifier_activation in ACT2FN, "classifier_activation",
                      "must be one of transformers' activations, e.g. 'tanh', 'gelu', 'relu'")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            self._require(value is None
                          or (isinstance(value, int) and 0 <= value < self.vocab_size),
                          name, f"must be None or a token id in [0, vocab_size={self.vocab_size})")

    def _apply_aliases(self, aliases: dict[str, str], kwargs: dict):
        """Moves transformers' alternative names (alias -> field) from `kwargs` onto the fields.
        transformers sets unknown keywords only in its own __post_init__: architectures call this
        first, so that the defaults they derive see the aliased values."""
        for alias, field in aliases.items():
            if alias in kwargs:
                self._set_alias(alias, field, kwargs.pop(alias))

    def _set_alias(self, alias: str, field: str, value):
        default = type(self).__dataclass_fields__[field].default
        current = getattr(self, field)
        if current != default and current != value:
            raise ValueError(f"{type(self).__name__}: {field}={current!r} and its alias "
                             f"{alias}={value!r} disagree; pass only one of them.")
        setattr(self, field, value)

    def _require_kernel(self, field: str, kernels: tuple, without_dropout: str | tuple,
                        auto_under_dropout: str):
        """`field` names one of `kernels`; the kernels `without_dropout` (one name or a tuple) have
        no attention dropout, so they need attention_probs_dropout_prob 0 ('auto' takes
        `auto_under_dropout` then)."""
        without_dropout = ((without_dropout,) if isinstance(without_dropout, str)
                           else without_dropout)
        self._require(getattr(self, field) in kernels, field, f"must be one of {kernels}")
        self._require(getattr(self, field) not in without_dropout
                      or not self.attention_probs_dropout_prob, field,
                      f"has no attention dropout, but attention_probs_dropout_prob="
                      f"{self.attention_probs_dropout_prob}: set that to 0, or use 'auto' "
                      f"({auto_under_dropout} while dropout is on)")

    def _require(self, condition: bool, field: str, requirement: str):
        if not condition:
            raise ValueError(
                f"{type(self).__name__}: {field}={getattr(self, field)!r} {requirement}.")
