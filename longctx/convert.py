"""Convert transformers checkpoints into longctx checkpoints: `python -m longctx.convert SRC DST`.

SRC is a transformers model folder: config.json plus model.safetensors, pytorch_model.bin (read
with `torch.load(weights_only=True)`, never an unrestricted unpickle), or the sharded form of
either (`*.index.json`). DST gets a longctx checkpoint (safetensors, config.json with auto_map,
the code) loadable with the Auto classes, plus SRC's tokenizer files. In memory:
`convert_transformers_model(hf_model)`; folders: `convert_checkpoint(src, dst)`. DST must be
new or empty (`--overwrite` replaces it) and is written beside, then renamed into place.

This module is the registry and the command line. Each source `model_type` has one `Converter`
in `CONVERTERS`: how to build the longctx config, how to map the state dict, and which
transformers classes map to which longctx Auto class -- one module per source family
(`convert_longformer`, `convert_reformer`, `convert_transfo_xl`: what matches transformers'
outputs, and where by design it does not), sharing `convert_common`. A conversion must fill
every longctx parameter and use every source tensor (or drop it on purpose, with a warning),
else `ValueError` lists the keys.

Elongation (`--to MODEL_TYPE`, `convert_elongate`): a pretrained BERT, RoBERTa, DistilBERT,
ELECTRA or GPT-2 becomes a longctx-longformer, -transformer or -linformer model with more
positions (`--max_position_embeddings`, default 4096); in memory `elongate(model, to=...,
**config_overrides)`; folders `elongate_checkpoint(src, dst, to=..., ...)`. The tokenizer files
are copied with `model_max_length` set to the new length.
"""

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .convert_common import (
    TOKENIZER_FILES,
    Converter,
    build_model,
    check_destination,
    load_source_state,
    read_source_config,
    save_converted,
)
from .convert_elongate import SOURCES, TARGETS, elongate_state, family_for
from .convert_longformer import LONGFORMER_CONVERTER
from .convert_reformer import REFORMER_CONVERTER
from .convert_transfo_xl import TRANSFO_XL_CONVERTER

CONVERTERS = {  # source model_type -> Converter
    "longformer": LONGFORMER_CONVERTER,
    "transfo-xl": TRANSFO_XL_CONVERTER,
    "reformer": REFORMER_CONVERTER,
}


ELONGATE_OPTIONS = {
    "max_position_embeddings": "positions of the new model (default 4096); the source's are "
                               "repeated up to it",
    "attention_window": "longctx-longformer's window (default 512; each token sees half of it "
                        "on either side)",
    "projection_dim": "longctx-linformer's projected length k (default 256)",
}


def converter_for(source_config: dict, architecture: str | None = None) -> tuple[Converter, str]:
    """The converter for a source config, and the transformers architecture to convert; from
    `model_type`, else from the architecture name."""
    model_type = source_config.get("model_type")
    architectures = source_config.get("architectures") or []
    if architecture is None and architectures:
        architecture = architectures[0]
    if model_type is None and architecture is not None:
        model_type = next((kind for kind, conv in CONVERTERS.items() if architecture in conv.heads),
                          None)
    if model_type not in CONVERTERS:
        raise ValueError(f"Cannot convert model_type={model_type!r} (architectures="
                         f"{architectures}); supported model types: {sorted(CONVERTERS)}. Convert "
                         f"a checkpoint of one of these.")
    converter = CONVERTERS[model_type]
    architecture = architecture or converter.backbone_architecture
    if architecture not in converter.heads:
        raise ValueError(f"Cannot convert architecture {architecture!r}: longctx has an equivalent "
                         f"for {sorted(converter.heads)}. Convert one of these (e.g. "
                         f"--architecture {converter.backbone_architecture} for the backbone "
                         f"alone).")
    return converter, architecture


def convert_state(source_config: dict, source_state: dict, architecture: str | None = None):
    """Builds the longctx model for a transformers config + state dict and fills its weights."""
    converter, architecture = converter_for(source_config, architecture)
    return build_model(converter, architecture, source_config, source_state)


def convert_transformers_model(hf_model):
    """In memory: a transformers model (e.g. LongformerForMaskedLM) -> the same longctx model, in
    eval mode, on the source's device and in its dtype."""
    source_config = hf_model.config.to_dict()
    state = hf_model.state_dict()
    device = next(iter(state.values())).device if state else torch.device("cpu")
    model = convert_state(source_config, state, type(hf_model).__name__)
    return model.to(device)


