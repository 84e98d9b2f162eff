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
"""

import argparse
import logging
from pathlib import Path

import torch

from .convert_common import (
    Converter,
    build_model,
    check_destination,
    load_source_state,
    read_source_config,
    save_converted,
)
from .convert_longformer import LONGFORMER_CONVERTER
from .convert_reformer import REFORMER_CONVERTER
from .convert_transfo_xl import TRANSFO_XL_CONVERTER

CONVERTERS = {  # source model_type -> Converter
    "longformer": LONGFORMER_CONVERTER,
    "transfo-xl": TRANSFO_XL_CONVERTER,
    "reformer": REFORMER_CONVERTER,
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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m longctx.convert",
        description="Convert a transformers checkpoint folder into a longctx checkpoint folder "
                    f"(supported model types: {', '.join(sorted(CONVERTERS))}).")
    parser.add_argument("source", help="transformers checkpoint folder (config.json + weights)")
    parser.add_argument("destination", help="folder for the longctx checkpoint")
    parser.add_argument("--architecture", default=None,
                        help="transformers class to convert as, instead of config.json's "
                             "architectures (e.g. LongformerModel)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty destination folder (once the new checkpoint "
                             "is complete)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        destination = convert_checkpoint(args.source, args.destination, args.architecture,
                                         args.overwrite)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"converted {args.source} -> {destination}")


if __name__ == "__main__":
    main()
