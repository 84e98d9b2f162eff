"""Convert transformers checkpoints into longctx checkpoints: `python -m longctx.convert SRC DST`.

SRC is a transformers model folder: config.json plus model.safetensors, pytorch_model.bin (read
with `torch.load(weights_only=True)`, never an unrestricted unpickle), or the sharded form of
either (`*.index.json`). DST gets a longctx checkpoint (safetensors, config.json with auto_map,
the code) loadable with the Auto classes, plus SRC's tokenizer files. In memory:
`convert_transformers_model(hf_model)`; folders: `convert_checkpoint(src, dst)`.

Each source `model_type` has one `Converter` in `CONVERTERS`: how to build the longctx config,
how to map the state dict, and which transformers classes map to which longctx Auto class.
A conversion must fill every longctx parameter and use every source tensor (or drop it on
purpose, with a warning), else `ValueError` lists the keys.

Longformer: outputs match transformers' within float error when an attention_mask is given.
Without one, transformers (RoBERTa) still gives pad ids in input_ids their own position while
longctx counts positions from attention_mask: pass the mask the tokenizer returns. Explicit
`position_ids` differ too: transformers' start at pad_token_id + 1, ours at 0.

Reformer: outputs match transformers' within float error for right-padded (or unpadded) batches
with a fixed `hash_seed` (without one, both draw new random rotations every forward). The LM
heads' output bias is the one the version that saved (or holds) the source adds, read from the
config's `transformers_version`: `lm_head.bias` before 5.0 (tied to `lm_head.decoder.bias`), none
in 5.0-5.23 (the parameter is kept but not added), `lm_head.decoder.bias` from 5.24 on.
"""

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig

import longctx  # noqa: F401  (registers the longctx model types with the Auto classes)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json")
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PYTORCH, PYTORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class Converter:
    """How one transformers `model_type` becomes a longctx one.

    config: source config dict -> keyword arguments of `AutoConfig.for_model` (with model_type).
    state: (source state dict, source config dict) -> (ours, origin, dropped): our state dict
        for the architecture's largest model (backbone keys under "model.", heads at the top
        level), our key -> the source key it came from, and the source keys dropped on purpose.
    heads: transformers architecture (class name) -> longctx Auto class name.
    """

    config: Callable[[dict], dict]
    state: Callable[[dict, dict], tuple[dict, dict, set]]
    heads: dict

    @property
    def backbone_architecture(self) -> str:
        return next(name for name, auto in self.heads.items() if auto == "AutoModel")


# ------------------------------------------------------------------------------------ Longformer
LONGFORMER_PREFIX = "longformer."


def longformer_position_offset(source: dict) -> int:
    """RoBERTa positions start after the pad id: theirs = ours + pad_token_id + 1."""
    pad = source.get("pad_token_id")
    return (1 if pad is None else pad) + 1


def longformer_config(source: dict) -> dict:
    offset = longformer_position_offset(source)
    copied = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
              "layer_norm_eps", "initializer_range", "type_vocab_size", "pad_token_id", "bos_token_id",
              "eos_token_id", "attention_window", "id2label", "label2id", "problem_type", "tie_word_embeddings")
    config = {name: source[name] for name in copied if source.get(name) is not None}
    if "id2label" in config:  # JSON keys are strings; transformers wants ints
        config["id2label"] = {int(key): value for key, value in config["id2label"].items()}
    sep = source.get("sep_token_id")
    config.update(model_type="longctx-longformer", pre_norm=False, classifier_pooling="first",
                  max_position_embeddings=source["max_position_embeddings"] - offset,
                  sep_token_id=sep if sep is not None else source.get("eos_token_id", 2))
    return config


LONGFORMER_LAYER = {  # theirs (under encoder.layer.{i}.) -> ours (under model.layers.{i}.)
    "attention.self.{p}": "attention.{p}",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.dense_in",
    "output.dense": "feed_forward.dense_out",
    "output.LayerNorm": "feed_forward_norm",
}
LONGFORMER_PROJECTIONS = ("query", "key", "value", "query_global", "key_global", "value_global")
LONGFORMER_HEADS = ("lm_head.dense", "lm_head.layer_norm", "classifier.dense", "classifier.out_proj", "qa_outputs")


