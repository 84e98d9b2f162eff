"""The seed study: every architecture in `longctx.ARCHITECTURES` and transformers' T5 (the
table of `study_models.py`), one size, one budget.

For each architecture (skipping a task whose head it lacks):

1. byte-level IMDb classification -- an encoder with `AutoModelForSequenceClassification`,
   trained with the stock `transformers.Trainer`, scored on test reviews (accuracy, precision,
   recall, F1 of the positive class);
2. byte-level language modelling of a book -- a decoder with `AutoModelForCausalLM`, scored on
   a different book (perplexity and bits per byte); Transformer-XL trains on segments in order
   carrying its memory, and is scored carrying it (`SegmentMemoryTrainer`, `evaluate_with_memory`);
3. efficiency of both trainings: tokens per second after a warm-up step, and the peak memory
   growth while training (process resident memory on CPU, allocated GPU memory on CUDA).

`run_study` returns the results, prints one comparison table and writes `study_results.json`.
Presets (`PRESETS`) fix the size, data, budget and device:

* "smoke" (the default): the tiny samples shipped in longctx/experiments/samples, a few
  minutes on 2 CPU cores, a check that everything runs end to end -- its accuracies are not
  results;
* "cpu": the real data (a `data_dir` laid out like ../shared/data; IMDb alone may come from
  the Hub) at 1,024 bytes on CPU, 12-41 minutes per architecture on 2 quiet cores
  (Transformer-XL the longest), 2 h 15 min for all five, test reviews subsampled;
* "gpu-lra": the Long Range Arena text task (IMDb at 4,096 bytes) and the books LM at 4,096
  bytes on a CUDA GPU, for hours; it refuses to run without one.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

import longctx
from .language_modeling import (
    SegmentMemoryTrainer,
    evaluate_lm,
    evaluate_with_memory,
    lm_blocks,
    lm_scores,
    stream_segments,
    trains_with_memory,
)
from .measure import RSS_GROWTH, environment, format_table, memory_meter
from .metrics import Metrics, confusion_matrix
from .run_common import (command_line, encode_whole_text, unread_outputs,
                         without_console_callbacks)
from .study_models import BYTE_EOS_ID, study_models
from .study_plots import write_study_plots

CLASSIFICATION_HEAD = "AutoModelForSequenceClassification"
CAUSAL_LM_HEAD = "AutoModelForCausalLM"
WARM_UP_ARCHITECTURE = "longctx-transformer"  # the dense baseline
SMOKE_DISCLAIMER = ("The smoke preset is a plumbing check on tiny samples (400 training reviews, "
                    "~59 KB of text, a few dozen steps): its accuracy and perplexity are not "
                    "results.")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class TaskBudget:
    max_length: int  # tokens per sequence (classification: truncated/padded; LM: block size)
    batch_size: int
    steps: int
    learning_rate: float
    eval_batch_size: int = 32
    # Classification: score the first `eval_rows` reviews of a fixed shuffle (seed 0) of the test
    # set; None scores them all.
    eval_rows: int | None = None
    # Language modelling: score the first `eval_chars` characters of the held-out book; None: all.
    eval_chars: int | None = None


SHIPPED_SAMPLES = "samples"  # longctx/experiments/samples
REAL_DATA = "real"  # a data_dir laid out like ../shared/data; IMDb alone may come from the Hub


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # Fields every architecture's config takes (configuration_common.py); one size for all.
    model: dict = field(default_factory=dict)
    classification: TaskBudget | None = None
    language_modeling: TaskBudget | None = None
    data: str = SHIPPED_SAMPLES
    device: str = "cpu"  # "cpu" or "cuda"; a CUDA preset refuses to run without a GPU
    bf16: bool = False  # bf16 mixed-precision training (Trainer bf16=True); evaluation stays fp32

    def __post_init__(self):
        if self.data not in (SHIPPED_SAMPLES, REAL_DATA):
            raise ValueError(f"Preset.data={self.data!r}: use {SHIPPED_SAMPLES!r} or {REAL_DATA!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"Preset.device={self.device!r}: use 'cpu' or 'cuda'")


PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="tiny shipped samples (longctx/experiments/samples), a few minutes on 2 CPU "
                    "cores",
        # No attention dropout: on CPU, SDPA with dropout falls back to its slow math kernel
        # (about 5x slower here), which would swamp what the throughput column compares.
        model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=256, attention_probs_dropout_prob=0.0),
        classification=TaskBudget(max_length=512, batch_size=8, steps=40, learning_rate=1e-3),
        language_modeling=TaskBudget(max_length=512, batch_size=8, steps=40, learning_rate=1e-3),
    ),
    "cpu": Preset(
        name="cpu",
        description="real data (--data_dir): byte-level IMDb and an Austen novel at 1,024 bytes, "
                    "12-41 minutes per architecture on 2 quiet CPU cores (2 h 15 min for all five)",
        model=dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=1024,
                   attention_probs_dropout_prob=0.0),  # no attention dropout: same reason as smoke
        # 2,000 test reviews, not 25,000: scoring them all at 1,024 bytes would take longer than
        # the training, for every architecture. A fixed shuffle: the split is sorted by label.
        classification=TaskBudget(max_length=1024, batch_size=8, steps=400, learning_rate=1e-3,
                                  eval_rows=2000),
        language_modeling=TaskBudget(max_length=1024, batch_size=8, steps=400, learning_rate=1e-3,
                                     eval_chars=200_000),
        data=REAL_DATA,
    ),
    "gpu-lra": Preset(
        name="gpu-lra",
        description="NEEDS A CUDA GPU and takes hours: the Long Range Arena text task (byte-level "
                    "IMDb at 4,096 tokens, full test set) and the books LM at 4,096 bytes, bf16, "
                    "real data (--data_dir)",
        # Attention dropout stays at the config default: on CUDA, SDPA's fused kernels handle it.
        model=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=1024),
        # Evaluation in batches of 8: evaluation runs in fp32, and a 32 x 4,096 batch of explicit
        # attention scores (Transformer-XL) would be 8 GiB a layer.
        classification=TaskBudget(max_length=4096, batch_size=32, steps=5000, learning_rate=5e-4,
                                  eval_batch_size=8),
        language_modeling=TaskBudget(max_length=4096, batch_size=8, steps=5000, learning_rate=5e-4,
                                     eval_batch_size=8),
        data=REAL_DATA, device="cuda", bf16=True,
    ),
}


def resolve_preset(preset: str | Preset) -> Preset:
    """A name in PRESETS, or a Preset itself (e.g. a `dataclasses.replace` of one)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    return PRESETS[preset]


