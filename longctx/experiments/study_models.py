"""The study's table of models: every longctx architecture, and transformers' own T5 as one more
entry (issue 23: a source document compares T5 with Reformer).

An entry says which task heads the model has (the Auto class names the study asks for), how its
config is built from the preset's common size fields, and whether its classifier needs each row
to end with an end-of-sequence token. A task whose head an entry lacks is skipped, with the
entry's reason in the results.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import transformers
from transformers import AutoConfig

import longctx

BYTE_PAD_ID, BYTE_EOS_ID = 0, 2  # longctx.byte_tokenizer(): <pad> and </s>


@dataclass(frozen=True)
class StudyModel:
    heads: tuple[str, ...]  # Auto class names the model has a head for
    # (size fields of the preset, max_length, task fields) -> the model's config
    config: Callable[[dict, int, dict], transformers.PretrainedConfig]
    # classification rows end with </s> (truncated one byte short, then padded): T5's classifier
    # pools the hidden state at the last </s> of each row and refuses rows without one
    eos_at_end: bool = False
    # why a head is missing, by Auto class name (shown in the results' "skipped")
    missing_heads: dict = field(default_factory=dict)
    description: str = ""


def longctx_entry(model_type: str) -> StudyModel:
    def config(size: dict, max_length: int, task_fields: dict):
        return AutoConfig.for_model(model_type, **size, max_position_embeddings=max_length,
                                    **task_fields)

    return StudyModel(heads=tuple(longctx.ARCHITECTURES[model_type].heads), config=config,
                      description=f"{model_type} (longctx)")


def t5_config(size: dict, max_length: int, task_fields: dict) -> transformers.T5Config:
    """The preset's common size fields in T5's names: as many decoder layers as encoder layers,
    d_kv = hidden / heads; relative position buckets (no max_position_embeddings: T5 takes any
    length). T5 has one dropout rate for everything, attention probabilities included: it takes
    the smaller of the preset's hidden and attention dropouts, so that attention dropout stays 0
    where a preset turns it off (on CPU, SDPA with dropout falls back to its slow math kernel)."""
    defaults = longctx.LongctxConfig()
    hidden = size.get("hidden_size", defaults.hidden_size)
    heads = size.get("num_attention_heads", defaults.num_attention_heads)
    layers = size.get("num_hidden_layers", defaults.num_hidden_layers)
    dropout = min(size.get("hidden_dropout_prob", defaults.hidden_dropout_prob),
                  size.get("attention_probs_dropout_prob", defaults.attention_probs_dropout_prob))
    unknown = set(size) - T5_SIZE_FIELDS
    if unknown:
        raise ValueError(f"hf-t5: preset model field(s) {sorted(unknown)} have no T5 equivalent; "
                         f"use only {sorted(T5_SIZE_FIELDS)} or leave hf-t5 out (--architectures)")
    task_fields = {k: v for k, v in task_fields.items() if k != "is_decoder"}  # T5 has both
    return transformers.T5Config(
        vocab_size=size.get("vocab_size", defaults.vocab_size), d_model=hidden,
        d_kv=hidden // heads,
        d_ff=size.get("intermediate_size", defaults.intermediate_size), num_layers=layers,
        num_decoder_layers=layers, num_heads=heads, dropout_rate=dropout, classifier_dropout=0.0,
        feed_forward_proj="relu", use_cache=False, pad_token_id=BYTE_PAD_ID,
        eos_token_id=BYTE_EOS_ID, decoder_start_token_id=BYTE_PAD_ID, **task_fields)


T5_SIZE_FIELDS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob"}
T5_NO_CAUSAL_LM = (
    "T5 is an encoder-decoder and transformers has no causal-LM class for it (AutoModelForCausalLM "
    "has no T5 entry); a decoder-only T5 would be a model of our own, not transformers' T5, and "
    "T5ForConditionalGeneration's perplexity is conditioned on a source text, so it is not "
    "comparable with the other rows")

T5 = StudyModel(
    heads=("AutoModelForSequenceClassification", "AutoModelForQuestionAnswering"),
    config=t5_config, eos_at_end=True,
    missing_heads={"AutoModelForCausalLM": T5_NO_CAUSAL_LM},
    description="transformers' T5 (T5ForSequenceClassification: encoder + decoder, pooled at "
                "the last </s>)")


def study_models() -> dict[str, StudyModel]:
    """name -> entry, in the order of the study's table: longctx's architectures, then T5."""
    return {**{name: longctx_entry(name) for name in longctx.ARCHITECTURES}, "hf-t5": T5}
