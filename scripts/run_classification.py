"""Sequence classification (IMDb by default) with the stock Trainer, in transformers'
`examples/pytorch` style: accuracy, precision, recall and F1 of label 1.

    # with the Hub
    python scripts/run_classification.py --model_type longctx-longformer --dataset_name imdb \
        --max_seq_length 1024 --output_dir runs/imdb --do_train --do_eval
    # offline, on local files (parquet, csv, json/jsonl with "text" and "label" columns)
    python scripts/run_classification.py --model_type longctx-transformer \
        --config_overrides "hidden_size=256,num_hidden_layers=4" \
        --train_file ../shared/data/imdb/train.parquet \
        --validation_file ../shared/data/imdb/test.parquet \
        --output_dir runs/imdb --do_train --do_eval

Writes train_results.json, eval_results.json and all_results.json in --output_dir; honours
--push_to_hub; runs unchanged under `accelerate launch`. The logic lives in
`longctx/experiments/run_common.py` and `longctx/experiments/metrics.py`.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from longctx.experiments.metrics import Metrics
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


@dataclass
class ClassificationDataArguments(DataArguments):
    text_column_name: str = field(default="text", metadata={
        "help": "The column holding the text."})
    label_column_name: str = field(default="label", metadata={
        "help": "The column holding 0/1 labels."})


def tokenized(dataset, tokenizer, data_args, close_with_eos: bool = False):
    """`close_with_eos`: each row cut one token short and ended with the tokenizer's </s> --
    an encoder-decoder classifier (T5ForSequenceClassification) pools the state at the last
    </s> and refuses rows without one. A tokenizer whose template already ends rows with </s>
    (a trained BPE) gets no second one."""
    eos = tokenizer.eos_token_id

    def encode(batch):
        limit = data_args.max_seq_length - int(close_with_eos)
        encoded = tokenizer(batch[data_args.text_column_name], truncation=True, max_length=limit)
        if close_with_eos:
            missing = [not ids or ids[-1] != eos for ids in encoded["input_ids"]]
            encoded["input_ids"] = [ids + [eos] * add
                                    for ids, add in zip(encoded["input_ids"], missing)]
            encoded["attention_mask"] = [mask + [1] * add
                                         for mask, add in zip(encoded["attention_mask"], missing)]
        encoded["labels"] = batch[data_args.label_column_name]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def checked_rows(raw, split: str, count, seed: int, data_args):
    """`count` rows of the split drawn with `seed`, refused with the file row that is wrong: a
    label other than the integers 0/1 (1.0 and True pass a 0/1 test, then break the loss), or a
    text that is missing or empty (the tokenizer's own error names no row)."""
    require_columns(raw[split], [data_args.text_column_name, data_args.label_column_name],
                    "name them with --text_column_name / --label_column_name")
    dataset, numbers = sample(raw[split], count, seed)
    source = data_source(data_args, split)
    check_label_type(dataset, numbers, data_args.label_column_name, source)
    texts, labels = dataset[data_args.text_column_name], dataset[data_args.label_column_name]
    for number, text, label in zip(numbers, texts, labels):
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"{source}: row {number} has label {label!r} "
                             f"({type(label).__name__}) in column "
                             f"{data_args.label_column_name!r}: this script trains binary "
                             f"classifiers (0/1); drop or map other labels (IMDb's unlabelled "
                             f"rows are -1)")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: row {number} has text {text!r} in column "
                             f"{data_args.text_column_name!r}: drop the row or give it its text")
    return dataset


def check_label_type(dataset, numbers, column: str, source: str):
    """Integer labels only: a float or bool column (even of 0.0/1.0) gives the loss labels of
    the wrong dtype, and training dies with a shape error far from the file."""
    dtype = getattr(dataset.features[column], "dtype", None)
    if len(dataset) and dtype is not None and not dtype.startswith(("int", "uint")):
        raise ValueError(f"{source}: column {column!r} holds {dtype} labels (row {numbers[0]}: "
                         f"{dataset[0][column]!r}); write them as the integers 0 and 1 (1, not "
                         f"1.0 or true)")


def require_both_classes(dataset, column: str, source: str, count):
    """A classifier trained on one class learns nothing and still scores 1.0 on that class;
    transformers' run_classification refuses such a training set too."""
    labels = set(dataset[column])
    if len(labels) < 2:
        drawn = (f", {len(dataset)} rows drawn by --max_train_samples {count}"
                 if count is not None and count <= len(dataset) else "")
        raise ValueError(f"{source}: every training row has label {sorted(labels)}{drawn}; a "
                         f"classifier needs both classes: give training data with labels 0 and "
                         f"1{' (or a larger --max_train_samples)' if drawn else ''}")


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, ClassificationDataArguments, TrainingArguments,
                               OutputArguments))
    model_args, data_args, training_args, output_args = parser.parse_args_into_dataclasses(argv)
    prepare_output_dir(training_args.output_dir, output_args.overwrite_output_dir)
    raw = load_raw_datasets(data_args)
    tokenizer = load_tokenizer(model_args)
    model = build_model(model_args, AutoModelForSequenceClassification, tokenizer, num_labels=2)
    train = eval_set = None
    if training_args.do_train:
        train = checked_rows(raw, "train", data_args.max_train_samples, training_args.seed,
                             data_args)
        require_both_classes(train, data_args.label_column_name, data_source(data_args, "train"),
                             data_args.max_train_samples)
        train = tokenized(train, tokenizer, data_args, model.config.is_encoder_decoder)
    if training_args.do_eval:
        eval_set = checked_rows(raw, evaluation_split(raw), data_args.max_eval_samples,
                                training_args.seed, data_args)
        eval_set = tokenized(eval_set, tokenizer, data_args, model.config.is_encoder_decoder)
    metrics = Metrics()

    def compute_metrics(prediction):
        logits = (prediction.predictions[0] if isinstance(prediction.predictions, tuple)
                  else prediction.predictions)
        return metrics(np.argmax(logits, axis=-1), prediction.label_ids)

    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=eval_set,
                      processing_class=tokenizer, compute_metrics=compute_metrics)
    train_result = trainer.train() if training_args.do_train else None
    eval_metrics = (trainer.evaluate(ignore_keys=unread_outputs(model)) if training_args.do_eval
                    else None)
    if eval_metrics is not None:
        eval_metrics["eval_metric_implementation"] = metrics.implementation
        eval_metrics["eval_samples"] = len(eval_set)
    finish(trainer, train_result, eval_metrics, task="classification", data_args=data_args,
           push_kwargs={"finetuned_from": model_args.model_name_or_path,
                        "tasks": "text-classification"})


if __name__ == "__main__":
    main()