def check_device(preset: Preset):
    """A CUDA preset's sizes and budget are hours on a GPU: never fall back to the CPU."""
    if preset.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"preset {preset.name!r} needs a CUDA GPU and torch.cuda.is_available() "
                         "is False here; it does not fall back to the CPU (use --preset cpu for "
                         "real data on CPU)")


# --------------------------------------------------------------------------- data


def samples_dir() -> Path:
    return Path(__file__).parent / "samples"


def load_imdb(split: str) -> list[dict]:
    """Rows {"text", "label"} of the shipped IMDb sample ("train" or "test")."""
    with open(samples_dir() / f"imdb_{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_book(split: str) -> str:
    """The shipped book excerpt ("train": Emma, "valid": Sense and Sensibility)."""
    return (samples_dir() / f"book_{split}.txt").read_text(encoding="utf-8")


def classification_dataset(rows: list[dict], tokenizer, max_length: int,
                           eos_at_end: bool = False):
    """Tokenized, truncated and padded to `max_length` (one shape for every architecture);
    `eos_at_end`: each row's text truncated one byte shorter and closed with </s> (T5)."""
    import datasets

    texts = [row["text"] for row in rows]
    if eos_at_end:
        encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)
        closed = [ids + [BYTE_EOS_ID] for ids in encoded["input_ids"]]
        encoded = tokenizer.pad({"input_ids": closed}, padding="max_length",
                                max_length=max_length)
    else:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length")
    return datasets.Dataset.from_dict({"input_ids": encoded["input_ids"],
                                       "attention_mask": encoded["attention_mask"],
                                       "labels": [int(row["label"]) for row in rows]})


def real_token_fraction(dataset, max_length: int) -> float:
    """Share of the padded positions that hold text, counted in Arrow (a 25,000 x 4,096 mask as
    Python lists would take gigabytes)."""
    import pyarrow.compute as pc

    return (pc.sum(pc.list_flatten(dataset.data.column("attention_mask"))).as_py()
            / (len(dataset) * max_length))


