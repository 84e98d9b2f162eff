"""The seed study: every architecture in `longctx.ARCHITECTURES`, one size, one budget.

For each architecture (skipping a task whose head it lacks):

1. IMDb sample classification -- an encoder with `AutoModelForSequenceClassification`, trained
   with the stock `transformers.Trainer`, scored on the test sample (accuracy, precision,
   recall, F1 of the positive class);
2. byte-level language modelling on a book excerpt -- a decoder with `AutoModelForCausalLM`,
   scored on a different book (perplexity and bits per byte);
3. efficiency of both trainings: tokens per second after a warm-up step, and the peak growth
   of the process's resident memory while training.

`run_study` returns the results, prints one comparison table and writes `study_results.json`.
Only the "smoke" preset exists today: tiny shipped samples, a few minutes on 2 CPU cores, a
check that everything runs end to end -- its accuracies are not results.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import platform
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

import longctx
from .language_modeling import evaluate_lm, lm_blocks
from .metrics import Metrics

CLASSIFICATION_HEAD = "AutoModelForSequenceClassification"
CAUSAL_LM_HEAD = "AutoModelForCausalLM"
WARM_UP_ARCHITECTURE = "longctx-transformer"  # the dense baseline
SMOKE_DISCLAIMER = ("The smoke preset is a plumbing check on tiny samples (400 training reviews, "
                    "~59 KB of text, a few dozen steps): its accuracy and perplexity are not results.")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class TaskBudget:
    max_length: int  # tokens per sequence (classification: truncated/padded; LM: block size)
    batch_size: int
    steps: int
    learning_rate: float
    eval_batch_size: int = 32


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # Fields every architecture's config takes (configuration_common.py); one size for all.
    model: dict = field(default_factory=dict)
    classification: TaskBudget | None = None
    language_modeling: TaskBudget | None = None


PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="tiny shipped samples (longctx/samples), a few minutes on 2 CPU cores",
        # No attention dropout: on CPU, SDPA with dropout falls back to its slow math kernel
        # (about 5x slower here), which would swamp what the throughput column compares.
        model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                   attention_probs_dropout_prob=0.0),
        classification=TaskBudget(max_length=512, batch_size=8, steps=40, learning_rate=1e-3),
        language_modeling=TaskBudget(max_length=512, batch_size=8, steps=40, learning_rate=1e-3),
    ),
}


# --------------------------------------------------------------------------- data


def samples_dir() -> Path:
    return Path(longctx.__file__).parent / "samples"


def load_imdb(split: str) -> list[dict]:
    """Rows {"text", "label"} of the shipped IMDb sample ("train" or "test")."""
    with open(samples_dir() / f"imdb_{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_book(split: str) -> str:
    """The shipped book excerpt ("train": Emma, "valid": Sense and Sensibility)."""
    return (samples_dir() / f"book_{split}.txt").read_text(encoding="utf-8")


def classification_dataset(rows: list[dict], tokenizer, max_length: int):
    """Tokenized, truncated and padded to `max_length` (one shape for every architecture)."""
    import datasets

    encoded = tokenizer([row["text"] for row in rows], truncation=True, max_length=max_length,
                        padding="max_length")
    return datasets.Dataset.from_dict({"input_ids": encoded["input_ids"],
                                       "attention_mask": encoded["attention_mask"],
                                       "labels": [int(row["label"]) for row in rows]})


def byte_ids(text: str, tokenizer) -> list[int]:
    """The text's UTF-8 bytes as token ids, without <s>/</s>."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- metrics


# --------------------------------------------------------------------------- efficiency


class StepTimer(TrainerCallback):
    """Time at the end of every optimizer step; the first step is the warm-up."""

    def __init__(self):
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def throughput(self, tokens_per_step: int) -> dict:
        measured = len(self.step_ends) - 1
        if measured < 1:
            raise RuntimeError("throughput needs at least 2 training steps (the first is a warm-up)")
        seconds = self.step_ends[-1] - self.step_ends[0]
        return {"tokens_per_s": tokens_per_step * measured / seconds, "measured_steps": measured,
                "measured_seconds": seconds, "tokens_per_step": tokens_per_step}


def release_free_memory():
    """Collects garbage and hands the C heap's free pages back to the OS (glibc `malloc_trim`),
    so that memory freed by an earlier training does not hide this one's growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may be understated after earlier runs
        pass


class PeakRSS:
    """Peak growth of this process's resident set size over the `with` block, in MiB, sampled
    every `interval` seconds by a background thread (and at entry and exit)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.process = psutil.Process()
        self._stop = threading.Event()

    def __enter__(self):
        release_free_memory()
        self.baseline = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.growth_mib = (self.peak - self.baseline) / 2**20
        return False


