"""Extractive question answering (SQuAD v1.1) with the stock Trainer, in transformers'
`examples/pytorch` style: long contexts in windows of --max_seq_length tokens sharing
--doc_stride, n-best span post-processing, and the official v1.1 exact match and F1.

    # with the Hub: the real train / validation splits
    python scripts/run_qa.py --model_type longctx-longformer --dataset_name squad \
        --max_seq_length 512 --output_dir runs/squad --do_train --do_eval
    # offline: an official SQuAD JSON (.json or .json.gz) split BY ARTICLE (the last N evaluate)
    python scripts/run_qa.py --model_type longctx-transformer \
        --squad_file ../shared/data/squad/dev-v1.1.json.gz \
        --eval_articles 10 --output_dir runs/squad --do_train --do_eval

Writes train_results.json, eval_results.json (exact_match, f1), all_results.json and
eval_predictions.json in --output_dir; honours --push_to_hub; runs unchanged under
`accelerate launch`. The logic lives in `longctx/question_answering.py` (windows, labels,
spans), `longctx/experiments/squad.py` (files) and `longctx/experiments/metrics.py` (the
official metric).
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets
from transformers import AutoModelForQuestionAnswering, HfArgumentParser, Trainer, TrainingArguments

from longctx.experiments.metrics import SquadMetric
from longctx.question_answering import best_spans, prepare_features, training_labels
from longctx.experiments.run_common import (
    DataArguments,
    ModelArguments,
    OutputArguments,
    build_model,
    data_source,
    evaluation_split,
    finish,
    load_raw_datasets,
    load_tokenizer,
    prepare_output_dir,
    require_columns,
    sample,
    unread_outputs,
)
from longctx.experiments.squad import check_answer_offsets, read_squad_file, split_by_article

COLUMNS = ("id", "question", "context", "answers")


@dataclass
class QADataArguments(DataArguments):
    squad_file: str | None = field(default=None, metadata={
        "help": "An official SQuAD v1.1 JSON file (.json or .json.gz), split by article with "
                "--eval_articles."})
    eval_articles: int = field(default=10, metadata={
        "help": "With --squad_file: the last N articles evaluate."})
    doc_stride: int = field(default=128, metadata={
        "help": "Context tokens shared by consecutive windows."})
    n_best_size: int = field(default=20, metadata={"help": "Start/end candidates per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per window."})

    source_arguments = ("dataset_name", "train_file", "validation_file", "squad_file")


def raw_splits(data_args) -> dict:
    if data_args.squad_file is None:
        return load_raw_datasets(data_args)
    train, held_out = split_by_article(read_squad_file(data_args.squad_file),
                                       data_args.eval_articles)
    return {"train": datasets.Dataset.from_list(train),
            "validation": datasets.Dataset.from_list(held_out)}


def checked_examples(raw, split: str, count, seed: int, data_args):
    """`count` examples of the split drawn with `seed`, every answer offset checked (whatever the
    source: the same check as --squad_file's)."""
    require_columns(raw[split], COLUMNS, "use SQuAD's layout (id, question, context, answers)")
    examples, numbers = sample(raw[split], count, seed)
    check_answer_offsets(examples, numbers, data_source(data_args, split))
    return examples


def train_features(examples, tokenizer, data_args):
    features = prepare_features(tokenizer, examples["question"], examples["context"],
                                data_args.max_seq_length, data_args.doc_stride)
    features["start_positions"], features["end_positions"] = training_labels(features,
                                                                             examples["answers"])
    del features["example_index"], features["offset_mapping"]
    return features


def eval_features(examples, tokenizer, data_args):
    features = prepare_features(tokenizer, examples["question"], examples["context"],
                                data_args.max_seq_length, data_args.doc_stride)
    features["example_id"] = [examples["id"][i] for i in features.pop("example_index")]
    return features


def predictions_from_logits(examples, features, start_logits, end_logits,
                            data_args) -> list[dict]:
    """The best span of every example from the logits of all its windows."""
    windows = {}
    for index, example_id in enumerate(features["example_id"]):
        windows.setdefault(example_id, []).append(index)
    predictions = []
    for example in examples:
        rows = windows.get(example["id"], [])
        best = best_spans(start_logits[rows], end_logits[rows],
                          [features["offset_mapping"][i] for i in rows], example["context"],
                          max_answer_len=data_args.max_answer_length,
                          n_best=data_args.n_best_size)
        predictions.append({"id": example["id"], "prediction_text": best[0]["answer"]})
    return predictions


def evaluate(trainer, examples, tokenizer, data_args, metric):
    features = examples.map(eval_features, fn_kwargs=dict(tokenizer=tokenizer, data_args=data_args),
                            batched=True, remove_columns=examples.column_names)
    model_inputs = features.remove_columns(["example_id", "offset_mapping"])
    output = trainer.predict(model_inputs, metric_key_prefix="eval",
                             ignore_keys=unread_outputs(trainer.model))
    start_logits, end_logits = output.predictions[:2]
    predictions = predictions_from_logits(examples, features, start_logits, end_logits, data_args)
    references = [{"id": e["id"], "answers": e["answers"]} for e in examples]
    metrics = {f"eval_{name}": value for name, value in metric(predictions, references).items()}
    metrics.update(eval_samples=len(examples), eval_features=len(features),
                   eval_metric_implementation=metric.implementation)
    return metrics, predictions


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, QADataArguments, TrainingArguments,
                               OutputArguments))
    model_args, data_args, training_args, output_args = parser.parse_args_into_dataclasses(argv)
    prepare_output_dir(training_args.output_dir, output_args.overwrite_output_dir)
    raw = raw_splits(data_args)
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args, AutoModelForQuestionAnswering, tokenizer)
    kwargs = dict(fn_kwargs=dict(tokenizer=tokenizer, data_args=data_args), batched=True)
    train = None
    if training_args.do_train:
        examples = checked_examples(raw, "train", data_args.max_train_samples,
                                    training_args.seed, data_args)
        train = examples.map(train_features, remove_columns=examples.column_names, **kwargs)
    trainer = Trainer(model=model, args=training_args, train_dataset=train,
                      processing_class=tokenizer)
    train_result = trainer.train() if training_args.do_train else None
    eval_metrics = None
    if training_args.do_eval:
        examples = checked_examples(raw, evaluation_split(raw), data_args.max_eval_samples,
                                    training_args.seed, data_args)
        eval_metrics, predictions = evaluate(trainer, examples, tokenizer, data_args, SquadMetric())
        if trainer.is_world_process_zero():
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(training_args.output_dir) / "eval_predictions.json").write_text(
                json.dumps({p["id"]: p["prediction_text"] for p in predictions}, indent=1,
                           ensure_ascii=False),
                encoding="utf-8")
    finish(trainer, train_result, eval_metrics, task="question_answering", data_args=data_args,
           push_kwargs={"finetuned_from": model_args.model_name_or_path,
                        "tasks": "question-answering"})


if __name__ == "__main__":
    main()