def longformer_names(source_config: dict) -> dict:
    """Our parameter name -> (candidate source names without the `longformer.` prefix, transform)."""
    offset = longformer_position_offset(source_config)
    names = {
        "model.embeddings.word_embeddings.weight": (["embeddings.word_embeddings.weight"], None),
        "model.embeddings.position_embeddings.weight": (["embeddings.position_embeddings.weight"],
                                                        lambda t: t[offset:]),
        "model.embeddings.token_type_embeddings.weight": (["embeddings.token_type_embeddings.weight"], None),
        "model.embeddings.layer_norm.weight": (["embeddings.LayerNorm.weight"], None),
        "model.embeddings.layer_norm.bias": (["embeddings.LayerNorm.bias"], None),
    }
    for layer in range(source_config["num_hidden_layers"]):
        for theirs, ours in LONGFORMER_LAYER.items():
            for p in LONGFORMER_PROJECTIONS if "{p}" in theirs else (None,):
                for kind in ("weight", "bias"):
                    names[f"model.layers.{layer}.{ours.format(p=p)}.{kind}"] = (
                        [f"encoder.layer.{layer}.{theirs.format(p=p)}.{kind}"], None)
    for head in LONGFORMER_HEADS:
        for kind in ("weight", "bias"):
            names[f"{head}.{kind}"] = ([f"{head}.{kind}"], None)
    names["lm_head.decoder.weight"] = (["lm_head.decoder.weight"], None)  # absent when tied: fine
    names["lm_head.decoder.bias"] = (["lm_head.bias", "lm_head.decoder.bias"], None)  # the same tensor
    return names


def longformer_state_dict(source_state: dict, source_config: dict) -> tuple[dict, dict, set]:
    """Maps a transformers Longformer state dict (backbone keys with or without `longformer.`)."""
    original = {key.removeprefix(LONGFORMER_PREFIX): key for key in source_state}
    ours, origin = {}, {}
    for name, (candidates, transform) in longformer_names(source_config).items():
        found = next((original[c] for c in candidates if c in original), None)
        if found is not None:
            ours[name] = source_state[found] if transform is None else transform(source_state[found])
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


# -------------------------------------------------------------------------------------- Reformer
REFORMER_PREFIX = "reformer."
REFORMER_COPIED = (
    "vocab_size", "hidden_size", "num_attention_heads", "attention_head_size", "attn_layers", "feed_forward_size",
    "hidden_act", "hidden_dropout_prob", "lsh_attention_probs_dropout_prob", "local_attention_probs_dropout_prob",
    "layer_norm_eps", "initializer_range", "max_position_embeddings", "num_hashes", "num_buckets", "hash_seed",
    "lsh_attn_chunk_length", "lsh_num_chunks_before", "lsh_num_chunks_after", "local_attn_chunk_length",
    "local_num_chunks_before", "local_num_chunks_after", "axial_pos_embds", "axial_pos_shape", "axial_pos_embds_dim",
    "axial_norm_std", "chunk_size_feed_forward", "chunk_size_lm_head", "is_decoder", "use_cache", "pad_token_id",
    "bos_token_id", "eos_token_id", "classifier_dropout", "id2label", "label2id", "problem_type")
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
    if "id2label" in config:  # JSON keys are strings; transformers wants ints
        config["id2label"] = {int(key): value for key, value in config["id2label"].items()}
    config.update(model_type="longctx-reformer", classifier_pooling="first", tie_word_embeddings=False,
                  hash_seed=source.get("hash_seed"), num_buckets=source.get("num_buckets"))
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


# Imported here, not at the top: convert_transfo_xl must not import this module at load time
# (`python -m longctx.convert` would import it twice).
from .convert_transfo_xl import TRANSFO_XL_HEADS, transfo_xl_config, transfo_xl_state_dict  # noqa: E402

CONVERTERS = {  # source model_type -> Converter
    "longformer": Converter(
        config=longformer_config,
        state=longformer_state_dict,
        heads={
            "LongformerModel": "AutoModel",
            "LongformerForMaskedLM": "AutoModelForMaskedLM",
            "LongformerForSequenceClassification": "AutoModelForSequenceClassification",
            "LongformerForQuestionAnswering": "AutoModelForQuestionAnswering",
        },
    ),
    "transfo-xl": Converter(config=transfo_xl_config, state=transfo_xl_state_dict, heads=TRANSFO_XL_HEADS),
    "reformer": Converter(
        config=reformer_config,
        state=reformer_state_dict,
        heads={
            "ReformerModel": "AutoModel",
            "ReformerModelWithLMHead": "AutoModelForCausalLM",
            "ReformerForMaskedLM": "AutoModelForMaskedLM",
            "ReformerForSequenceClassification": "AutoModelForSequenceClassification",
            "ReformerForQuestionAnswering": "AutoModelForQuestionAnswering",
        },
    ),
}


# -------------------------------------------------------------------------------------- generic
def converter_for(source_config: dict, architecture: str | None = None) -> tuple[Converter, str]:
    """The converter for a source config, and the transformers architecture to convert; from
    `model_type`, else from the architecture name."""
    model_type = source_config.get("model_type")
    architectures = source_config.get("architectures") or []
    if architecture is None and architectures:
        architecture = architectures[0]
    if model_type is None and architecture is not None:
        model_type = next((kind for kind, conv in CONVERTERS.items() if architecture in conv.heads), None)
    if model_type not in CONVERTERS:
        raise ValueError(f"Cannot convert model_type={model_type!r} (architectures={architectures}); supported "
                         f"model types: {sorted(CONVERTERS)}. Convert a checkpoint of one of these.")
    converter = CONVERTERS[model_type]
    architecture = architecture or converter.backbone_architecture
    if architecture not in converter.heads:
        raise ValueError(f"Cannot convert architecture {architecture!r}: longctx has an equivalent for "
                         f"{sorted(converter.heads)}. Convert one of these (e.g. --architecture "
                         f"{converter.backbone_architecture} for the backbone alone).")
    return converter, architecture


