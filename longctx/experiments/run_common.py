"""What the `scripts/run_*.py` scripts share (transformers' `examples/pytorch` conventions):
argument dataclasses for `HfArgumentParser`, building a model from a checkpoint or from a
longctx model type with `--config_overrides`, the tokenizer (the byte tokenizer by default), and
raw datasets from the Hub (`--dataset_name`) or local files (parquet, csv, json/jsonl).

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

import longctx

logger = logging.getLogger(__name__)

FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
                ".txt": "text"}


# transformers' own model types the scripts also train from scratch, for comparison (issue 23:
# T5 against the Reformer); their config fields take transformers' names (d_model, num_layers).
TRANSFORMERS_MODEL_TYPES = ("t5",)
# Encoder-decoder outputs no caller reads: kept by Trainer.predict/evaluate, the encoder's states
# of every evaluated row would pile up (rows x length x hidden floats).
UNREAD_OUTPUTS = ["encoder_last_hidden_state", "cache", "past_key_values"]


def unread_outputs(model) -> list[str]:
    """What Trainer.predict/evaluate should drop: UNREAD_OUTPUTS and the model's own
    `keys_to_ignore_at_inference` (a longctx model's cache), which an explicit `ignore_keys`
    would otherwise replace."""
    own = getattr(model.config, "keys_to_ignore_at_inference", None) or []
    return list(dict.fromkeys([*UNREAD_OUTPUTS, *own]))


def from_scratch_types() -> list[str]:
    return [*longctx.ARCHITECTURES, *TRANSFORMERS_MODEL_TYPES]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A longctx or transformers checkpoint (folder or Hub id) to start from."})
    model_type: str | None = field(default=None, metadata={
        "help": f"Train from scratch: one of {', '.join(from_scratch_types())}."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "With --model_type: config fields, e.g. "
                '"hidden_size=256,num_hidden_layers=4,attention_window=512".'})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "A tokenizer folder or Hub id (default: the checkpoint's, else longctx's byte "
                "tokenizer)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Load checkpoints that carry their own code."})

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.model_type is None):
            raise ValueError("give exactly one of --model_name_or_path (a checkpoint) or "
                             f"--model_type (train from scratch: "
                             f"{', '.join(from_scratch_types())})")
        if self.model_type is not None and self.model_type not in from_scratch_types():
            raise ValueError(f"--model_type {self.model_type!r} is not a longctx model type nor "
                             f"one compared with them; use one of "
                             f"{', '.join(from_scratch_types())}")
        if self.config_overrides and self.model_type is None:
            raise ValueError("--config_overrides only applies with --model_type (a checkpoint has "
                             "its config)")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={
        "help": "A Hub dataset (needs network access)."})
    dataset_config_name: str | None = field(default=None, metadata={
        "help": "The Hub dataset's configuration."})
    train_file: str | None = field(default=None, metadata={
        "help": "Local training data: parquet, csv, json, jsonl (txt for LM)."})
    validation_file: str | None = field(default=None, metadata={
        "help": "Local evaluation data, same formats."})
    max_seq_length: int = field(default=512, metadata={
        "help": "Tokens per example after truncation."})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "Use N training examples drawn at random with --seed (files may be sorted by "
                "label)."})
    max_eval_samples: int | None = field(default=None, metadata={
        "help": "Use N evaluation examples drawn at random with --seed."})

    # The arguments that name data; a task's subclass may add its own (e.g. run_qa's --squad_file).
    source_arguments = ("dataset_name", "train_file", "validation_file")

    def __post_init__(self):
        if all(getattr(self, name) is None for name in self.source_arguments):
            raise ValueError("give " + " or ".join(f"--{name}" for name in self.source_arguments) +
                             " (--dataset_name needs the Hub; the others are local files)")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and Path(path).suffix not in FILE_FORMATS:
                raise ValueError(f"--{name} {path}: use one of {', '.join(FILE_FORMATS)}")
        for name in ("max_seq_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}")


@dataclass
class OutputArguments:
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Write into an --output_dir that holds a finished run (its results files are "
                "deleted first). Without it such a folder is refused."})


def parse_config_overrides(text: str | None) -> dict:
    """ "a=1,b=0.5,c=true,d=[2,4],e=None,f=gelu" -> {"a": 1, "b": 0.5, "c": True, ...}: Python
    literals where the value is one, else the string."""
    overrides = {}
    for piece in filter(None, (part.strip() for part in _split_top_level(text or ""))):
        name, sep, value = piece.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--config_overrides piece {piece!r} is not name=value")
        overrides[name.strip()] = _literal(value.strip())
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets, so lists stay whole ("w=[2,4],n=2")."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _literal(value: str):
    lowered = value.lower()
    if lowered in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(lowered)
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def build_model(model_args: ModelArguments, auto_class, tokenizer=None, **task_fields):
    """From the checkpoint, or a fresh longctx model of `--model_type` with the task's fields (e.g.
    num_labels), the overrides and, where the overrides do not set them, the tokenizer's vocabulary
    size and special token ids. The tokenizer takes the model's input limit in return
    (`fit_tokenizer_to_model`)."""
    if model_args.model_name_or_path is not None:
        model = auto_class.from_pretrained(model_args.model_name_or_path, **task_fields,
                                           trust_remote_code=model_args.trust_remote_code)
    else:
        overrides = parse_config_overrides(model_args.config_overrides)
        from_tokenizer = tokenizer_fields(tokenizer, overrides) if tokenizer is not None else {}
        fields = {**from_tokenizer, **overrides, **task_fields}
        config = AutoConfig.for_model(model_args.model_type, **fields)
        if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
            # T5's choice: the decoder starts from the padding token (its _shift_right needs one)
            config.decoder_start_token_id = config.pad_token_id
        model = auto_class.from_config(config)
    if tokenizer is not None:
        fit_tokenizer_to_model(tokenizer, model.config)
    return model


def fit_tokenizer_to_model(tokenizer, config) -> None:
    """Sets the tokenizer's `model_max_length` to the model's limit (`longctx.model_max_length_for`:
    max_position_embeddings, or "no limit" for Transformer-XL). The Trainer saves the tokenizer
    beside the model, and whoever loads the pair reads the limit from the tokenizer; the byte
    tokenizer's default (4096) or a --tokenizer_name's own limit need not be the model's. A
    config that states no limit leaves the tokenizer as it is."""
    limit = longctx.model_max_length_for(config)
    if limit is not None and limit != tokenizer.model_max_length:
        logger.info(f"tokenizer model_max_length {tokenizer.model_max_length} -> {limit}, "
                    f"the model's limit")
        tokenizer.model_max_length = limit


def tokenizer_fields(tokenizer, overrides: dict) -> dict:
    """vocab_size = len(tokenizer) and the tokenizer's pad/bos/eos ids, for a model built from
    scratch; an overridden vocab_size below len(tokenizer) could not embed its ids and raises."""
    size = len(tokenizer)
    if "vocab_size" in overrides and overrides["vocab_size"] < size:
        raise ValueError(f"--config_overrides vocab_size={overrides['vocab_size']} is below the "
                         f"tokenizer's {size} tokens; drop vocab_size (it defaults to the "
                         f"tokenizer's size) or raise it to {size}")
    fields = {"vocab_size": size}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            fields[name] = getattr(tokenizer, name)
    return fields


def load_tokenizer(model_args: ModelArguments):
    """--tokenizer_name, else the checkpoint's own tokenizer if it has one, else the byte
    tokenizer."""
    source = model_args.tokenizer_name
    if source is None and model_args.model_name_or_path is not None:
        folder = Path(model_args.model_name_or_path)
        if (not folder.is_dir() or (folder / "tokenizer.json").exists()
                or (folder / "tokenizer_config.json").exists()):
            source = model_args.model_name_or_path
    if source is None:
        logger.info("no tokenizer given: using longctx's byte tokenizer")
        return longctx.byte_tokenizer()
    return AutoTokenizer.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)


def encode_whole_text(tokenizer, text: str) -> list[int]:
    """A whole text's token ids, without special tokens, to be cut into blocks by the caller:
    transformers' warning that the ids exceed `model_max_length` ("will result in indexing
    errors") is about feeding them to the model at once, which no caller does, so it is off."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def load_raw_datasets(data_args: DataArguments):
    """A DatasetDict with "train" and/or "validation" from the Hub or the local files."""
    import datasets

    if data_args.dataset_name is not None:
        return datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    files = {split: path for split, path in (("train", data_args.train_file),
                                             ("validation", data_args.validation_file)) if path}
    formats = {FILE_FORMATS[Path(path).suffix] for path in files.values()}
    if len(formats) > 1:
        raise ValueError("--train_file and --validation_file have different formats "
                         f"{sorted(formats)}; use one")
    return datasets.load_dataset(formats.pop(), data_files=files)


