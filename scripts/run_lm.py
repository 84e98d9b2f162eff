"""Language modelling on long documents (the Gutenberg books by default) with the stock Trainer,
in transformers' `examples/pytorch` style: causal LM (or masked LM with --mlm) trained on blocks
of --max_seq_length tokens, evaluated on a held-out text for perplexity, bits per byte and per
character, and the loss by position in the evaluated block (--eval_block_size: how much longer
context helps). Transformer-XL with mem_len > 0 trains as Dai et al.: the text in
--per_device_train_batch_size contiguous streams, segments in order, each step carrying the
memory the previous one returned (one process); it is evaluated segment by segment with memory.

    python scripts/run_lm.py --model_type longctx-longformer \
        --config_overrides "attention_window=256" \
        --train_file ../shared/data/books/austen-emma.txt \
        --validation_file ../shared/data/books/austen-sense.txt \
        --max_seq_length 1024 --output_dir runs/lm --do_train --do_eval
    python scripts/run_lm.py --model_type longctx-linformer --mlm ...   # bidirectional: masked LM

Text files (.txt) are read whole; tabular files and Hub datasets (--dataset_name) are joined row
by row from --text_column_name. Writes train_results.json, eval_results.json and
all_results.json; honours --push_to_hub; runs unchanged under `accelerate launch`. The logic
lives in `longctx/experiments/language_modeling.py` and `longctx/experiments/run_common.py`.
"""

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from longctx.experiments.language_modeling import (
    SegmentMemoryTrainer,
    evaluate_lm,
    evaluate_with_memory,
    lm_blocks,
    lm_scores,
    memory_versus_recompute,
    stream_segments,
    trains_with_memory,
)
from longctx.experiments.run_common import (
    DataArguments,
    ModelArguments,
    OutputArguments,
    build_model,
    encode_whole_text,
    evaluation_split,
    finish,
    load_raw_datasets,
    load_tokenizer,
    prepare_output_dir,
)


@dataclass
class LMDataArguments(DataArguments):
    text_column_name: str = field(default="text", metadata={
        "help": "The text column of tabular or Hub data."})
    mlm: bool = field(default=False, metadata={
        "help": "Masked LM (encoders; Linformer) instead of causal LM."})
    mlm_probability: float = field(default=0.15, metadata={
        "help": "With --mlm: the share of tokens masked."})
    eval_block_size: int | None = field(default=None, metadata={
        "help": "Causal LM: tokens per evaluated block (default --max_seq_length); the loss is "
                "reported by position in the block."})
    recompute_comparison_tokens: int = field(default=0, metadata={
        "help": "Transformer-XL: also score the first N tokens the vanilla way (a fresh forward "
                "over mem_len + max_seq_length tokens per token) and report both perplexities and "
                "the slowdown."})
    max_train_chars: int | None = field(default=None, metadata={
        "help": "Use the first N characters of training text."})
    max_eval_chars: int | None = field(default=None, metadata={
        "help": "Use the first N characters of evaluation text."})


def read_text(data_args, split: str) -> str:
    """One split's text: a .txt file whole, else the rows of the text column joined."""
    path = {"train": data_args.train_file, "validation": data_args.validation_file}.get(split)
    if path is not None and Path(path).suffix == ".txt":
        return Path(path).read_text(encoding="utf-8")
    raw = load_raw_datasets(data_args)
    name = split if split == "train" else evaluation_split(raw)
    if data_args.text_column_name not in raw[name].column_names:
        raise ValueError(f"the {name} data has no column {data_args.text_column_name!r} "
                         f"({raw[name].column_names}); name it with --text_column_name")
    return "\n\n".join(raw[name][data_args.text_column_name])