# What a data_dir must hold: the layout of ../shared/data.
REAL_DATA_FILES = {"imdb_train": "imdb/train.parquet", "imdb_test": "imdb/test.parquet",
                   "book_train": "books/austen-emma.txt", "book_valid": "books/austen-sense.txt"}
DATA_LAYOUT = ", ".join(REAL_DATA_FILES.values())
HUB_IMDB = "imdb"


def data_file(data_dir: str | os.PathLike, part: str) -> Path:
    path = Path(data_dir) / REAL_DATA_FILES[part]
    if not path.is_file():
        raise ValueError(f"{path} not found: --data_dir must be laid out like ../shared/data "
                         f"({DATA_LAYOUT})")
    return path


def checked_reviews(texts, labels, origin: str) -> list[dict]:
    """Rows {"text", "label"}; labels must be 0/1 (an unlabelled split has -1)."""
    rows = [{"text": text, "label": int(label)} for text, label in zip(texts, labels)]
    unexpected = sorted({row["label"] for row in rows} - {0, 1})
    if unexpected:
        raise ValueError(f"{origin}: labels {unexpected}; the study needs 0 (negative) and 1 "
                         "(positive)")
    return rows


def read_imdb_parquet(path: Path) -> list[dict]:
    import pandas as pd

    frame = pd.read_parquet(path)
    missing = sorted({"text", "label"} - set(frame.columns))
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; IMDb files need columns text and label")
    return checked_reviews(frame["text"], frame["label"], str(path))


def hub_imdb(split: str) -> list[dict]:
    import datasets

    try:
        table = datasets.load_dataset(HUB_IMDB, split=split)
    # Offline, this fails in many ways (connection, DNS, offline mode, missing cache): all mean
    # the same to the user.
    except Exception as error:
        raise ValueError(f"IMDb: no --data_dir given and the Hugging Face Hub dataset {HUB_IMDB!r} "
                         f"could not be loaded ({type(error).__name__}: {error}); pass --data_dir "
                         f"DIR laid out like ../shared/data ({DATA_LAYOUT})") from error
    return checked_reviews(table["text"], table["label"], f"Hub dataset {HUB_IMDB!r}")


def read_reviews(preset: Preset, split: str, data_dir) -> tuple[list[dict], str]:
    """IMDb rows of `split` ("train" or "test") and where they came from."""
    if preset.data == SHIPPED_SAMPLES:
        return load_imdb(split), f"longctx/experiments/samples/imdb_{split}.jsonl"
    if data_dir is not None:
        path = data_file(data_dir, f"imdb_{split}")
        return read_imdb_parquet(path), str(path)
    return hub_imdb(split), f"Hugging Face Hub dataset {HUB_IMDB!r}, split {split!r}"


def read_book(preset: Preset, split: str, data_dir) -> tuple[str, str]:
    """The book of `split` ("train" or "valid") and where it came from."""
    if preset.data == SHIPPED_SAMPLES:
        return load_book(split), f"longctx/experiments/samples/book_{split}.txt"
    if data_dir is None:
        raise ValueError(f"preset {preset.name!r}: the books for language modelling have no Hub "
                         f"fallback; pass --data_dir DIR laid out like ../shared/data "
                         f"({DATA_LAYOUT})")
    path = data_file(data_dir, f"book_{split}")
    return path.read_text(encoding="utf-8"), str(path)


def scored_rows(rows: list[dict], eval_rows: int | None) -> list[dict]:
    """All rows, or the first `eval_rows` of a fixed shuffle (seed 0): IMDb splits are sorted
    by label, so a plain prefix would be a single class."""
    if eval_rows is None or eval_rows >= len(rows):
        return rows
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    return shuffled[:eval_rows]