MEMORY_MEASUREMENT = ("peak growth of the process resident set size (psutil, sampled every 5 ms) during "
                      "Trainer.train(), over the RSS just before it; includes gradients, optimizer state, "
                      "activations and allocator overhead")


def train(model, dataset, budget: TaskBudget, seed: int, output_dir: Path, tokens_per_step: int) -> dict:
    """Fixed-step training with the stock Trainer on CPU; returns loss and efficiency numbers."""
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=budget.steps, per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.learning_rate, warmup_steps=budget.steps // 10, weight_decay=0.01,
        lr_scheduler_type="linear", seed=seed, data_seed=seed, use_cpu=True, report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[timer])
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    with PeakRSS() as memory:
        output = trainer.train()
    return {"train_loss": output.training_loss, **timer.throughput(tokens_per_step),
            "peak_memory_mib": memory.growth_mib, "train_seconds": output.metrics["train_runtime"]}


# --------------------------------------------------------------------------- tasks


def build_config(model_type: str, preset: Preset, max_length: int, **task_fields):
    return AutoConfig.for_model(model_type, **preset.model, max_position_embeddings=max_length, **task_fields)


def run_classification(model_type: str, preset: Preset, budget: TaskBudget, seed: int, output_dir: Path,
                       metrics: Metrics) -> dict:
    tokenizer = longctx.byte_tokenizer(model_max_length=budget.max_length)
    train_set = classification_dataset(load_imdb("train"), tokenizer, budget.max_length)
    test_set = classification_dataset(load_imdb("test"), tokenizer, budget.max_length)
    transformers.set_seed(seed)
    config = build_config(model_type, preset, budget.max_length, is_decoder=False, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    result = train(model, train_set, budget, seed, output_dir / "classification",
                   tokens_per_step=budget.batch_size * budget.max_length)
    trainer = Trainer(model=model, args=TrainingArguments(
        output_dir=str(output_dir / "classification"), per_device_eval_batch_size=budget.eval_batch_size,
        use_cpu=True, report_to=[], disable_tqdm=True), data_collator=default_data_collator)
    predictions = trainer.predict(test_set)
    predicted = predictions.predictions.argmax(-1).tolist()
    result.update(metrics(predicted, predictions.label_ids.tolist()))
    result.update(train_rows=len(train_set), test_rows=len(test_set),
                  real_token_fraction=sum(map(sum, train_set["attention_mask"])) / (len(train_set) * budget.max_length))
    return result


def run_language_modeling(model_type: str, preset: Preset, budget: TaskBudget, seed: int, output_dir: Path) -> dict:
    tokenizer = longctx.byte_tokenizer(model_max_length=10**9)  # whole books, chunked below
    train_ids, valid_ids = byte_ids(load_book("train"), tokenizer), byte_ids(load_book("valid"), tokenizer)
    train_set = lm_blocks(train_ids, budget.max_length)
    transformers.set_seed(seed)
    config = build_config(model_type, preset, budget.max_length, is_decoder=True)
    model = AutoModelForCausalLM.from_config(config)
    result = train(model, train_set, budget, seed, output_dir / "language_modeling",
                   tokens_per_step=budget.batch_size * budget.max_length)
    result.update(evaluate_lm(model, valid_ids, budget.max_length, budget.eval_batch_size))
    result.update(train_blocks=len(train_set), train_bytes=len(train_ids), valid_bytes=len(valid_ids))
    return result


def run_architecture(model_type: str, preset: Preset, seed: int, output_dir: Path, metrics: Metrics) -> dict:
    """Both tasks for one architecture; a task its heads lack is skipped, a failing one recorded."""
    heads = longctx.ARCHITECTURES[model_type].heads
    row = {"architecture": model_type, "classification": None, "language_modeling": None,
           "skipped": [], "errors": {}}
    tasks = {
        "classification": (CLASSIFICATION_HEAD, preset.classification,
                           lambda budget: run_classification(model_type, preset, budget, seed, output_dir, metrics)),
        "language_modeling": (CAUSAL_LM_HEAD, preset.language_modeling,
                              lambda budget: run_language_modeling(model_type, preset, budget, seed, output_dir)),
    }
    for task, (head, budget, run) in tasks.items():
        if head not in heads or budget is None:
            row["skipped"].append(f"{task} (no {head} head)" if head not in heads else task)
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
        return f"accuracy {result['accuracy']:.3f}, F1 {result['f1']:.3f}, {result['tokens_per_s']:.0f} tok/s"
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


def format_table(rows: list[dict]) -> str:
    """One line per architecture; "n/a" where a task was skipped or failed."""
    cells = [[header for header, *_ in TABLE_COLUMNS]]
    for row in rows:
        line = []
        for _, task, key, fmt in TABLE_COLUMNS:
            source = row if task is None else row.get(task)
            line.append("n/a" if source is None else fmt.format(source[key]))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    render = lambda line: " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)  # noqa: E731
                                     for i, (cell, w) in enumerate(zip(line, widths)))
    return "\n".join([render(cells[0]), "-+-".join("-" * w for w in widths), *map(render, cells[1:])])


