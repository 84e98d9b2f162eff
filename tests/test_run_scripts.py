"""The run_*.py scripts end to end on the shipped samples (tiny models, a few steps), and the
argument handling they share (longctx/experiments/run_common.py)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

import longctx
from longctx.experiments.report import build_report
from longctx.experiments.run_common import DataArguments, ModelArguments, parse_config_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "longctx" / "experiments" / "samples"
TINY = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,max_position_embeddings=256"


def run_script(name: str, argv: list[str], monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv, "--report_to", "none", "--disable_tqdm", "true"])
    runpy.run_path(str(REPO_ROOT / "scripts" / name), run_name="__main__")


def test_config_overrides_parse_python_literals():
    parsed = parse_config_overrides("hidden_size=64, hidden_dropout_prob=0.0,pre_norm=false,"
                                    "attention_window=[4,8],sep_token_id=None,hidden_act=gelu")
    assert parsed == {"hidden_size": 64, "hidden_dropout_prob": 0.0, "pre_norm": False, "attention_window": [4, 8],
                      "sep_token_id": None, "hidden_act": "gelu"}
    with pytest.raises(ValueError, match="name=value"):
        parse_config_overrides("hidden_size")


def test_argument_combinations_that_cannot_work_raise_value_error():
    with pytest.raises(ValueError, match="exactly one"):
        ModelArguments()
    with pytest.raises(ValueError, match="exactly one"):
        ModelArguments(model_name_or_path="x", model_type="longctx-transformer")
    with pytest.raises(ValueError, match="not a longctx model type"):
        ModelArguments(model_type="bert")
    with pytest.raises(ValueError, match="config_overrides"):
        ModelArguments(model_name_or_path="x", config_overrides="hidden_size=4")
    with pytest.raises(ValueError, match="dataset_name"):
        DataArguments()
    with pytest.raises(ValueError, match="train_file"):
        DataArguments(train_file="data.xml")


@pytest.mark.parametrize("model_type", ["longctx-transformer", "longctx-longformer"])
def test_classification_trains_evaluates_and_reloads(tmp_path, monkeypatch, model_type):
    data = ["--train_file", str(SAMPLES / "imdb_train.jsonl"), "--validation_file", str(SAMPLES / "imdb_test.jsonl"),
            "--max_seq_length", "200", "--max_eval_samples", "24", "--per_device_eval_batch_size", "8"]
    out = tmp_path / "run"
    run_script("run_classification.py", ["--model_type", model_type, "--config_overrides", TINY, *data,
                                         "--max_train_samples", "32", "--per_device_train_batch_size", "8",
                                         "--max_steps", "3", "--output_dir", str(out), "--do_train", "--do_eval"],
               monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    for name in ("eval_accuracy", "eval_precision", "eval_recall", "eval_f1"):
        assert 0.0 <= results[name] <= 1.0
    assert results["eval_samples"] == 24 and "train_runtime" in results
    assert "local" in results["eval_metric_implementation"] or "evaluate" in results["eval_metric_implementation"]
    # The saved checkpoint (with the tokenizer beside it) evaluates to the same numbers.
    again = tmp_path / "again"
    run_script("run_classification.py", ["--model_name_or_path", str(out), *data, "--output_dir", str(again),
                                         "--do_eval"], monkeypatch)
    reloaded = json.loads((again / "eval_results.json").read_text())
    assert reloaded["eval_accuracy"] == results["eval_accuracy"]
    assert reloaded["eval_loss"] == pytest.approx(results["eval_loss"], abs=1e-6)
    # The tokenizer saved beside the model states the model's limit, not the byte tokenizer's 4096.
    config = json.loads((out / "config.json").read_text())
    assert saved_tokenizer_limit(out) == config["max_position_embeddings"] == 256


def saved_tokenizer_limit(folder) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).model_max_length


@pytest.mark.parametrize("reversible", [True, False])
def test_reformer_trains_with_gradient_checkpointing(tmp_path, monkeypatch, reversible):
    """--gradient_checkpointing (Trainer's activation_checkpointing) used to abort for Reformer."""
    out = tmp_path / "run"
    run_script("run_classification.py", [
        "--model_type", "longctx-reformer", "--config_overrides", f"{TINY},reversible={reversible}",
        "--train_file", str(SAMPLES / "imdb_train.jsonl"), "--max_seq_length", "64",
        "--max_train_samples", "16", "--per_device_train_batch_size", "8", "--max_steps", "2",
        "--gradient_checkpointing", "true", "--output_dir", str(out), "--do_train"], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_loss"] > 0


def test_classification_refuses_labels_other_than_0_and_1(tmp_path, monkeypatch):
    rows = [{"text": "unlabelled review", "label": -1}, {"text": "good", "label": 1}]
    path = tmp_path / "unsup.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match="binary"):
        run_script("run_classification.py", ["--model_type", "longctx-transformer", "--config_overrides", TINY,
                                             "--train_file", str(path), "--output_dir", str(tmp_path / "o"),
                                             "--do_train", "--max_steps", "1"], monkeypatch)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def classify(train_file, out, monkeypatch, *extra):
    run_script("run_classification.py", [
        "--model_type", "longctx-transformer", "--config_overrides", TINY,
        "--train_file", str(train_file), "--output_dir", str(out), "--max_seq_length", "32",
        "--per_device_train_batch_size", "4", "--do_train", "--max_steps", "1", *extra],
        monkeypatch)


def test_max_samples_draws_rows_at_random_with_the_seed_not_the_first_ones():
    """IMDb's files are sorted by label: the first N rows are one class."""
    import datasets

    from longctx.experiments.run_common import sample

    sorted_by_label = datasets.Dataset.from_list([{"label": i // 50} for i in range(100)])
    rows, numbers = sample(sorted_by_label, 10, seed=42)
    assert set(rows["label"]) == {0, 1} and list(numbers) == sorted(numbers)  # file order kept
    assert rows["label"] == [sorted_by_label[n]["label"] for n in numbers]
    assert sample(sorted_by_label, 10, seed=42)[1] == numbers
    assert sample(sorted_by_label, 10, seed=7)[1] != numbers
    everything, numbers = sample(sorted_by_label, 500, seed=42)
    assert everything is sorted_by_label and list(numbers) == list(range(100))


def test_classification_refuses_a_training_set_of_one_class(tmp_path, monkeypatch):
    rows = [{"text": f"review {i}", "label": i // 20} for i in range(40)]
    classify(write_jsonl(tmp_path / "sorted.jsonl", rows), tmp_path / "both", monkeypatch,
             "--max_train_samples", "12")  # the first 12 are all 0; 12 drawn hold both
    assert json.loads((tmp_path / "both" / "all_results.json").read_text())["train_loss"] > 0
    ones = write_jsonl(tmp_path / "ones.jsonl", rows[20:])
    with pytest.raises(ValueError, match=r"ones.jsonl: every training row has label \[1\].*both"):
        classify(ones, tmp_path / "o", monkeypatch)


TYPE_FIX = r"\).*integers 0 and 1"
FLOATS = r"column 'label' holds (float|double)\w* labels \(row 0: 0.0"
BOOLS = r"column 'label' holds bool labels \(row 0: False"


@pytest.mark.parametrize("labels,texts,message", [
    ([0, 0, 1.0, 1], "abcd", FLOATS + TYPE_FIX),
    ([False, False, True, True], "abcd", BOOLS + TYPE_FIX),
    ([0, 0, True, 1], "abcd", r"row 2 has label True \(bool\) in column 'label'.*binary"),
    ([0, 0, None, 1], "abcd", r"row 2 has label None \(NoneType\) in column 'label'.*binary"),
    ([0, 0, 1, 1], ["a", "b", "", "d"], r"row 2 has text '' in column 'text'"),
    ([0, 0, 1, 1], ["a", "b", None, "d"], r"row 2 has text None in column 'text'"),
])
def test_classification_names_the_row_of_a_bad_label_or_text(tmp_path, monkeypatch, labels, texts,
                                                             message):
    """Float or bool labels passed the 0/1 test and broke training with a shape error; a missing
    text raised the tokenizer's TypeError, naming no row."""
    rows = [{"text": text, "label": label} for text, label in zip(texts, labels)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=rf"--train_file .*bad.jsonl: {message}"):
        classify(path, tmp_path / "o", monkeypatch)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_qa_checks_answer_offsets_of_local_files_too(tmp_path, monkeypatch, split):
    """Only --squad_file was checked: a SQuAD-layout file with an offset past the context trained
    on labels (0, 0)."""
    from longctx.experiments.squad import read_squad_file

    rows = [{k: row[k] for k in ("id", "question", "context", "answers")}
            for row in read_squad_file(SAMPLES / "squad_sample.json")[:6]]
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    rows[4]["answers"]["answer_start"][0] = len(rows[4]["context"]) + 10
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    files = {"train": good, "validation": good, split: bad}
    where = rf"--{split}_file .*bad.jsonl: row 4 \(id '{rows[4]['id']}'\), answers\[0\]"
    with pytest.raises(ValueError, match=where + r": answer_start=\d+ does not point"):
        run_script("run_qa.py", [
            "--model_type", "longctx-transformer", "--config_overrides", TINY,
            "--train_file", str(files["train"]), "--validation_file", str(files["validation"]),
            "--max_seq_length", "128", "--doc_stride", "32", "--max_steps", "1",
            "--output_dir", str(tmp_path / "o"), "--do_train" if split == "train" else "--do_eval"],
            monkeypatch)


def load_run_qa():
    return runpy.run_path(str(REPO_ROOT / "scripts" / "run_qa.py"), run_name="run_qa")


def test_qa_labels_and_span_post_processing_recover_every_answer():
    """Oracle logits (a peak at each window's labelled start and end) must decode to the gold
    answers: windows, labels and n-best post-processing agree with each other exactly."""
    import datasets
    import numpy as np

    import longctx
    from longctx.experiments.metrics import squad_v1_scores
    from longctx.question_answering import prepare_features, training_labels
    from longctx.experiments.squad import read_squad_file

    qa = load_run_qa()
    rows = read_squad_file(SAMPLES / "squad_sample.json")[:40]
    examples = datasets.Dataset.from_list(rows)
    data_args = qa["QADataArguments"](squad_file="x", max_seq_length=160, doc_stride=48)
    tokenizer = longctx.byte_tokenizer()
    features = qa["eval_features"](examples[:], tokenizer, data_args)
    labelled = prepare_features(tokenizer, examples["question"], examples["context"], 160, 48)
    starts, ends = training_labels(labelled, examples["answers"])
    width = max(len(ids) for ids in features["input_ids"])
    start_logits, end_logits = np.zeros((len(starts), width)), np.zeros((len(starts), width))
    start_logits[np.arange(len(starts)), starts] = 20.0
    end_logits[np.arange(len(ends)), ends] = 20.0
    predictions = qa["predictions_from_logits"](examples, features, start_logits, end_logits, data_args)
    references = [{"id": r["id"], "answers": r["answers"]} for r in rows]
    assert squad_v1_scores(predictions, references)["exact_match"] == 100.0
    assert sum(s > 0 for s in starts) >= len(rows)  # every answer lies whole in at least one window


@pytest.mark.parametrize("packed", [False, True])
def test_qa_trains_and_evaluates_on_an_official_file_split_by_article(tmp_path, monkeypatch, packed):
    import gzip
    source = SAMPLES / "squad_sample.json"
    if packed:
        source = tmp_path / "dev.json.gz"
        source.write_bytes(gzip.compress((SAMPLES / "squad_sample.json").read_bytes()))
    out = tmp_path / "run"
    run_script("run_qa.py", ["--model_type", "longctx-longformer", "--config_overrides", TINY + ",attention_window=32",
                             "--squad_file", str(source), "--eval_articles", "1", "--max_seq_length", "128",
                             "--doc_stride", "32", "--max_train_samples", "16", "--max_eval_samples", "6",
                             "--per_device_train_batch_size", "8", "--max_steps", "2", "--output_dir", str(out),
                             "--do_train", "--do_eval"], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= results["eval_exact_match"] <= 100.0 and 0.0 <= results["eval_f1"] <= 100.0
    assert results["eval_samples"] == 6 and results["eval_features"] > 6  # long contexts: several windows each
    predictions = json.loads((out / "eval_predictions.json").read_text())
    import datasets

    from longctx.experiments.run_common import sample
    from longctx.experiments.squad import read_squad_file, split_by_article
    _, held_out = split_by_article(read_squad_file(source), 1)
    _, drawn = sample(datasets.Dataset.from_list(held_out), 6, seed=42)  # with --seed's default
    assert list(predictions) == [held_out[n]["id"] for n in drawn]


@pytest.mark.parametrize("model_type,mlm", [("longctx-longformer", False), ("longctx-linformer", True)])
def test_lm_trains_and_evaluates_on_book_text(tmp_path, monkeypatch, capfd, model_type, mlm):
    out = tmp_path / "run"
    overrides = TINY.replace("max_position_embeddings=256", "max_position_embeddings=512")
    overrides += ",attention_window=32" if model_type == "longctx-longformer" else ",projection_dim=16"
    run_script("run_lm.py", ["--model_type", model_type, "--config_overrides", overrides,
                             "--train_file", str(SAMPLES / "book_train.txt"),
                             "--validation_file", str(SAMPLES / "book_valid.txt"), "--max_seq_length", "128",
                             "--eval_block_size", "512", "--max_train_chars", "20000", "--max_eval_chars", "3000",
                             "--per_device_train_batch_size", "8", "--max_steps", "2", "--output_dir", str(out),
                             "--do_train", "--do_eval", *(["--mlm"] if mlm else [])], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_perplexity"] > 1
    # the book (20,000 bytes) is encoded whole and then cut into blocks: no warning that its ids
    # exceed the tokenizer's model_max_length (the model's 512) and "will result in indexing errors"
    assert "indexing errors" not in capfd.readouterr().err
    if not mlm:
        assert results["eval_bits_per_character"] >= results["eval_bits_per_byte"] > 0
        assert results["eval_tokens_positions_128_512"] > 0  # blocks of 512 evaluated past the training length


CLASSIFICATION_ARGS = ["--model_type", "longctx-longformer", "--config_overrides", TINY + ",attention_window=32",
                       "--train_file", str(SAMPLES / "imdb_train.jsonl"),
                       "--validation_file", str(SAMPLES / "imdb_test.jsonl"), "--max_seq_length", "160",
                       "--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "4",
                       "--max_steps", "3", "--do_train", "--do_eval", "--report_to", "none", "--use_cpu"]


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun-2-processes"])
def test_classification_runs_unchanged_under_launchers(tmp_path, launcher):
    """`accelerate launch` (one CPU process; accelerate's multi-process CPU launcher needs MPI) and
    two processes under torch.distributed.run, the launcher `accelerate launch --multi_gpu` uses:
    DistributedDataParallel over gloo, global batch 2 x 4."""
    import os
    import subprocess
    out = tmp_path / "run"
    script = str(REPO_ROOT / "scripts" / "run_classification.py")
    if launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                   script]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([*command, *CLASSIFICATION_ARGS, "--output_dir", str(out)], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    processes = 2 if launcher.startswith("torchrun") else 1
    assert results["epoch"] == pytest.approx(3 * 4 * processes / 32)  # 3 steps of the global batch over 32 rows
    assert 0.0 <= results["eval_accuracy"] <= 1.0


def test_report_collects_runs_with_their_commands_and_benchmarks(tmp_path, monkeypatch):
    from longctx.experiments.report import build_report
    runs = tmp_path / "runs"
    run_script("run_classification.py", ["--model_type", "longctx-transformer", "--config_overrides", TINY,
                                         "--train_file", str(SAMPLES / "imdb_train.jsonl"),
                                         "--validation_file", str(SAMPLES / "imdb_test.jsonl"),
                                         "--max_seq_length", "64", "--max_train_samples", "8", "--max_eval_samples",
                                         "8", "--max_steps", "1", "--output_dir", str(runs / "imdb-dense"),
                                         "--do_train", "--do_eval"], monkeypatch)
    results = json.loads((runs / "imdb-dense" / "all_results.json").read_text())
    benchmark = {"settings": {"num_layers": 2, "hidden_size": 256, "dtype": "fp32"},
                 "environment": {"device_name": "Test CPU"}, "notes": ["a note"], "plots": [],
                 "results": [{"model": "dense", "length": 1024, "batch_size": 4, "seconds_per_step": 0.5,
                              "tokens_per_s": 8192.0, "peak_memory_mib": 100.0, "error": None}]}
    (runs / "bench").mkdir()
    (runs / "bench" / "benchmark.json").write_text(json.dumps(benchmark))
    report = build_report([runs], tmp_path / "REPORT.md")
    assert (tmp_path / "REPORT.md").read_text() == report
    row = next(line for line in report.splitlines() if line.startswith("| longctx-transformer"))
    assert f"{results['eval_accuracy']:,.4g}" in row and "imdb_train.jsonl" in row and "1×32" in row
    assert "64 tokens" in row  # --max_seq_length of the run
    assert "run_classification.py --model_type longctx-transformer" in report  # the command that made it
    assert "| dense | 1024 | 4 | 500.0 | 8,192 | 100 |" in report and "- a note" in report
    # the benchmark wrote no plots (no matplotlib where it ran): the report draws them from its cells
    plot = runs / "bench" / "benchmark_vs_length.png"  # tokens/s and memory, one figure
    assert plot.read_bytes().startswith(b"\x89PNG") and f"]({plot.relative_to(tmp_path)})" in report
    with pytest.raises(ValueError, match="no results"):
        build_report([tmp_path / "empty"], tmp_path / "R.md")


def test_bpe_tokenizer_trained_on_reviews_serves_the_classification_script(tmp_path, monkeypatch):
    import runpy

    from transformers import AutoTokenizer
    tokenizer_dir = tmp_path / "bpe"
    monkeypatch.setattr(sys, "argv", ["train_tokenizer.py", "--train_file", str(SAMPLES / "imdb_train.jsonl"),
                                      "--vocab_size", "600", "--output_dir", str(tokenizer_dir)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO_ROOT / "scripts" / "train_tokenizer.py"), run_name="__main__")
    assert exited.value.code == 0
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    review = "This movie was wonderful."
    assert len(tokenizer(review)["input_ids"]) < len(review.encode()) + 1  # merges shorten byte sequences
    out = tmp_path / "run"
    run_script("run_classification.py", ["--model_type", "longctx-transformer",
                                         "--config_overrides", TINY,  # vocab_size: the tokenizer's
                                         "--tokenizer_name", str(tokenizer_dir),
                                         "--train_file", str(SAMPLES / "imdb_train.jsonl"),
                                         "--validation_file", str(SAMPLES / "imdb_test.jsonl"), "--max_seq_length", "64",
                                         "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps", "1",
                                         "--output_dir", str(out), "--do_train", "--do_eval"], monkeypatch)
    assert AutoTokenizer.from_pretrained(out)(review)["input_ids"] == tokenizer(review)["input_ids"]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) and config["pad_token_id"] == tokenizer.pad_token_id


def test_the_tokenizer_takes_the_models_input_limit():
    from transformers import AutoModel, BertConfig
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    from longctx import byte_tokenizer, model_max_length_for
    from longctx.experiments.run_common import build_model

    limits = (("longctx-transformer", 256), ("longctx-transfo-xl", VERY_LARGE_INTEGER))
    for model_type, limit in limits:
        tokenizer = byte_tokenizer()
        model_args = ModelArguments(model_type=model_type, config_overrides=TINY)
        build_model(model_args, AutoModel, tokenizer)
        assert tokenizer.model_max_length == limit, model_type
    # Not a longctx config: its max_position_embeddings; no limit stated: None (tokenizer kept).
    assert model_max_length_for(BertConfig(max_position_embeddings=512)) == 512
    assert model_max_length_for(object()) is None


def test_a_vocab_size_override_below_the_tokenizer_raises():
    from longctx import byte_tokenizer
    from longctx.experiments.run_common import build_model
    from transformers import AutoModel

    model_args = ModelArguments(model_type="longctx-transformer", config_overrides=TINY + ",vocab_size=100")
    with pytest.raises(ValueError, match="vocab_size=100 is below the tokenizer's 261"):
        build_model(model_args, AutoModel, byte_tokenizer())


def test_lm_evaluates_transformer_xl_with_memory_and_against_recomputation(tmp_path, monkeypatch):
    out = tmp_path / "xl"
    run_script("run_lm.py", ["--model_type", "longctx-transfo-xl", "--config_overrides",
                             "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,mem_len=64,"
                             "vocab_size=261,cutoffs=[]", "--train_file", str(SAMPLES / "book_train.txt"),
                             "--validation_file", str(SAMPLES / "book_valid.txt"), "--max_seq_length", "64",
                             "--max_train_chars", "8000", "--max_eval_chars", "2000",
                             "--recompute_comparison_tokens", "128", "--per_device_train_batch_size", "4",
                             "--max_steps", "2", "--output_dir", str(out), "--do_train", "--do_eval"], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_mem_len"] == 64 and results["eval_segment_length"] == 64
    # Transformer-XL takes any length: its saved tokenizer says so the way transformers does.
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER
    assert saved_tokenizer_limit(out) == VERY_LARGE_INTEGER
    from longctx.experiments.report import _size
    assert _size(json.loads((out / "run_info.json").read_text())) == "1×32 (memory 64)"  # the report names the memory
    assert results["eval_comparison_tokens"] == 128 - 2  # the first token of each 64-token segment is unscored
    assert results["eval_recompute_slowdown"] > 0 and results["eval_perplexity"] > 1
    # Over the first 128 tokens the memory (64) holds everything before the second segment: equal
    # perplexities only if the trained model (whose saved config the Trainer left with
    # use_cache=False) carried its memory from segment to segment.
    assert results["eval_comparison_perplexity_with_memory"] == pytest.approx(
        results["eval_comparison_perplexity_fixed_context"], rel=1e-5)


# --------------------------------------------------------------------------- T5 (issue 23)

T5_TINY = "d_model=32,num_layers=1,num_heads=2,d_kv=16,d_ff=64,dropout_rate=0.0"


def test_t5_classification_closes_rows_with_eos_and_trains(tmp_path, monkeypatch):
    """transformers' T5ForSequenceClassification from scratch: it pools at the last </s> and
    refuses rows without one, so the script closes each row with the tokenizer's </s>."""
    import datasets

    classification = runpy.run_path(str(REPO_ROOT / "scripts" / "run_classification.py"), run_name="x")
    tokenizer = longctx.byte_tokenizer()
    args = type("Args", (), {"text_column_name": "text", "label_column_name": "label", "max_seq_length": 6})
    rows = datasets.Dataset.from_dict({"text": ["ab", "abcdefgh"], "label": [0, 1]})
    closed = classification["tokenized"](rows, tokenizer, args, close_with_eos=True)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    assert closed["input_ids"] == [[bos, 5 + ord("a"), 5 + ord("b"), eos],
                                   [bos, *(5 + ord(c) for c in "abcd"), eos]]
    assert closed["attention_mask"] == [[1] * 4, [1] * 6] and closed["labels"] == [0, 1]

    class ClosingTokenizer:  # a template that ends rows with </s> itself, as a trained BPE's does
        eos_token_id = eos

        def __call__(self, texts, **kwargs):
            encoded = tokenizer(texts, **{**kwargs, "max_length": kwargs["max_length"] - 1})
            return {"input_ids": [ids + [eos] for ids in encoded["input_ids"]],
                    "attention_mask": [mask + [1] for mask in encoded["attention_mask"]]}

    once = classification["tokenized"](rows, ClosingTokenizer(), args, close_with_eos=True)
    assert once["input_ids"] == [[bos, 5 + ord("a"), 5 + ord("b"), eos],
                                 [bos, *(5 + ord(c) for c in "abc"), eos]]  # no second </s>
    assert once["attention_mask"] == [[1] * 4, [1] * 5]

    out = tmp_path / "run"
    run_script("run_classification.py", [
        "--model_type", "t5", "--config_overrides", T5_TINY, "--train_file", str(SAMPLES / "imdb_train.jsonl"),
        "--validation_file", str(SAMPLES / "imdb_test.jsonl"), "--max_seq_length", "64", "--max_eval_samples", "16",
        "--max_train_samples", "16", "--per_device_train_batch_size", "8", "--max_steps", "2",
        "--output_dir", str(out), "--do_train", "--do_eval"], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 16 and 0.0 <= results["eval_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["T5ForSequenceClassification"]
    assert (config["pad_token_id"], config["eos_token_id"], config["decoder_start_token_id"]) == (0, 2, 0)


def test_t5_question_answering_trains_and_evaluates(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_script("run_qa.py", ["--model_type", "t5", "--config_overrides", T5_TINY,
                             "--squad_file", str(SAMPLES / "squad_sample.json"), "--eval_articles", "1",
                             "--max_seq_length", "128", "--doc_stride", "32", "--max_train_samples", "8",
                             "--max_eval_samples", "4", "--per_device_train_batch_size", "8", "--max_steps", "2",
                             "--output_dir", str(out), "--do_train", "--do_eval"], monkeypatch)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 4 and 0.0 <= results["eval_f1"] <= 100.0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["T5ForQuestionAnswering"]
    assert len(json.loads((out / "eval_predictions.json").read_text())) == 4
    # the report counts the decoder's layers too: 1 encoder + 1 decoder layer, 32 wide
    assert json.loads((out / "run_info.json").read_text())["size"]["num_decoder_layers"] == 1
    report = build_report([tmp_path], tmp_path / "REPORT.md")
    assert "| t5 |" in report and "| 1+1×32 (encoder + decoder) |" in report


def test_unread_outputs_keep_the_models_own_ignored_keys():
    """An explicit ignore_keys replaces the config's keys_to_ignore_at_inference in the Trainer: a
    longctx model's cache must stay in the list, or evaluation tries to concatenate it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from longctx.experiments.run_common import unread_outputs

    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "longctx-transfo-xl", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        mem_len=8, num_labels=2))
    keys = unread_outputs(model)
    assert model.config.keys_to_ignore_at_inference and set(model.config.keys_to_ignore_at_inference) <= set(keys)
    assert "encoder_last_hidden_state" in keys and len(keys) == len(set(keys))
