"""Convert transformers checkpoints into longctx checkpoints: `python -m longctx.convert SRC DST`.

SRC is a transformers model folder (config.json + model.safetensors, or pytorch_model.bin, which
is read with `torch.load(weights_only=True)`: never an unrestricted unpickle). DST gets a longctx
checkpoint (safetensors, config.json with auto_map, the code), loadable with the Auto classes.
One converter per source `model_type`, in `CONVERTERS`.

Longformer: outputs match transformers' within float error when an attention_mask is given.
Without one, transformers (RoBERTa) still gives pad ids in input_ids their own position while
longctx counts positions from attention_mask: pass the mask the tokenizer returns.
"""

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig

import longctx  # noqa: F401  (registers the longctx model types with AutoConfig)

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "vocab.txt", "spiece.model")
HEAD_OF_ARCHITECTURE = {  # transformers class-name suffix -> longctx Auto class
    "Model": "AutoModel",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
}


# ------------------------------------------------------------------------------------ Longformer
def longformer_config(source: dict) -> dict:
    offset = source.get("pad_token_id", 1) + 1  # RoBERTa positions start after the pad id
    copied = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
              "layer_norm_eps", "initializer_range", "type_vocab_size", "pad_token_id", "bos_token_id",
              "eos_token_id", "attention_window", "id2label", "label2id", "problem_type")
    config = {name: source[name] for name in copied if name in source}
    config.update(model_type="longctx-longformer", pre_norm=False, classifier_pooling="first",
                  max_position_embeddings=source["max_position_embeddings"] - offset,
                  sep_token_id=source.get("sep_token_id", source.get("eos_token_id", 2)))
    return config


LONGFORMER_LAYER = {
    "attention.self.{p}": "attention.{p}",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.dense_in",
    "output.dense": "feed_forward.dense_out",
    "output.LayerNorm": "feed_forward_norm",
}


def longformer_names(source_config: dict) -> dict:
    """Our parameter name -> (source name, transform) for a Longformer backbone and its heads."""
    offset = source_config.get("pad_token_id", 1) + 1
    names = {
        "model.embeddings.word_embeddings.weight": ("embeddings.word_embeddings.weight", None),
        "model.embeddings.position_embeddings.weight": ("embeddings.position_embeddings.weight",
                                                        lambda t: t[offset:]),
        "model.embeddings.token_type_embeddings.weight": ("embeddings.token_type_embeddings.weight", None),
        "model.embeddings.layer_norm.weight": ("embeddings.LayerNorm.weight", None),
        "model.embeddings.layer_norm.bias": ("embeddings.LayerNorm.bias", None),
    }
    projections = ("query", "key", "value", "query_global", "key_global", "value_global")
    for layer in range(source_config["num_hidden_layers"]):
        for theirs, ours in LONGFORMER_LAYER.items():
            for p in projections if "{p}" in theirs else (None,):
                for kind in ("weight", "bias"):
                    src = f"encoder.layer.{layer}.{theirs.format(p=p)}.{kind}"
                    names[f"model.layers.{layer}.{ours.format(p=p)}.{kind}"] = (src, None)
    head_names = ["lm_head.dense", "lm_head.layer_norm", "classifier.dense", "classifier.out_proj", "qa_outputs"]
    for head in head_names:
        for kind in ("weight", "bias"):
            names[f"{head}.{kind}"] = (f"{head}.{kind}", None)
    names["lm_head.decoder.weight"] = ("lm_head.decoder.weight", None)
    names["lm_head.decoder.bias"] = ("lm_head.bias", None)
    return names


def longformer_state_dict(source_state: dict, source_config: dict) -> tuple[dict, set]:
    """Maps a transformers Longformer state dict; returns (ours, the source keys it used)."""
    state = {key.removeprefix("longformer."): value for key, value in source_state.items()}
    ours, used = {}, set()
    for name, (source_name, transform) in longformer_names(source_config).items():
        if source_name in state:
            ours[name] = state[source_name] if transform is None else transform(state[source_name])
            used.add(source_name)
    dropped = {key for key in state if key.startswith("pooler.")}
    if dropped:
        logger.warning("Dropping %s: longctx backbones return hidden states without a pooler.", sorted(dropped))
    if "lm_head.decoder.bias" in state:  # the same tensor as lm_head.bias
        used.add("lm_head.decoder.bias")
    return ours, used | dropped | {key for key in state if key.endswith("position_ids")}


CONVERTERS = {  # source model_type -> (config mapping, state-dict mapping)
    "longformer": (longformer_config, longformer_state_dict),
}


def convert_state(source_config: dict, source_state: dict, architecture: str):
    """Builds the longctx model for a transformers architecture name and fills its weights."""
    model_type = source_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(f"Cannot convert model_type={model_type!r}; supported: {sorted(CONVERTERS)}.")
    make_config, map_state = CONVERTERS[model_type]
    auto_class = auto_class_for(architecture)
    config = AutoConfig.for_model(**make_config(source_config))
    if auto_class == "AutoModelForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"{architecture} has num_labels={config.num_labels}; extractive QA needs 2 (start, end).")
    model = getattr(transformers, auto_class).from_config(config)
    state, used = map_state(source_state, source_config)
    if auto_class == "AutoModel":  # the backbone itself: no "model." prefix, no heads
        state = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    check_complete(model, state, source_state, used)
    model.load_state_dict(state, strict=False)  # tied weights are absent from `state` on purpose
    model.tie_weights()
    return model.eval()


def auto_class_for(architecture: str) -> str:
    for suffix, auto_class in HEAD_OF_ARCHITECTURE.items():
        if architecture.endswith(suffix):
            return auto_class
    raise ValueError(f"Cannot convert architecture {architecture!r}: supported heads end in "
                     f"{sorted(HEAD_OF_ARCHITECTURE)}.")


def check_complete(model, state: dict, source_state: dict, used: set):
    """Every longctx parameter filled, every source tensor used or knowingly dropped."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(set(model.state_dict()) - set(state) - tied)
    unused = sorted({key.removeprefix("longformer.") for key in source_state} - used)
    if missing or unused:
        raise ValueError(f"Conversion incomplete: longctx parameters without a source: {missing}; "
                         f"source tensors not used: {unused}.")


def convert_transformers_model(hf_model):
    """In memory: a transformers model (e.g. LongformerForMaskedLM) -> the same longctx model."""
    source_config = hf_model.config.to_dict()
    return convert_state(source_config, hf_model.state_dict(), type(hf_model).__name__)


def load_source_state(folder: Path) -> dict:
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ValueError(f"{folder} has neither model.safetensors nor pytorch_model.bin; pass a transformers "
                     f"checkpoint folder (save_pretrained output).")


def convert_checkpoint(source: str | Path, destination: str | Path) -> Path:
    source, destination = Path(source), Path(destination)
    config_file = source / "config.json"
    if not config_file.exists():
        raise ValueError(f"{source} has no config.json; pass a transformers checkpoint folder.")
    source_config = json.loads(config_file.read_text())
    architecture = (source_config.get("architectures") or ["Model"])[0]
    model = convert_state(source_config, load_source_state(source), architecture)
    model.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, destination / name)
    return destination


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="transformers checkpoint folder (config.json + weights)")
    parser.add_argument("destination", help="folder for the longctx checkpoint")
    args = parser.parse_args(argv)
    print(f"converted {args.source} -> {convert_checkpoint(args.source, args.destination)}")


if __name__ == "__main__":
    main()