def evaluation_split(raw, preferred=("validation", "test")):
    """The split to evaluate on: "validation", else "test" (IMDb on the Hub has no validation)."""
    for name in preferred:
        if name in raw:
            return name
    raise ValueError(f"no evaluation split among {list(raw)}; give --validation_file")


def sample(dataset, count: int | None, seed: int):
    """(rows, their row numbers in `dataset`): all rows, or `count` drawn at random with `seed`
    and kept in file order. Not the first `count`: a file sorted by label (IMDb's are) would
    give a single class, and a classifier that scores 1.0 on it."""
    if count is None or count >= len(dataset):
        return dataset, range(len(dataset))
    numbers = seeded_sample(count, len(dataset), seed)
    return dataset.select(numbers), numbers


def seeded_sample(count: int | None, total: int, seed: int) -> list[int]:
    """`count` of range(total) drawn with `seed`, in order (all when count is None or more)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def without_console_callbacks(trainer):
    """The Trainer without its printing and progress-bar callbacks (the study prints its own
    lines); returned for chaining."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def data_source(data_args: DataArguments, split: str) -> str:
    """How the command line named a split's data, for messages that point at a bad row."""
    if getattr(data_args, "squad_file", None) is not None:
        return f"--squad_file {data_args.squad_file}"
    if data_args.dataset_name is not None:
        return f"--dataset_name {data_args.dataset_name} (split {split!r})"
    return (f"--train_file {data_args.train_file}" if split == "train"
            else f"--validation_file {data_args.validation_file}")