@dataclass
class StudyData:
    """The text one study run trains and scores on, read once and shared by every architecture;
    a part the preset's tasks do not use stays None."""

    imdb_train: list[dict] | None = None
    imdb_test: list[dict] | None = None  # the reviews scored (eval_rows of them, or all)
    book_train: str | None = None
    book_valid: str | None = None  # the text scored (its first eval_chars characters, or all)
    summary: dict = field(default_factory=dict)  # origins and sizes, for the results and notes
    _classification_sets: dict = field(default_factory=dict, repr=False)

    def classification_sets(self, max_length: int, eos_at_end: bool = False):
        """(train, test) tokenized at `max_length`, once for all architectures."""
        key = (max_length, eos_at_end)
        if key not in self._classification_sets:
            tokenizer = longctx.byte_tokenizer(model_max_length=max_length)
            self._classification_sets[key] = (
                classification_dataset(self.imdb_train, tokenizer, max_length, eos_at_end),
                classification_dataset(self.imdb_test, tokenizer, max_length, eos_at_end))
        return self._classification_sets[key]


def load_study_data(preset: Preset, data_dir: str | os.PathLike | None = None) -> StudyData:
    """The preset's data: the shipped samples, or the real data from `data_dir` (IMDb alone may
    come from the Hub without it). A real-data preset never falls back to the samples."""
    if preset.data == SHIPPED_SAMPLES and data_dir is not None:
        real_data_presets = ", ".join(name for name, p in PRESETS.items() if p.data == REAL_DATA)
        raise ValueError(f"preset {preset.name!r} runs on the shipped samples; --data_dir is for "
                         f"the real-data presets ({real_data_presets})")
    data = StudyData()
    lm, classification = preset.language_modeling, preset.classification
    if lm is not None:  # books first: a missing book should fail before a Hub download of IMDb
        data.book_train, train_origin = read_book(preset, "train", data_dir)
        book_valid, valid_origin = read_book(preset, "valid", data_dir)
        data.book_valid = book_valid[:lm.eval_chars]
        data.summary.update(book_train=train_origin, book_train_chars=len(data.book_train),
                            book_valid=valid_origin, book_valid_chars=len(book_valid),
                            book_valid_chars_scored=len(data.book_valid))
    if classification is not None:
        data.imdb_train, train_origin = read_reviews(preset, "train", data_dir)
        imdb_test, test_origin = read_reviews(preset, "test", data_dir)
        data.imdb_test = scored_rows(imdb_test, classification.eval_rows)
        data.summary.update(imdb_train=train_origin, imdb_train_rows=len(data.imdb_train),
                            imdb_test=test_origin, imdb_test_rows=len(imdb_test),
                            imdb_test_rows_scored=len(data.imdb_test),
                            imdb_test_selection="all" if len(data.imdb_test) == len(imdb_test)
                            else "the first rows of a seed-0 shuffle (random.Random(0).shuffle)")
    return data


# --------------------------------------------------------------------------- efficiency


class StepTimer(TrainerCallback):
    """Time at the end of every optimizer step; the first step is the warm-up."""

    def __init__(self):
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if args.device.type == "cuda":  # kernels run asynchronously: time their end, not launch
            torch.cuda.synchronize(args.device)
        self.step_ends.append(time.perf_counter())

    def throughput(self, tokens_per_step: int) -> dict:
        measured = len(self.step_ends) - 1
        if measured < 1:
            raise RuntimeError("throughput needs at least 2 training steps (the first is a "
                               "warm-up)")
        seconds = self.step_ends[-1] - self.step_ends[0]
        return {"tokens_per_s": tokens_per_step * measured / seconds, "measured_steps": measured,
                "measured_seconds": seconds, "tokens_per_step": tokens_per_step}


MEMORY_MEASUREMENT = (f"{RSS_GROWTH} during Trainer.train(), over the RSS just before it; "
                      "includes gradients, optimizer state, activations and allocator overhead")
CUDA_MEMORY_MEASUREMENT = ("peak growth of torch.cuda.max_memory_allocated (peak statistics reset "
                           "just before) during Trainer.train(), over the memory allocated just "
                           "before it (the model already on the GPU); includes gradients, "
                           "optimizer state and activations, not the caching allocator's reserve "
                           "or the CUDA context")


def memory_measurement(device: str) -> str:
    return CUDA_MEMORY_MEASUREMENT if device == "cuda" else MEMORY_MEASUREMENT