def table_notes(preset: Preset, metrics: Metrics) -> list[str]:
    lm = preset.language_modeling
    return [
        f"accuracy, F1: IMDb sample test set, F1 of label 1 (positive); metrics: {metrics.implementation}",
        f"perplexity, bits/byte: byte-level, on book_valid.txt (a different book), {lm.max_length}-byte blocks "
        "scored independently",
        f"train tok/s, peak mem: causal-LM training, {lm.batch_size} x {lm.max_length} tokens a step, "
        "after a warm-up step; peak mem = " + MEMORY_MEASUREMENT.split(";")[0]
        + " (classification numbers: study_results.json)",
        SMOKE_DISCLAIMER if preset.name == "smoke" else "",
    ]


def environment() -> dict:
    return {"device": "cpu", "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "longctx": longctx.__version__,
            "platform": platform.platform()}


def warm_up(preset: Preset, output_dir: Path):
    """Two steps of a tiny baseline LM, so that one-time costs of the process (thread pools,
    allocator arenas, Trainer set-up) do not land on the first architecture's numbers."""
    budget = dataclasses.replace(preset.language_modeling, steps=2, batch_size=2)
    tiny = dataclasses.replace(preset, model=dict(preset.model, hidden_size=32, intermediate_size=32))
    run_language_modeling(WARM_UP_ARCHITECTURE, tiny, budget, seed=0, output_dir=output_dir)


def override_steps(preset: Preset, max_steps: int | None) -> Preset:
    if max_steps is None:
        return preset
    if max_steps < 2:
        raise ValueError(f"max_steps={max_steps}: use at least 2 (the first step is a warm-up, "
                         "excluded from the throughput)")
    with_steps = lambda budget: budget and dataclasses.replace(budget, steps=max_steps)  # noqa: E731
    return dataclasses.replace(preset, classification=with_steps(preset.classification),
                               language_modeling=with_steps(preset.language_modeling))


def select_architectures(names: str | None) -> list[str]:
    available = list(longctx.ARCHITECTURES)
    if not names:
        return available
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; available: {', '.join(available)}")
    return chosen


def run_study(preset: str = "smoke", output_dir: str | os.PathLike = "runs/study", max_steps: int | None = None,
              seed: int = 42, architectures: str | None = None) -> dict:
    """Runs every (selected) architecture, prints the table, writes `study_results.json`."""
    started = time.perf_counter()
    chosen_preset = override_steps(PRESETS[preset], max_steps)
    names = select_architectures(architectures)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    print(f"longctx study, preset {preset!r}: {chosen_preset.description}; {len(names)} architecture(s); "
          f"{chosen_preset.classification.steps} classification + {chosen_preset.language_modeling.steps} "
          f"LM steps each; CPU, {torch.get_num_threads()} threads", flush=True)
    if WARM_UP_ARCHITECTURE in longctx.ARCHITECTURES and chosen_preset.language_modeling is not None:
        warm_up(chosen_preset, output_dir / "trainer" / "warm-up")
    rows = [run_architecture(name, chosen_preset, seed, output_dir / "trainer" / name, metrics) for name in names]
    results = {
        "preset": dataclasses.asdict(chosen_preset), "seed": seed, "environment": environment(),
        "metric_implementation": metrics.implementation,
        "evaluate_unavailable_reason": metrics.unavailable_reason,
        "memory_measurement": MEMORY_MEASUREMENT + "; after a 2-step warm-up training of a tiny baseline",
        "throughput_measurement": "tokens per optimizer step (batch x sequence length, padding included for "
                                  "classification) over the steps after the first, timed at Trainer step ends",
        "note": SMOKE_DISCLAIMER if preset == "smoke" else "",
        "wall_seconds": time.perf_counter() - started, "results": rows,
    }
    path = output_dir / "study_results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print(format_table(rows))
    for note in filter(None, table_notes(chosen_preset, metrics)):
        print("  " + note)
    print(f"results: {path} ({results['wall_seconds']:.0f} s)", flush=True)
    return results


def failed(results: dict) -> bool:
    return any(row["errors"] for row in results["results"])