def convert_state(source_config: dict, source_state: dict, architecture: str | None = None):
    """Builds the longctx model for a transformers config + state dict and fills its weights."""
    converter, architecture = converter_for(source_config, architecture)
    auto_class = converter.heads[architecture]
    config = AutoConfig.for_model(**converter.config(source_config))
    if auto_class == "AutoModelForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"{architecture} has num_labels={config.num_labels}; longctx question answering "
                         f"predicts exactly 2 logits (start, end). Convert a checkpoint with num_labels=2.")
    model = getattr(transformers, auto_class).from_config(config)
    full, origin, dropped = converter.state(source_state, source_config)
    prefix = "model." if auto_class == "AutoModel" else ""  # the backbone alone: no prefix, no heads
    expected, state, used = set(model.state_dict()), {}, set(dropped)
    for key, value in full.items():
        if key.startswith(prefix) and key.removeprefix(prefix) in expected:
            state[key.removeprefix(prefix)] = value
            used.add(origin[key])
    check_complete(model, state, source_state, used, architecture)
    model.load_state_dict(state, strict=False)  # tied weights may be absent from `state`: checked above
    model.tie_weights()
    floats = {tensor.dtype for tensor in source_state.values() if tensor.is_floating_point()}
    if len(floats) == 1:  # keep the checkpoint's precision (fp16/bf16 stay so)
        model.to(floats.pop())
    return model.eval()


def check_complete(model, state: dict, source_state: dict, used: set, architecture: str):
    """Every longctx parameter filled, every source tensor used or knowingly dropped."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(model.state_dict()) - set(state) - tied)
    unused = sorted(set(source_state) - used)
    if missing or unused:
        raise ValueError(f"Conversion of {architecture} incomplete: longctx parameters without a source: "
                         f"{missing}; source tensors not used: {unused}. Check that the checkpoint's "
                         f"architecture is right (--architecture) and its weights are complete.")


def convert_transformers_model(hf_model):
    """In memory: a transformers model (e.g. LongformerForMaskedLM) -> the same longctx model, in
    eval mode, on the source's device and in its dtype."""
    source_config = hf_model.config.to_dict()
    state = hf_model.state_dict()
    device = next(iter(state.values())).device if state else torch.device("cpu")
    model = convert_state(source_config, state, type(hf_model).__name__)
    return model.to(device)


def load_source_state(folder: Path) -> dict:
    """The state dict of a transformers folder: safetensors first, then pytorch_model.bin (only
    ever through `torch.load(weights_only=True)`), each possibly sharded."""
    def load_bin(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    for single, index, load in ((SAFETENSORS, SAFETENSORS_INDEX, load_file), (PYTORCH, PYTORCH_INDEX, load_bin)):
        if (folder / single).exists():
            return load(folder / single)
        if (folder / index).exists():
            state = {}
            for shard in sorted(set(json.loads((folder / index).read_text())["weight_map"].values())):
                if not (folder / shard).exists():
                    raise ValueError(f"{folder / index} names the shard {shard}, which is missing; download "
                                     f"every shard of the checkpoint.")
                state.update(load(folder / shard))
            return state
    raise ValueError(f"{folder} has no weights ({SAFETENSORS}, {PYTORCH} or a sharded index); pass a "
                     f"transformers checkpoint folder (the output of save_pretrained).")


def convert_checkpoint(source: str | Path, destination: str | Path, architecture: str | None = None) -> Path:
    """A transformers checkpoint folder -> a longctx checkpoint folder (returned); `architecture`
    overrides config.json's `architectures` (e.g. "LongformerModel" to keep the backbone)."""
    source, destination = Path(source), Path(destination)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{source} has no config.json; pass a transformers checkpoint folder "
                         f"(the output of save_pretrained).")
    source_config = json.loads(config_file.read_text())
    converter_for(source_config, architecture)  # fail on an unsupported model before loading weights
    state = load_source_state(source)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{source}'s weights file does not hold a state dict (names -> tensors); "
                         f"save the model with save_pretrained or torch.save(model.state_dict()).")
    model = convert_state(source_config, state, architecture)
    model.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, destination / name)
    return destination


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m longctx.convert",
        description="Convert a transformers checkpoint folder into a longctx checkpoint folder "
                    f"(supported model types: {', '.join(sorted(CONVERTERS))}).")
    parser.add_argument("source", help="transformers checkpoint folder (config.json + weights)")
    parser.add_argument("destination", help="folder for the longctx checkpoint")
    parser.add_argument("--architecture", default=None,
                        help="transformers class to convert as, instead of config.json's architectures "
                             "(e.g. LongformerModel)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        destination = convert_checkpoint(args.source, args.destination, args.architecture)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"converted {args.source} -> {destination}")


if __name__ == "__main__":
    main()