def convert_checkpoint(source: str | Path, destination: str | Path,
                       architecture: str | None = None, overwrite: bool = False) -> Path:
    """A transformers checkpoint folder -> a longctx checkpoint folder (returned); `architecture`
    overrides config.json's `architectures` (e.g. "LongformerModel" to keep the backbone). A
    non-empty `destination` is refused unless `overwrite`; it is replaced only once the new
    checkpoint is complete."""
    source, destination = Path(source), Path(destination)
    check_destination(source, destination, overwrite)
    source_config = read_source_config(source)
    converter_for(source_config, architecture)  # an unsupported model fails before loading weights
    model = convert_state(source_config, load_source_state(source), architecture)
    return save_converted(model, source, destination)


def elongate(hf_model, to: str, **config_overrides):
    """In memory: a transformers BERT / RoBERTa / DistilBERT / ELECTRA / GPT-2 model -> the
    longctx `to` model (one of `convert_elongate.TARGETS`) with its weights, in eval mode, on the
    source's device and in its dtype. `config_overrides`: fields of the target config, e.g.
    max_position_embeddings=4096, attention_window=512, projection_dim=256, sep_token_id=102."""
    source_config = hf_model.config.to_dict()
    state = hf_model.state_dict()
    device = next(iter(state.values())).device if state else torch.device("cpu")
    model = elongate_state(source_config, state, to, type(hf_model).__name__, **config_overrides)
    return model.to(device)


def elongate_checkpoint(source: str | Path, destination: str | Path, to: str,
                        architecture: str | None = None, overwrite: bool = False,
                        **config_overrides) -> Path:
    """A transformers checkpoint folder -> an elongated longctx checkpoint folder (returned), with
    SRC's tokenizer files (model_max_length: the new length). Without a `sep_token_id` in SRC's
    config or the overrides, a Longformer takes the tokenizer's (question answering puts global
    attention on the tokens before it). DST: as `convert_checkpoint`."""
    source, destination = Path(source), Path(destination)
    check_destination(source, destination, overwrite)
    source_config = read_source_config(source)
    family_for(source_config, architecture)  # an unsupported model fails before loading weights
    if to == "longctx-longformer" and "sep_token_id" not in config_overrides:
        sep = source_config.get("sep_token_id")
        if sep is None and source_config.get("model_type") != "gpt2":
            sep = _tokenizer_sep_token_id(source)
        if sep is not None:
            config_overrides["sep_token_id"] = sep
    model = elongate_state(source_config, load_source_state(source), to, architecture,
                           **config_overrides)
    return save_converted(model, source, destination,
                          model_max_length=model.config.max_position_embeddings)


def _tokenizer_sep_token_id(source: Path) -> int | None:
    if not any((source / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(source).sep_token_id


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m longctx.convert",
        description="Convert a transformers checkpoint folder into a longctx checkpoint folder "
                    f"(supported model types: {', '.join(sorted(CONVERTERS))}); with --to, "
                    f"elongate a pretrained {', '.join(sorted(SOURCES))} model into a longctx "
                    f"model with more positions.")
    parser.add_argument("source", help="transformers checkpoint folder (config.json + weights)")
    parser.add_argument("destination", help="folder for the longctx checkpoint")
    parser.add_argument("--architecture", default=None,
                        help="transformers class to convert as, instead of config.json's "
                             "architectures (e.g. LongformerModel)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty destination folder (once the new checkpoint "
                             "is complete)")
    parser.add_argument("--to", choices=TARGETS, default=None, metavar="MODEL_TYPE",
                        help=f"elongate into this longctx model type ({', '.join(TARGETS)})")
    for name, text in ELONGATE_OPTIONS.items():
        parser.add_argument(f"--{name}", type=int, default=None, help=f"with --to: {text}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {name: getattr(args, name) for name in ELONGATE_OPTIONS
                 if getattr(args, name) is not None}
    try:
        if args.to is not None:
            destination = elongate_checkpoint(args.source, args.destination, args.to,
                                              args.architecture, args.overwrite, **overrides)
        elif overrides:
            raise ValueError(f"--{next(iter(overrides))} is for elongation only; pass --to "
                             f"MODEL_TYPE (one of {', '.join(TARGETS)}) too.")
        else:
            destination = convert_checkpoint(args.source, args.destination, args.architecture,
                                             args.overwrite)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"converted {args.source} -> {destination}")


if __name__ == "__main__":
    main()