def training_arguments(preset: Preset, budget: TaskBudget, seed: int,
                       output_dir: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=budget.steps,
        per_device_train_batch_size=budget.batch_size, learning_rate=budget.learning_rate,
        warmup_steps=budget.steps // 10, weight_decay=0.01, lr_scheduler_type="linear", seed=seed,
        data_seed=seed, use_cpu=preset.device == "cpu", bf16=preset.bf16, report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)


def train(model, dataset, preset: Preset, budget: TaskBudget, seed: int, output_dir: Path,
          tokens_per_step: int, trainer_class=Trainer) -> dict:
    """Fixed-step training with the stock Trainer (or SegmentMemoryTrainer, its recurrent form)
    on the preset's device; returns loss and efficiency numbers."""
    args = training_arguments(preset, budget, seed, output_dir)
    timer = StepTimer()
    trainer = without_console_callbacks(trainer_class(
        model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
        callbacks=[timer]))
    with memory_meter(preset.device) as memory:
        output = trainer.train()
    return {"train_loss": output.training_loss, **timer.throughput(tokens_per_step),
            "peak_memory_mib": memory.growth_mib, "train_seconds": output.metrics["train_runtime"]}


# --------------------------------------------------------------------------- tasks


def build_config(model_type: str, preset: Preset, max_length: int, **task_fields):
    return study_models()[model_type].config(preset.model, max_length, task_fields)


