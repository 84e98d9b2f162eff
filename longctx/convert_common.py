"""What every conversion of a transformers checkpoint into a longctx one shares.

`Converter` says how one source family maps (its config, its state dict, its head classes);
each `convert_<family>.py` builds one, and `convert.py` keeps them in its registry. Here: reading
a source folder (config.json; model.safetensors, or pytorch_model.bin through
`torch.load(weights_only=True)`, never an unrestricted unpickle; or the sharded form of either),
building the longctx model and filling it -- every longctx parameter filled, every source tensor
used or dropped on purpose (with a warning), else `ValueError` lists the keys -- and writing the
destination folder with SRC's tokenizer files.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

import longctx  # noqa: F401  (registers the longctx model types with the Auto classes)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json")
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


def with_int_label_keys(config: dict) -> dict:
    """`config` with its `id2label` keys as ints: JSON keys are strings; transformers wants ints."""
    if "id2label" in config:
        config["id2label"] = {int(key): value for key, value in config["id2label"].items()}
    return config


def build_model(converter: Converter, architecture: str, source_config: dict, source_state: dict):
    """The longctx model of `architecture` (one of `converter.heads`) for a transformers config +
    state dict, its weights filled, in the source's dtype, in eval mode."""
    auto_class = converter.heads[architecture]
    config = AutoConfig.for_model(**converter.config(source_config))
    if auto_class == "AutoModelForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"{architecture} has num_labels={config.num_labels}; longctx question "
                         f"answering predicts exactly 2 logits (start, end). Convert a checkpoint "
                         f"with num_labels=2.")
    model = getattr(transformers, auto_class).from_config(config)
    full, origin, dropped = converter.state(source_state, source_config)
    # the backbone alone: no prefix, no heads
    prefix = "model." if auto_class == "AutoModel" else ""
    expected, state, used = set(model.state_dict()), {}, set(dropped)
    for key, value in full.items():
        if key.startswith(prefix) and key.removeprefix(prefix) in expected:
            state[key.removeprefix(prefix)] = value
            used.add(origin[key])
    check_complete(model, state, source_state, used, architecture)
    # tied weights may be absent from `state`: checked above
    model.load_state_dict(state, strict=False)
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
        raise ValueError(f"Conversion of {architecture} incomplete: longctx parameters without a "
                         f"source: {missing}; source tensors not used: {unused}. Check that the "
                         f"checkpoint's architecture is right (--architecture) and its weights "
                         f"are complete.")


def read_source_config(folder: Path) -> dict:
    """config.json of a transformers checkpoint folder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json; pass a transformers checkpoint folder "
                         f"(the output of save_pretrained).")
    return json.loads(config_file.read_text())


def load_source_state(folder: Path) -> dict:
    """The state dict of a transformers folder: safetensors first, then pytorch_model.bin (only
    ever through `torch.load(weights_only=True)`), each possibly sharded."""
    def load_bin(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    for single, index, load in ((SAFETENSORS, SAFETENSORS_INDEX, load_file),
                                (PYTORCH, PYTORCH_INDEX, load_bin)):
        if (folder / single).exists():
            state = load(folder / single)
            break
        if (folder / index).exists():
            state = _load_shards(folder, index, load)
            break
    else:
        raise ValueError(f"{folder} has no weights ({SAFETENSORS}, {PYTORCH} or a sharded index); "
                         f"pass a transformers checkpoint folder (the output of save_pretrained).")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{folder}'s weights file does not hold a state dict (names -> tensors); "
                         f"save the model with save_pretrained or torch.save(model.state_dict()).")
    return state


def _load_shards(folder: Path, index: str, load) -> dict:
    state = {}
    for shard in sorted(set(json.loads((folder / index).read_text())["weight_map"].values())):
        if not (folder / shard).exists():
            raise ValueError(f"{folder / index} names the shard {shard}, which is missing; "
                             f"download every shard of the checkpoint.")
        state.update(load(folder / shard))
    return state


def check_destination(source: Path, destination: Path, overwrite: bool) -> None:
    """Refuses a destination that would destroy something: SRC itself, a folder holding SRC, a
    file, or a non-empty folder (unless `overwrite`)."""
    source, target = source.resolve(), destination.resolve()
    if target == source or target in source.parents:
        raise ValueError(f"destination {destination} is the source {source} or holds it; the "
                         f"conversion would overwrite its own input. Pass another destination.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"destination {destination} is a file; pass a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"destination {destination} is not empty; pass another destination, or "
                         f"overwrite=True (--overwrite) to replace the folder.")


def save_converted(model, source: Path, destination: Path,
                   model_max_length: int | None = None) -> Path:
    """Writes the longctx checkpoint (weights, config.json with auto_map, the code) and SRC's
    tokenizer files into a temporary folder beside `destination`, then renames it into place:
    an interruption leaves the old destination (or none) and a hidden `.DST.partial-*` folder,
    never a half-written checkpoint at `destination`. `model_max_length`: written into the
    copied tokenizer_config.json (an elongated model takes longer inputs than SRC's tokenizer
    says)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-",
                                    dir=destination.parent))
    try:
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, staging / name)
        if model_max_length is not None:
            _set_model_max_length(source, staging, model_max_length)
        _replace_folder(staging, destination)
    except BaseException:  # also KeyboardInterrupt: leave no partial folder behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _set_model_max_length(source: Path, folder: Path, length: int) -> None:
    """Sets `model_max_length` in the tokenizer_config.json copied into `folder`. Without one
    (but with other tokenizer files) one is written, naming the class transformers loads for
    SRC: the longctx config.json no longer says which tokenizer the files are for."""
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    elif any((folder / name).is_file() for name in TOKENIZER_FILES):
        config = {"tokenizer_class": type(AutoTokenizer.from_pretrained(source)).__name__}
    else:
        return
    config["model_max_length"] = length
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _replace_folder(new: Path, destination: Path) -> None:
    """Renames `new` to `destination`. An existing destination is first renamed aside and
    deleted only once `new` is in place, so at every moment one whole folder is there."""
    if not destination.exists():
        new.rename(destination)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
    old.rmdir()  # only the unused name is wanted: rename needs a free path
    destination.rename(old)
    try:
        new.rename(destination)
    except BaseException:
        old.rename(destination)  # put the old folder back
        raise
    shutil.rmtree(old)