def require_columns(dataset, columns, argument_hint: str):
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"the data has no column(s) {missing} (it has {dataset.column_names}); "
                         f"{argument_hint}")


RUN_INFO = "run_info.json"
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "attention_window", "projection_dim", "sharing",
               "is_decoder", "mem_len", "attn_type", "num_decoder_layers")


def command_line() -> str:
    """The command that started this process, as a shell would take it back."""
    import shlex

    return " ".join(shlex.quote(arg) for arg in ["python", *sys.argv])


def run_info(task: str, model, data: dict, steps: dict) -> dict:
    """What produced a result, for the report: the command, the model (type, size, parameters),
    the data, the training budget, the device and the library versions."""
    import platform
    import time

    import torch
    import transformers

    device = next(model.parameters()).device
    config = model.config
    return {
        "task": task, "command": command_line(),
        "model_type": config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
        "size": {name: getattr(config, name) for name in SIZE_FIELDS if hasattr(config, name)},
        "data": {k: v for k, v in data.items() if v is not None}, "steps": steps,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "longctx": longctx.__version__,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def write_run_info(output_dir, info: dict):
    write_json(Path(output_dir) / RUN_INFO, info, indent=2, ensure_ascii=False, sort_keys=False)


def write_json(path: Path, document: dict, **layout) -> None:
    """`document` as a JSON file, its folder made if needed; `layout`: json.dumps options, by
    default the layout of transformers' save_metrics."""
    layout = {"indent": 4, "sort_keys": True, **layout}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, **layout) + "\n", encoding="utf-8")


# What a run writes that a later run's numbers could be confused with: deleted by
# --overwrite_output_dir before the new run starts.
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json",
                "eval_predictions.json", "generations.jsonl", RUN_INFO)
# Any one of these marks a folder as holding a finished run (a run killed before its end
# leaves at most checkpoint-* folders, which --resume_from_checkpoint goes on from).
FINISHED_RUN_FILES = (*RESULT_FILES, "config.json", "model.safetensors", "study_results.json")


def prepare_output_dir(output_dir, overwrite: bool) -> None:
    """Refuses an output_dir that holds a finished run unless `overwrite`, so no result is lost;
    with `overwrite`, deletes that run's results files first, so none is read as this run's."""
    folder = Path(output_dir)
    found = [name for name in FINISHED_RUN_FILES if (folder / name).exists()]
    if found and not overwrite:
        raise ValueError(f"--output_dir {output_dir} holds a finished run ({', '.join(found)}); "
                         f"pass another --output_dir, or --overwrite_output_dir to replace it")
    for name in RESULT_FILES:
        (folder / name).unlink(missing_ok=True)


def new_run_id() -> str:
    """Names one run: written into run_info.json and into every results file of that run, so
    the report credits a metric only to the run that produced it."""
    return uuid.uuid4().hex


def finish(trainer, train_result=None, eval_metrics=None, push_kwargs=None, task: str = "",
           data_args=None):
    """Saves the metrics as the example scripts do (train_results.json, eval_results.json and
    all_results.json in output_dir), but all_results.json fresh (transformers' save_metrics
    merges into an existing one, keeping an earlier run's keys) and each file with this run's
    `run_id`; run_info.json (what produced them, the same run_id), the model and tokenizer; and
    pushes if asked."""
    run_id = new_run_id()
    if trainer.is_world_process_zero():
        steps = {"max_steps": trainer.args.max_steps, "epochs": trainer.args.num_train_epochs,
                 "global_step": trainer.state.global_step,
                 "train_batch_size": (trainer.args.per_device_train_batch_size
                                      * trainer.args.world_size)}
        data = vars(data_args) if data_args is not None else {}
        info = run_info(task, trainer.model, data, steps)
        write_run_info(trainer.args.output_dir, {**info, "run_id": run_id})
    all_metrics = {}
    if train_result is not None:
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", {**train_result.metrics, "run_id": run_id}, combined=False)
        trainer.save_state()
        all_metrics.update(train_result.metrics)
    if eval_metrics is not None:
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", {**eval_metrics, "run_id": run_id}, combined=False)
        all_metrics.update(eval_metrics)
    if trainer.is_world_process_zero():
        write_json(Path(trainer.args.output_dir) / "all_results.json",
                   {**all_metrics, "run_id": run_id})
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**(push_kwargs or {}))