def run_classification(model_type: str, preset: Preset, budget: TaskBudget, seed: int,
                       output_dir: Path, metrics: Metrics, data: StudyData) -> dict:
    train_set, test_set = data.classification_sets(budget.max_length,
                                                   study_models()[model_type].eos_at_end)
    transformers.set_seed(seed)
    config = build_config(model_type, preset, budget.max_length, is_decoder=False, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    result = train(model, train_set, preset, budget, seed, output_dir / "classification",
                   tokens_per_step=budget.batch_size * budget.max_length)
    trainer = Trainer(model=model, args=TrainingArguments(
        output_dir=str(output_dir / "classification"),
        per_device_eval_batch_size=budget.eval_batch_size, use_cpu=preset.device == "cpu",
        report_to=[], disable_tqdm=True), data_collator=default_data_collator)
    predictions = trainer.predict(test_set, ignore_keys=unread_outputs(model))
    logits = predictions.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted, labels = logits.argmax(-1).tolist(), predictions.label_ids.tolist()
    result.update(metrics(predicted, labels))
    result["confusion_matrix"] = confusion_matrix(predicted, labels)
    result.update(train_rows=len(train_set), test_rows=len(test_set),
                  test_rows_total=data.summary["imdb_test_rows"],
                  real_token_fraction=real_token_fraction(train_set, budget.max_length))
    return result


def run_language_modeling(model_type: str, preset: Preset, budget: TaskBudget, seed: int,
                          output_dir: Path, data: StudyData) -> dict:
    tokenizer = longctx.byte_tokenizer()
    train_ids, valid_ids = (encode_whole_text(tokenizer, data.book_train),
                            encode_whole_text(tokenizer, data.book_valid))
    transformers.set_seed(seed)
    config = build_config(model_type, preset, budget.max_length, is_decoder=True)
    model = AutoModelForCausalLM.from_config(config)
    # Transformer-XL as Dai et al.: streams of segments in order, the memory carried in training
    # and in scoring (the same tokens scored as the other architectures' independent blocks).
    recurrent = trains_with_memory(model)
    train_set = stream_segments(train_ids, budget.batch_size, budget.max_length) if recurrent \
        else lm_blocks(train_ids, budget.max_length)
    result = train(model, train_set, preset, budget, seed, output_dir / "language_modeling",
                   tokens_per_step=budget.batch_size * budget.max_length,
                   trainer_class=SegmentMemoryTrainer if recurrent else Trainer)
    if recurrent:
        scores = evaluate_with_memory(model, valid_ids, budget.max_length)
        result.update(lm_scores(scores["loss"] * scores["tokens"], scores["tokens"]),
                      by_position=scores["by_position"], mem_len=config.mem_len)
    else:
        result.update(evaluate_lm(model, valid_ids, budget.max_length, budget.eval_batch_size))
    result.update(train_blocks=len(train_set), train_bytes=len(train_ids),
                  valid_bytes=len(valid_ids), valid_chars=len(data.book_valid),
                  with_memory=recurrent)
    return result


def run_architecture(model_type: str, preset: Preset, seed: int, output_dir: Path,
                     metrics: Metrics, data: StudyData) -> dict:
    """Both tasks for one architecture; a task its heads lack is skipped, a failing one recorded."""
    entry = study_models()[model_type]
    heads = entry.heads
    row = {"architecture": model_type, "classification": None, "language_modeling": None,
           "skipped": [], "errors": {}}
    tasks = {
        "classification": (CLASSIFICATION_HEAD, preset.classification,
                           lambda budget: run_classification(model_type, preset, budget, seed,
                                                             output_dir, metrics, data)),
        "language_modeling": (CAUSAL_LM_HEAD, preset.language_modeling,
                              lambda budget: run_language_modeling(model_type, preset, budget,
                                                                   seed, output_dir, data)),
    }
    for task, (head, budget, run) in tasks.items():
        if head not in heads or budget is None:
            reason = entry.missing_heads.get(head, f"no {head} head")
            row["skipped"].append(f"{task} ({reason})" if head not in heads else task)
            continue
        started = time.perf_counter()
        try:
            row[task] = run(budget)
            print(f"  {model_type} {task}: {summarize(task, row[task])} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        except Exception as error:
            traceback.print_exc()
            row["errors"][task] = f"{type(error).__name__}: {error}"
            print(f"  {model_type} {task}: FAILED ({row['errors'][task]})", flush=True)
    return row


def summarize(task: str, result: dict) -> str:
    if task == "classification":
        return (f"accuracy {result['accuracy']:.3f}, F1 {result['f1']:.3f}, "
                f"{result['tokens_per_s']:.0f} tok/s")
    return f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.3f} bits/byte, " \
           f"{result['tokens_per_s']:.0f} tok/s"


# --------------------------------------------------------------------------- report


TABLE_COLUMNS = (  # header, task, key, format
    ("architecture", None, "architecture", "{}"),
    ("accuracy", "classification", "accuracy", "{:.3f}"),
    ("F1", "classification", "f1", "{:.3f}"),
    ("perplexity", "language_modeling", "perplexity", "{:.2f}"),
    ("bits/byte", "language_modeling", "bits_per_byte", "{:.3f}"),
    ("train tok/s", "language_modeling", "tokens_per_s", "{:,.0f}"),
    ("peak mem MiB", "language_modeling", "peak_memory_mib", "{:,.1f}"),
)


def table_cells(row: dict) -> list[str]:
    """A results row's cells under TABLE_COLUMNS; "n/a" where a task was skipped or failed."""
    cells = []
    for _, task, key, fmt in TABLE_COLUMNS:
        source = row if task is None else row.get(task)
        cells.append("n/a" if source is None else fmt.format(source[key]))
    return cells


def study_table(rows: list[dict]) -> str:
    """One line per architecture."""
    return format_table([header for header, *_ in TABLE_COLUMNS],
                        [table_cells(row) for row in rows])


def table_notes(preset: Preset, metrics: Metrics, data: StudyData,
                rows: list[dict] = ()) -> list[str]:
    notes, lm, facts = [], preset.language_modeling, data.summary
    if preset.classification is not None:
        notes.append(f"accuracy, F1: IMDb test reviews from {facts['imdb_test']}, "
                     f"{scored_share(facts)}; F1 of label 1 (positive); metrics: "
                     f"{metrics.implementation}")
    if lm is not None:
        notes.append(f"perplexity, bits/byte: byte-level, on {facts['book_valid']} (a different "
                     f"book), {scored_text(facts)}, {lm.max_length}-byte blocks scored "
                     "independently")
        notes.extend(f"{row['architecture']}: trained on consecutive {lm.max_length}-byte segments "
                     "and scored segment by segment, carrying a memory of "
                     f"{row['language_modeling']['mem_len']} states"
                     for row in rows if (row.get("language_modeling") or {}).get("with_memory"))
        notes.append(f"train tok/s, peak mem: causal-LM training, {lm.batch_size} x "
                     f"{lm.max_length} tokens a step, after a warm-up step; peak mem = "
                     + memory_measurement(preset.device).split(";")[0]
                     + " (classification numbers: study_results.json)")
    notes.extend(f"{row['architecture']}: {task} skipped ({reason})" for row in rows
                 for task, reason in skip_reasons(row))
    if preset.bf16:
        notes.append(PRECISION_BF16)
    if preset.name == "smoke":
        notes.append(SMOKE_DISCLAIMER)
    return notes


def skip_reasons(row: dict) -> list[tuple[str, str]]:
    """(task, reason) of the tasks an entry of study_models says why it cannot run."""
    reasons = []
    for skipped in row.get("skipped", []):
        task, _, reason = skipped.partition(" (")
        if reason and not reason.startswith("no Auto"):
            reasons.append((task, reason.removesuffix(")")))
    return reasons


PRECISION_BF16 = ("training in bf16 mixed precision (Trainer bf16=True, fp32 weights); evaluation "
                  "in fp32")


def scored_share(facts: dict) -> str:
    scored, total = facts["imdb_test_rows_scored"], facts["imdb_test_rows"]
    if scored == total:
        return f"all {total:,} scored"
    return f"{scored:,} of {total:,} scored (the first of a seed-0 shuffle)"


def scored_text(facts: dict) -> str:
    scored, total = facts["book_valid_chars_scored"], facts["book_valid_chars"]
    return (f"all {total:,} characters" if scored == total
            else f"its first {scored:,} of {total:,} characters")


def device_summary(preset: Preset) -> str:
    if preset.device == "cuda":
        return (f"CUDA ({torch.cuda.get_device_name()})"
                + (", bf16 mixed precision" if preset.bf16 else ""))
    return f"CPU, {torch.get_num_threads()} threads"


def steps_summary(preset: Preset) -> str:
    budgets = (("classification", preset.classification), ("LM", preset.language_modeling))
    return " + ".join(f"{budget.steps} {task}" for task, budget in budgets
                      if budget is not None) + " steps each"


def warm_up(preset: Preset, output_dir: Path, data: StudyData):
    """Two steps of a tiny baseline LM, so that one-time costs of the process (thread pools,
    allocator arenas, CUDA context, Trainer set-up) do not land on the first architecture's
    numbers."""
    budget = dataclasses.replace(preset.language_modeling, steps=2, batch_size=2)
    tiny = dataclasses.replace(preset, model=dict(preset.model, hidden_size=32,
                                                  intermediate_size=32))
    run_language_modeling(WARM_UP_ARCHITECTURE, tiny, budget, seed=0, output_dir=output_dir,
                          data=data)


def override_steps(preset: Preset, max_steps: int | None) -> Preset:
    if max_steps is None:
        return preset
    if max_steps < 2:
        raise ValueError(f"max_steps={max_steps}: use at least 2 (the first step is a warm-up, "
                         "excluded from the throughput)")
    with_steps = lambda budget: (  # noqa: E731
        budget and dataclasses.replace(budget, steps=max_steps))
    return dataclasses.replace(preset, classification=with_steps(preset.classification),
                               language_modeling=with_steps(preset.language_modeling))


def select_architectures(names: str | None) -> list[str]:
    available = list(study_models())
    if not names:
        return available
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; available: {', '.join(available)}")
    return chosen


RESULTS_FILE = "study_results.json"


def run_study(preset: str | Preset = "smoke", output_dir: str | os.PathLike = "runs/study",
              max_steps: int | None = None, seed: int = 42, architectures: str | None = None,
              data_dir: str | os.PathLike | None = None, resume: bool = False,
              overwrite: bool = False) -> dict:
    """Runs every (selected) architecture, prints the table, writes `study_results.json`.

    `preset` is a name in PRESETS or a Preset; `data_dir` (laid out like ../shared/data) feeds
    a real-data preset. Raises ValueError, before any training, when the preset's device or data
    is missing. The results file is rewritten after each architecture, so a stopped run keeps
    what it finished; `resume=True` keeps the rows without errors of the file already in
    `output_dir` (same preset, data and seed, else ValueError) and runs only the others.
    Without either, an `output_dir` that has a results file is refused (ValueError) unless
    `overwrite=True`."""
    started = time.perf_counter()
    chosen_preset = override_steps(resolve_preset(preset), max_steps)
    names = select_architectures(architectures)
    check_device(chosen_preset)
    output_dir = Path(output_dir)
    path = output_dir / RESULTS_FILE
    settings = {"preset": {**dataclasses.asdict(chosen_preset),
                           "data_dir": None if data_dir is None else str(Path(data_dir).resolve())},
                "seed": seed}
    if not resume:
        refuse_earlier_results(path, overwrite)
    kept, earlier_seconds = finished_rows(path, settings) if resume else ({}, 0.0)
    data = load_study_data(chosen_preset, data_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    to_run = [name for name in names if name not in kept]
    print(f"longctx study, preset {chosen_preset.name!r}: {chosen_preset.description}; "
          f"{len(names)} architecture(s); {steps_summary(chosen_preset)}; "
          f"{device_summary(chosen_preset)}", flush=True)
    for name in kept:
        print(f"  {name}: kept from {path} (--resume)", flush=True)
    if to_run and chosen_preset.language_modeling is not None:
        warm_up(chosen_preset, output_dir / "trainer" / "warm-up", data)
    rows = dict(kept)

    def save() -> dict:
        results = study_results(settings, chosen_preset, data, metrics, rows,
                                earlier_seconds + time.perf_counter() - started)
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return results

    for name in to_run:
        rows[name] = {**run_architecture(name, chosen_preset, seed, output_dir / "trainer" / name,
                                         metrics, data),
                      "environment": environment(chosen_preset.device),
                      "command": command_line()}
        save()
    results = save()
    print()
    print(study_table(results["results"]))
    for note in table_notes(chosen_preset, metrics, data, results["results"]):
        print("  " + note)
    plots = write_study_plots(results["results"], output_dir)  # this run's: redrawn
    print(f"  {plots}" if isinstance(plots, str) else f"  plots: {', '.join(map(str, plots))}")
    print(f"results: {path} ({results['wall_seconds']:.0f} s)", flush=True)
    return results


def refuse_earlier_results(path: Path, overwrite: bool) -> None:
    """A finished (or stopped) study's results are never replaced unasked."""
    if path.exists() and not overwrite:
        raise ValueError(f"{path} holds an earlier study's results; pass another --output_dir, "
                         f"--resume to go on with it, or --overwrite_output_dir to replace it")


def finished_rows(path: Path, settings: dict) -> tuple[dict, float]:
    """The rows without errors of an earlier results file written with the same settings, by
    architecture, and the seconds that run took; nothing when there is no file yet."""
    if not path.exists():
        return {}, 0.0
    earlier = json.loads(path.read_text(encoding="utf-8"))
    for key, value in settings.items():
        if _without_prose(earlier.get(key)) != _without_prose(value):
            raise ValueError(f"resume: {path} was written with a different {key} "
                             f"({earlier.get(key)!r}, this run: {value!r}); pass another "
                             "output_dir, or run without resume to overwrite it")
    rows = {row["architecture"]: row for row in earlier["results"] if not row["errors"]}
    return rows, earlier.get("wall_seconds", 0.0)


def _without_prose(setting):
    """A preset's description is prose, rewritten as measurements come in: not part of what
    must match."""
    return ({k: v for k, v in setting.items() if k != "description"}
            if isinstance(setting, dict) else setting)


def study_results(settings: dict, preset: Preset, data: StudyData, metrics: Metrics, rows: dict,
                  wall_seconds: float) -> dict:
    """What study_results.json holds: the settings, and one row per architecture in the order of
    the study's models (study_models), each with the environment and command that ran it (a
    resumed study may span machines)."""
    order = list(study_models())
    return {
        **settings, "command": command_line(), "environment": environment(preset.device),
        "data": data.summary,
        "metric_implementation": metrics.implementation,
        "evaluate_unavailable_reason": metrics.unavailable_reason,
        "memory_measurement": memory_measurement(preset.device)
                              + "; after a 2-step warm-up training of a tiny baseline",
        "throughput_measurement": "tokens per optimizer step (batch x sequence length, padding "
                                  "included for classification) over the steps after the first, "
                                  "timed at Trainer step ends",
        "precision": PRECISION_BF16 if preset.bf16 else "fp32",
        "note": SMOKE_DISCLAIMER if preset.name == "smoke" else "",
        "wall_seconds": wall_seconds,
        "results": sorted(rows.values(), key=lambda row: order.index(row["architecture"])
                          if row["architecture"] in order else len(order)),
    }