def clipped(text: str, limit: int | None) -> str:
    return text if limit is None else text[:limit]


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, LMDataArguments, TrainingArguments,
                               OutputArguments))
    model_args, data_args, training_args, output_args = parser.parse_args_into_dataclasses(argv)
    prepare_output_dir(training_args.output_dir, output_args.overwrite_output_dir)
    tokenizer = load_tokenizer(model_args)
    auto_class, task_fields = ((AutoModelForMaskedLM, {}) if data_args.mlm
                               else (AutoModelForCausalLM, {"is_decoder": True}))
    model = build_model(model_args, auto_class, tokenizer,
                        **(task_fields if model_args.model_type else {}))
    encode = lambda text: encode_whole_text(tokenizer, text)  # noqa: E731
    train, trainer_class = None, Trainer
    if training_args.do_train:
        ids = encode(clipped(read_text(data_args, "train"), data_args.max_train_chars))
        if trains_with_memory(model):  # Transformer-XL: segments in order, the memory carried
            train = stream_segments(ids, training_args.per_device_train_batch_size,
                                    data_args.max_seq_length)
            trainer_class = SegmentMemoryTrainer
        else:
            train = lm_blocks(ids, data_args.max_seq_length)
        if len(train) == 0:
            raise ValueError(f"the training text is shorter than one block of --max_seq_length "
                             f"{data_args.max_seq_length} tokens")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True,
                                               mlm_probability=data_args.mlm_probability) \
        if data_args.mlm else None
    trainer = trainer_class(model=model, args=training_args, train_dataset=train,
                            data_collator=collator, processing_class=tokenizer)
    train_result = trainer.train() if training_args.do_train else None
    eval_metrics = None
    if training_args.do_eval:
        text = clipped(read_text(data_args, "validation"), data_args.max_eval_chars)
        eval_metrics = evaluate(trainer, encode(text), len(text), data_args, training_args)
    finish(trainer, train_result, eval_metrics, task="language_modeling", data_args=data_args,
           push_kwargs={"finetuned_from": model_args.model_name_or_path,
                        "tasks": "fill-mask" if data_args.mlm else "text-generation"})


def evaluate(trainer, ids, num_characters, data_args, training_args) -> dict:
    if data_args.mlm:  # masked LM: the collator's random masks over blocks of the held-out text
        metrics = trainer.evaluate(lm_blocks(ids, data_args.max_seq_length))
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
        return metrics
    # Transformer-XL: segments carrying memory
    if getattr(trainer.model.config, "mem_len", None) is not None:
        return evaluate_with_memory_metrics(trainer.model, ids, num_characters, data_args)
    block_size = data_args.eval_block_size or data_args.max_seq_length
    scores = evaluate_lm(trainer.model, ids, block_size, training_args.per_device_eval_batch_size,
                         num_characters)
    metrics = {f"eval_{name}": value for name, value in scores.items() if name != "by_position"}
    return metrics | position_metrics(scores["by_position"]) | {"eval_block_size": block_size}


def position_metrics(buckets: list[dict]) -> dict:
    """The perplexity and token count of each bucket of positions, as flat keys: the metric files
    hold scalars."""
    metrics = {}
    for bucket in buckets:
        if bucket["tokens"]:
            start, end = bucket["positions"]
            metrics[f"eval_perplexity_positions_{start}_{end}"] = bucket["perplexity"]
            metrics[f"eval_tokens_positions_{start}_{end}"] = bucket["tokens"]
    return metrics


def evaluate_with_memory_metrics(model, ids, num_characters, data_args) -> dict:
    segment = data_args.eval_block_size or data_args.max_seq_length
    scores = evaluate_with_memory(model, ids, segment)
    # the figures evaluate_lm reports
    summary = lm_scores(scores["loss"] * scores["tokens"], scores["tokens"])
    metrics = {f"eval_{name}": value for name, value in summary.items()}
    metrics.update(eval_bits_per_character=summary["bits_per_byte"] * len(ids) / num_characters,
                   eval_segment_length=segment, eval_mem_len=model.config.mem_len)
    metrics.update(position_metrics(scores["by_position"]))
    if data_args.recompute_comparison_tokens:
        context = model.config.mem_len + segment
        comparison = memory_versus_recompute(model, ids[:data_args.recompute_comparison_tokens],
                                             segment, context)
        metrics.update(
            eval_comparison_tokens=comparison["with_memory"]["tokens"],
            eval_comparison_perplexity_with_memory=comparison["with_memory"]["perplexity"],
            eval_comparison_perplexity_fixed_context=comparison["fixed_context"]["perplexity"],
            eval_comparison_context_length=context, eval_recompute_slowdown=comparison["slowdown"])
    return metrics


if __name__ == "__main__":
    main()
