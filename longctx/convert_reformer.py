"""transformers' Reformer -> `longctx-reformer` (`REFORMER_CONVERTER`, which
`convert.CONVERTERS["reformer"]` names).

Outputs match transformers' within float error for right-padded (or unpadded) batches with a
fixed `hash_seed` (without one, both draw new random rotations every forward). The LM heads'
output bias is the one the version that saved (or holds) the source adds, read from the config's
`transformers_version`: `lm_head.bias` before 5.0 (tied to `lm_head.decoder.bias`), none in
5.0-5.23 (the parameter is kept but not added), `lm_head.decoder.bias` from 5.24 on.
"""

import logging

import torch
import transformers

from .convert_common import Converter, with_int_label_keys

logger = logging.getLogger(__name__)

REFORMER_PREFIX = "reformer."
REFORMER_COPIED = (
    "vocab_size", "hidden_size", "num_attention_heads", "attention_head_size", "attn_layers",
    "feed_forward_size", "hidden_act", "hidden_dropout_prob", "lsh_attention_probs_dropout_prob",
    "local_attention_probs_dropout_prob", "layer_norm_eps", "initializer_range",
    "max_position_embeddings", "num_hashes", "num_buckets", "hash_seed", "lsh_attn_chunk_length",
    "lsh_num_chunks_before", "lsh_num_chunks_after", "local_attn_chunk_length",
    "local_num_chunks_before", "local_num_chunks_after", "axial_pos_embds", "axial_pos_shape",
    "axial_pos_embds_dim", "axial_norm_std", "chunk_size_feed_forward", "chunk_size_lm_head",
    "is_decoder", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
    "classifier_dropout", "id2label", "label2id", "problem_type")
# theirs (after `reformer.encoder.layers.{i}.`) -> ours (after `model.layers.{i}.`)
REFORMER_LAYER = {
    "attention.layer_norm.": "attention.layer_norm.",
    "attention.self_attention.": "attention.",
    "attention.output.dense.": "attention.output.",
    "feed_forward.layer_norm.": "feed_forward.layer_norm.",
    "feed_forward.dense.dense.": "feed_forward.dense_in.",
    "feed_forward.output.dense.": "feed_forward.dense_out.",
}
REFORMER_TOP = {  # theirs (prefix removed) -> ours
    "embeddings.": "model.embeddings.",
    "encoder.layer_norm.": "model.final_norm.",
    "lm_head.decoder.weight": "lm_head.decoder.weight",
    "classifier.": "classifier.",
    "qa_outputs.": "qa_outputs.",
}


def reformer_config(source: dict) -> dict:
    """transformers' ReformerConfig names are longctx-reformer's; classification pools the first
    token, as transformers' Reformer head does. Fields a config.json leaves out take transformers'
    defaults (not ours: e.g. its dropouts differ). The common `attention_probs_dropout_prob`, which
    Reformer layers do not read (each kind has its own), is set to the LSH layers' value so that
    the config states no dropout the model does not have."""
    source = {**transformers.ReformerConfig().to_dict(), **source}
    config = {name: source[name] for name in REFORMER_COPIED if source.get(name) is not None}
    config["attention_probs_dropout_prob"] = source["lsh_attention_probs_dropout_prob"]
    with_int_label_keys(config)
    config.update(model_type="longctx-reformer", classifier_pooling="first",
                  tie_word_embeddings=False, hash_seed=source.get("hash_seed"),
                  num_buckets=source.get("num_buckets"))
    return config


def reformer_key(short: str) -> str | None:
    """Our name for a transformers Reformer key (without `reformer.`), None if it has none."""
    if short.startswith("encoder.layers."):
        layer, rest = short.removeprefix("encoder.layers.").split(".", 1)
        for theirs, ours in REFORMER_LAYER.items():
            if rest.startswith(theirs):
                return f"model.layers.{layer}.{ours}{rest.removeprefix(theirs)}"
        return None
    for theirs, ours in REFORMER_TOP.items():
        if short == theirs or (theirs.endswith(".") and short.startswith(theirs)):
            return ours + short.removeprefix(theirs)
    return None


def reformer_state_dict(source_state: dict, source_config: dict) -> tuple[dict, dict, set]:
    """Maps a transformers Reformer state dict. Older versions saved the mask constants
    (`*mask_value_float16/32`): they are dropped. The LM heads' bias: `reformer_lm_bias`."""
    ours, origin, dropped = {}, {}, set()
    for key, tensor in source_state.items():
        short = key.removeprefix(REFORMER_PREFIX)
        if short in ("lm_head.bias", "lm_head.decoder.bias") or "mask_value_float" in short:
            dropped.add(key)
            continue
        name = reformer_key(short)
        if name is not None:
            ours[name], origin[name] = tensor, key
    if "lm_head.decoder.weight" in source_state:
        ours["lm_head.decoder.bias"], origin["lm_head.decoder.bias"] = reformer_lm_bias(
            source_state, source_config.get("transformers_version"))
    return ours, origin, dropped


def reformer_lm_bias(source_state: dict, version: str | None) -> tuple[torch.Tensor, str]:
    """(the bias the source's LM head adds to its logits, the key it came from). transformers 4
    added `lm_head.bias` (tied to `lm_head.decoder.bias`: both keys, or one, saved); 5.0-5.23
    kept `lm_head.bias` but added no bias; 5.24 gave `lm_head.decoder` a bias of its own, added,
    and left `lm_head.bias` unused."""
    vocab_size = source_state["lm_head.decoder.weight"].shape[0]
    zeros = source_state["lm_head.decoder.weight"].new_zeros(vocab_size)
    major_minor = parse_major_minor(version)
    if major_minor is None or major_minor < (5, 0):
        key = "lm_head.bias" if "lm_head.bias" in source_state else "lm_head.decoder.bias"
    elif major_minor < (5, 24):
        key = None
    else:
        key = "lm_head.decoder.bias" if "lm_head.decoder.bias" in source_state else None
    unused = source_state.get("lm_head.bias") if key != "lm_head.bias" else None
    if unused is not None and bool(unused.any()):
        logger.warning("Dropping lm_head.bias: transformers %s, which saved this model, does not "
                       "add it to the logits, so the converted model does not either.", version)
    if version is None:
        logger.warning("The source config has no transformers_version; converting its LM head as "
                       "transformers 4 computed it (adding lm_head.bias).")
    return (source_state[key], key) if key is not None else (zeros, "lm_head.decoder.weight")


def parse_major_minor(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a version string such as '5.24.0' or '4.35.2'; None if absent."""
    if not version:
        return None
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


REFORMER_CONVERTER = Converter(
    config=reformer_config,
    state=reformer_state_dict,
    heads={
        "ReformerModel": "AutoModel",
        "ReformerModelWithLMHead": "AutoModelForCausalLM",
        "ReformerForMaskedLM": "AutoModelForMaskedLM",
        "ReformerForSequenceClassification": "AutoModelForSequenceClassification",
        "ReformerForQuestionAnswering": "AutoModelForQuestionAnswering",
    },
)
