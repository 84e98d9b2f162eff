"""longctx: efficient long-context Transformers as first-class Hugging Face models.

`import longctx` registers every architecture with the transformers Auto classes, so
`AutoConfig.for_model("longctx-transformer", ...)`, `AutoModelForCausalLM.from_config(...)`
and `from_pretrained(...)` work; a saved model also carries its code (`auto_map`), so it loads
with `trust_remote_code=True` where longctx is not installed.
"""

from dataclasses import dataclass, field

import transformers
from transformers import AutoConfig

from .configuration_common import LongctxConfig, file_qualified_name
from .configuration_longformer import LongctxLongformerConfig
from .configuration_linformer import LongctxLinformerConfig
from .configuration_transformer import LongctxTransformerConfig
from .configuration_transfo_xl import LongctxTransfoXLConfig
from .configuration_reformer import LongctxReformerConfig
from .modeling_transformer import (
    LongctxTransformerForCausalLM,
    LongctxTransformerForMaskedLM,
    LongctxTransformerForQuestionAnswering,
    LongctxTransformerForSequenceClassification,
    LongctxTransformerModel,
)
from .modeling_longformer import (
    LongctxLongformerForCausalLM,
    LongctxLongformerForMaskedLM,
    LongctxLongformerForQuestionAnswering,
    LongctxLongformerForSequenceClassification,
    LongctxLongformerModel,
)
from .modeling_linformer import (
    LongctxLinformerForCausalLM,
    LongctxLinformerForMaskedLM,
    LongctxLinformerForQuestionAnswering,
    LongctxLinformerForSequenceClassification,
    LongctxLinformerModel,
)
from .modeling_reformer import (
    LongctxReformerForCausalLM,
    LongctxReformerForMaskedLM,
    LongctxReformerForQuestionAnswering,
    LongctxReformerForSequenceClassification,
    LongctxReformerModel,
)
from .modeling_transfo_xl import (
    LongctxTransfoXLForCausalLM,
    LongctxTransfoXLForQuestionAnswering,
    LongctxTransfoXLForSequenceClassification,
    LongctxTransfoXLModel,
)
from .question_answering import QuestionAnsweringPipeline, register_question_answering_pipeline
from .tokenization_bytes import (
    SPECIAL_TOKENS,
    byte_tokenizer,
    model_max_length_for,
    train_bpe_tokenizer,
)

__version__ = "0.1.0"


@dataclass(frozen=True)
class Architecture:
    config: type
    backbone: type
    heads: dict = field(default_factory=dict)  # Auto class name -> head class
    # Auto class name -> a class that only raises ValueError saying why the architecture has no
    # such model (registered, so the Auto class explains instead of "Unrecognized configuration")
    refusals: dict = field(default_factory=dict)

    def auto_classes(self) -> dict:
        return {"AutoModel": self.backbone, **self.heads, **self.refusals}


ARCHITECTURES = {
    "longctx-transformer": Architecture(
        config=LongctxTransformerConfig,
        backbone=LongctxTransformerModel,
        heads={
            "AutoModelForCausalLM": LongctxTransformerForCausalLM,
            "AutoModelForMaskedLM": LongctxTransformerForMaskedLM,
            "AutoModelForSequenceClassification": LongctxTransformerForSequenceClassification,
            "AutoModelForQuestionAnswering": LongctxTransformerForQuestionAnswering,
        },
    ),
    "longctx-longformer": Architecture(
        config=LongctxLongformerConfig,
        backbone=LongctxLongformerModel,
        heads={
            "AutoModelForCausalLM": LongctxLongformerForCausalLM,
            "AutoModelForMaskedLM": LongctxLongformerForMaskedLM,
            "AutoModelForSequenceClassification": LongctxLongformerForSequenceClassification,
            "AutoModelForQuestionAnswering": LongctxLongformerForQuestionAnswering,
        },
    ),
    "longctx-linformer": Architecture(
        config=LongctxLinformerConfig,
        backbone=LongctxLinformerModel,
        heads={
            "AutoModelForMaskedLM": LongctxLinformerForMaskedLM,
            "AutoModelForSequenceClassification": LongctxLinformerForSequenceClassification,
            "AutoModelForQuestionAnswering": LongctxLinformerForQuestionAnswering,
        },
        refusals={"AutoModelForCausalLM": LongctxLinformerForCausalLM},  # bidirectional
    ),
    "longctx-reformer": Architecture(
        config=LongctxReformerConfig,
        backbone=LongctxReformerModel,
        heads={
            "AutoModelForCausalLM": LongctxReformerForCausalLM,
            "AutoModelForMaskedLM": LongctxReformerForMaskedLM,
            "AutoModelForSequenceClassification": LongctxReformerForSequenceClassification,
            "AutoModelForQuestionAnswering": LongctxReformerForQuestionAnswering,
        },
    ),
    "longctx-transfo-xl": Architecture(
        config=LongctxTransfoXLConfig,
        backbone=LongctxTransfoXLModel,
        heads={
            "AutoModelForCausalLM": LongctxTransfoXLForCausalLM,
            "AutoModelForSequenceClassification": LongctxTransfoXLForSequenceClassification,
            "AutoModelForQuestionAnswering": LongctxTransfoXLForQuestionAnswering,
        },
    ),
}


def _register(model_type: str, arch: Architecture):
    AutoConfig.register(model_type, arch.config, exist_ok=True)
    arch.config.register_for_auto_class()
    auto_map = {"AutoConfig": file_qualified_name(arch.config)}
    for auto_name, model_class in arch.auto_classes().items():
        getattr(transformers, auto_name).register(arch.config, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)
        auto_map[auto_name] = file_qualified_name(model_class)
    for model_class in arch.auto_classes().values():
        model_class.longctx_auto_map = auto_map


for _model_type, _arch in ARCHITECTURES.items():
    _register(_model_type, _arch)
# transformers 5 removed the extractive question-answering pipeline; longctx brings it back.
register_question_answering_pipeline()

__all__ = [
    "ARCHITECTURES",
    "LongctxConfig",
    "LongctxLongformerConfig",
    "LongctxLongformerModel",
    "LongctxLongformerForCausalLM",
    "LongctxLongformerForMaskedLM",
    "LongctxLongformerForSequenceClassification",
    "LongctxLongformerForQuestionAnswering",
    "LongctxLinformerConfig",
    "LongctxLinformerModel",
    "LongctxLinformerForMaskedLM",
    "LongctxLinformerForSequenceClassification",
    "LongctxLinformerForQuestionAnswering",
    "LongctxTransfoXLConfig",
    "LongctxTransfoXLModel",
    "LongctxTransfoXLForCausalLM",
    "LongctxTransfoXLForSequenceClassification",
    "LongctxTransfoXLForQuestionAnswering",
    "LongctxReformerConfig",
    "LongctxReformerModel",
    "LongctxReformerForCausalLM",
    "LongctxReformerForMaskedLM",
    "LongctxReformerForSequenceClassification",
    "LongctxReformerForQuestionAnswering",
    "LongctxTransformerConfig",
    "LongctxTransformerModel",
    "LongctxTransformerForCausalLM",
    "LongctxTransformerForMaskedLM",
    "LongctxTransformerForSequenceClassification",
    "LongctxTransformerForQuestionAnswering",
    "QuestionAnsweringPipeline",
    "SPECIAL_TOKENS",
    "byte_tokenizer",
    "model_max_length_for",
    "train_bpe_tokenizer",
]
