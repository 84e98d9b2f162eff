"""transformers' Longformer -> `longctx-longformer` (`LONGFORMER_CONVERTER`, which
`convert.CONVERTERS["longformer"]` names).

Outputs match transformers' within float error when an attention_mask is given. Without one,
transformers (RoBERTa) still gives pad ids in input_ids their own position while longctx counts
positions from attention_mask: pass the mask the tokenizer returns. Explicit `position_ids`
differ too: transformers' start at pad_token_id + 1, ours at 0.
"""

import logging

from .convert_common import Converter, with_int_label_keys

logger = logging.getLogger(__name__)

LONGFORMER_PREFIX = "longformer."
LONGFORMER_COPIED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
    "layer_norm_eps", "initializer_range", "type_vocab_size", "pad_token_id", "bos_token_id",
    "eos_token_id", "attention_window", "id2label", "label2id", "problem_type",
    "tie_word_embeddings")
LONGFORMER_LAYER = {  # theirs (under encoder.layer.{i}.) -> ours (under model.layers.{i}.)
    "attention.self.{p}": "attention.{p}",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.dense_in",
    "output.dense": "feed_forward.dense_out",
    "output.LayerNorm": "feed_forward_norm",
}
LONGFORMER_PROJECTIONS = ("query", "key", "value", "query_global", "key_global", "value_global")
LONGFORMER_HEADS = ("lm_head.dense", "lm_head.layer_norm", "classifier.dense",
                    "classifier.out_proj", "qa_outputs")


def longformer_position_offset(source: dict) -> int:
    """RoBERTa positions start after the pad id: theirs = ours + pad_token_id + 1."""
    pad = source.get("pad_token_id")
    return (1 if pad is None else pad) + 1


def longformer_config(source: dict) -> dict:
    offset = longformer_position_offset(source)
    config = {name: source[name] for name in LONGFORMER_COPIED if source.get(name) is not None}
    with_int_label_keys(config)
    sep = source.get("sep_token_id")
    config.update(model_type="longctx-longformer", pre_norm=False, classifier_pooling="first",
                  max_position_embeddings=source["max_position_embeddings"] - offset,
                  sep_token_id=sep if sep is not None else source.get("eos_token_id", 2))
    return config


def longformer_names(source_config: dict) -> dict:
    """Our parameter name -> (candidate source names without the `longformer.` prefix,
    transform)."""
    offset = longformer_position_offset(source_config)
    names = {
        "model.embeddings.word_embeddings.weight": (["embeddings.word_embeddings.weight"], None),
        "model.embeddings.position_embeddings.weight": (["embeddings.position_embeddings.weight"],
                                                        lambda t: t[offset:]),
        "model.embeddings.token_type_embeddings.weight": (
            ["embeddings.token_type_embeddings.weight"], None),
        "model.embeddings.layer_norm.weight": (["embeddings.LayerNorm.weight"], None),
        "model.embeddings.layer_norm.bias": (["embeddings.LayerNorm.bias"], None),
    }
    for layer in range(source_config["num_hidden_layers"]):
        names.update(_layer_names(layer))
    for head in LONGFORMER_HEADS:
        for kind in ("weight", "bias"):
            names[f"{head}.{kind}"] = ([f"{head}.{kind}"], None)
    # absent when tied: fine
    names["lm_head.decoder.weight"] = (["lm_head.decoder.weight"], None)
    # the same tensor under either name
    names["lm_head.decoder.bias"] = (["lm_head.bias", "lm_head.decoder.bias"], None)
    return names


def _layer_names(layer: int) -> dict:
    """`longformer_names` of one encoder layer."""
    names = {}
    for theirs, ours in LONGFORMER_LAYER.items():
        for p in LONGFORMER_PROJECTIONS if "{p}" in theirs else (None,):
            for kind in ("weight", "bias"):
                names[f"model.layers.{layer}.{ours.format(p=p)}.{kind}"] = (
                    [f"encoder.layer.{layer}.{theirs.format(p=p)}.{kind}"], None)
    return names


def longformer_state_dict(source_state: dict, source_config: dict) -> tuple[dict, dict, set]:
    """Maps a transformers Longformer state dict (backbone keys with or without `longformer.`)."""
    original = {key.removeprefix(LONGFORMER_PREFIX): key for key in source_state}
    ours, origin = {}, {}
    for name, (candidates, transform) in longformer_names(source_config).items():
        found = next((original[c] for c in candidates if c in original), None)
        if found is not None:
            tensor = source_state[found]
            ours[name] = tensor if transform is None else transform(tensor)
            origin[name] = found
    pooler = sorted(key for short, key in original.items() if short.startswith("pooler."))
    if pooler:
        logger.warning("Dropping %s: longctx backbones return hidden states without a pooler "
                       "(classification pools through its own head).", pooler)
    buffers = {key for short, key in original.items() if short.endswith("position_ids")}
    aliases = set()
    if "lm_head.bias" in original and "lm_head.decoder.bias" in original:  # one tensor, saved twice
        aliases.add(original["lm_head.decoder.bias"])
    return ours, origin, set(pooler) | buffers | aliases


LONGFORMER_CONVERTER = Converter(
    config=longformer_config,
    state=longformer_state_dict,
    heads={
        "LongformerModel": "AutoModel",
        "LongformerForMaskedLM": "AutoModelForMaskedLM",
        "LongformerForSequenceClassification": "AutoModelForSequenceClassification",
        "LongformerForQuestionAnswering": "AutoModelForQuestionAnswering",
    },
)
