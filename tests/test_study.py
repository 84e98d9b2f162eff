"""Tests for the seed study: metrics against hand-worked cases, scripts/run_study.py end to end,
and the real-data presets on a tiny fake data_dir (no ../shared, no network, no GPU needed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import longctx
from longctx.experiments.language_modeling import evaluate_lm, lm_blocks, lm_scores
from longctx.experiments.study_models import study_models
from longctx.experiments.study import (
    PRESETS,
    override_steps,
    select_architectures,
    study_table,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- LM metrics and data


def test_lm_scores_uniform_over_bytes_is_eight_bits():
    scores = lm_scores(nll_sum_nats=10 * math.log(256), num_predicted=10)
    assert scores["bits_per_byte"] == pytest.approx(8.0)
    assert scores["perplexity"] == pytest.approx(256.0)


def test_lm_blocks_drop_remainder_and_copy_labels():
    blocks = lm_blocks(list(range(10)), block_size=4)
    assert blocks["input_ids"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert blocks["labels"] == blocks["input_ids"]


def test_evaluate_lm_scores_every_byte_but_block_starts():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transformer", is_decoder=True, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, max_position_embeddings=8)
    model = AutoModelForCausalLM.from_config(config)
    ids = [5 + b for b in b"hello, world"]  # 12 bytes: blocks of 8 and 4 -> 7 + 3 predicted
    scores = evaluate_lm(model, ids, block_size=8, batch_size=4)
    assert scores["predicted_bytes"] == 10
    # the padded last block scores what it would alone
    with torch.no_grad():
        nll = 0.0
        for block in (ids[:8], ids[8:]):
            x = torch.tensor([block])
            nll += model(input_ids=x, labels=x).loss.item() * (len(block) - 1)
    assert scores["loss"] == pytest.approx(nll / 10, rel=1e-5)


# --------------------------------------------------------------------------- options and table


def test_override_steps_and_architecture_selection():
    preset = override_steps(PRESETS["smoke"], 3)
    assert preset.classification.steps == preset.language_modeling.steps == 3
    with pytest.raises(ValueError, match="at least 2"):
        override_steps(PRESETS["smoke"], 1)
    assert select_architectures(None) == [*longctx.ARCHITECTURES, "hf-t5"]
    with pytest.raises(ValueError, match="available"):
        select_architectures("no-such-model")


def test_study_table_marks_skipped_tasks():
    rows = [{"architecture": "a", "classification": {"accuracy": 0.5, "f1": 0.25},
             "language_modeling": {"perplexity": 3.0, "bits_per_byte": 1.5, "tokens_per_s": 1234.0,
                                   "peak_memory_mib": 10.0}},
            {"architecture": "bbbb", "classification": None, "language_modeling": None}]
    lines = study_table(rows).splitlines()
    assert len(lines) == 4 and "accuracy" in lines[0] and "1,234" in lines[2]
    assert lines[3].startswith("bbbb") and lines[3].count("n/a") == 6


# --------------------------------------------------------------------------- end to end


def test_run_study_script_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"), "--max_steps", "2",
         "--output_dir", str(tmp_path / "tmp")],
        # a guard against a hang, not a timing assert: six models, and the machine may be shared
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "tmp" / "study_results.json").read_text())
    assert [row["architecture"] for row in results["results"]] == [*longctx.ARCHITECTURES, "hf-t5"]
    assert results["preset"]["classification"]["steps"] == results["preset"]["language_modeling"]["steps"] == 2
    assert {"torch", "transformers", "device"} <= set(results["environment"])
    assert results["metric_implementation"]
    for row in results["results"]:
        assert not row["errors"]
        heads = study_models()[row["architecture"]].heads
        for task, head, keys in (
                ("classification", "AutoModelForSequenceClassification",
                 ("accuracy", "precision", "recall", "f1", "tokens_per_s", "peak_memory_mib")),
                ("language_modeling", "AutoModelForCausalLM",
                 ("perplexity", "bits_per_byte", "tokens_per_s", "peak_memory_mib"))):
            if head not in heads:
                assert row[task] is None
                continue
            for key in keys:
                assert math.isfinite(row[task][key]), (row["architecture"], task, key, row[task][key])
            assert row[task]["tokens_per_s"] > 0

    # Transformer-XL alone trains and scores with its memory carried, on the same scored bytes.
    lms = {row["architecture"]: row["language_modeling"] for row in results["results"] if row["language_modeling"]}
    assert [name for name, lm in lms.items() if lm["with_memory"]] == ["longctx-transfo-xl"]
    assert lms["longctx-transfo-xl"]["mem_len"] > 0
    assert lms["longctx-transfo-xl"]["predicted_bytes"] == lms["longctx-transformer"]["predicted_bytes"]

    out = completed.stdout
    assert "longctx-transfo-xl: trained on consecutive" in out
    header = next(line for line in out.splitlines() if line.startswith("architecture"))
    for column in ("accuracy", "F1", "perplexity", "bits/byte", "train tok/s", "peak mem"):
        assert column in header
    for name in [*longctx.ARCHITECTURES, "hf-t5"]:
        assert any(line.startswith(name + " ") and "|" in line for line in out.splitlines())
    assert "not results" in out

    # T5: transformers' classifier, no LM row and the reason said; every classifier's confusion
    # matrix counts the scored reviews and agrees with its accuracy; the pictures are PNGs
    t5 = results["results"][-1]
    assert t5["language_modeling"] is None and "no causal-LM class" in t5["skipped"][0]
    assert "hf-t5: language_modeling skipped (T5 is an encoder-decoder" in out
    for row in results["results"]:
        (tn, fp), (fn, tp) = row["classification"]["confusion_matrix"]
        assert tn + fp + fn + tp == row["classification"]["test_rows"]
        assert (tn + tp) / (tn + fp + fn + tp) == pytest.approx(row["classification"]["accuracy"])
    for name in ("confusion_matrices.png", "lm_loss_by_position.png"):
        assert (tmp_path / "tmp" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tasks_are_skipped_for_missing_heads(monkeypatch, tmp_path):
    from longctx.experiments import study

    baseline = longctx.ARCHITECTURES["longctx-transformer"]
    encoder_only = longctx.Architecture(config=baseline.config, backbone=baseline.backbone, heads={})
    monkeypatch.setitem(longctx.ARCHITECTURES, "encoder-only", encoder_only)
    row = study.run_architecture("encoder-only", PRESETS["smoke"], seed=0, output_dir=tmp_path, metrics=None,
                                 data=study.StudyData())
    assert row["classification"] is None and row["language_modeling"] is None and not row["errors"]
    assert len(row["skipped"]) == 2 and all("head" in reason for reason in row["skipped"])


# --------------------------------------------------------------------------- real-data presets

FAKE_TRAIN_ROWS, FAKE_TEST_ROWS, EVAL_ROWS = 24, 10, 6
FAKE_EMMA = "Emma Woodhouse, handsome, clever, and rich. " * 40
FAKE_SENSE = "The family of Dashwood had long been settled in Sussex. " * 30
EVAL_CHARS = 300


def write_fake_data_dir(root: Path) -> Path:
    """A data_dir laid out like ../shared/data, with a few rows and short books. The test split is
    sorted by label, like the real one."""
    import pandas as pd

    (root / "imdb").mkdir(parents=True)
    (root / "books").mkdir()
    for split, rows in (("train", FAKE_TRAIN_ROWS), ("test", FAKE_TEST_ROWS)):
        labels = [i * 2 // rows for i in range(rows)]  # first half 0, second half 1
        texts = [f"{split} review {i}: " + ("a fine film " if label else "a dull film ") * (3 + i % 5)
                 for i, label in enumerate(labels)]
        pd.DataFrame({"text": texts, "label": labels, "rating": [1] * rows}).to_parquet(
            root / "imdb" / f"{split}.parquet")
    (root / "books" / "austen-emma.txt").write_text(FAKE_EMMA, encoding="utf-8")
    (root / "books" / "austen-sense.txt").write_text(FAKE_SENSE, encoding="utf-8")
    return root


def tiny(preset_name: str):
    """The preset with a tiny model and short sequences, its data and evaluation caps kept."""
    preset = PRESETS[preset_name]
    return dataclasses.replace(
        preset, model=dict(preset.model, hidden_size=32, num_attention_heads=2, intermediate_size=64),
        classification=dataclasses.replace(preset.classification, max_length=64, batch_size=4,
                                           eval_rows=EVAL_ROWS),
        language_modeling=dataclasses.replace(preset.language_modeling, max_length=64, batch_size=4,
                                              eval_chars=EVAL_CHARS))


@pytest.fixture
def offline_hub(monkeypatch):
    """`datasets.load_dataset` fails as it does without network (and never touches it)."""
    import datasets

    calls = []

    def unreachable(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    return calls


def test_cpu_preset_end_to_end_on_a_fake_data_dir(tmp_path, offline_hub):
    from longctx.experiments import study

    data_dir = write_fake_data_dir(tmp_path / "data")
    results = study.run_study(preset=tiny("cpu"), data_dir=data_dir, output_dir=tmp_path / "out", max_steps=2,
                              architectures="longctx-transformer,longctx-linformer")
    assert not offline_hub  # a data_dir is never bypassed for the Hub
    assert json.loads((tmp_path / "out" / "study_results.json").read_text()) == json.loads(json.dumps(results))
    assert results["preset"]["name"] == "cpu" and results["preset"]["data"] == "real"
    assert results["preset"]["data_dir"] == str(data_dir.resolve())
    assert results["environment"]["device"] == "cpu" and "resident set" in results["memory_measurement"]
    assert results["data"] == {
        "book_train": str(data_dir / "books" / "austen-emma.txt"), "book_train_chars": len(FAKE_EMMA),
        "book_valid": str(data_dir / "books" / "austen-sense.txt"), "book_valid_chars": len(FAKE_SENSE),
        "book_valid_chars_scored": EVAL_CHARS,
        "imdb_train": str(data_dir / "imdb" / "train.parquet"), "imdb_train_rows": FAKE_TRAIN_ROWS,
        "imdb_test": str(data_dir / "imdb" / "test.parquet"), "imdb_test_rows": FAKE_TEST_ROWS,
        "imdb_test_rows_scored": EVAL_ROWS,
        "imdb_test_selection": "the first rows of a seed-0 shuffle (random.Random(0).shuffle)"}

    transformer, linformer = results["results"]
    assert not transformer["errors"] and not linformer["errors"]
    for row in (transformer, linformer):
        classification = row["classification"]
        assert (classification["train_rows"], classification["test_rows"], classification["test_rows_total"]) \
            == (FAKE_TRAIN_ROWS, EVAL_ROWS, FAKE_TEST_ROWS)
        assert 0 < classification["real_token_fraction"] < 1 and math.isfinite(classification["accuracy"])
    lm = transformer["language_modeling"]
    assert lm["train_bytes"] == len(FAKE_EMMA) and lm["train_blocks"] == len(FAKE_EMMA) // 64
    assert lm["valid_bytes"] == lm["valid_chars"] == EVAL_CHARS
    assert lm["predicted_bytes"] == EVAL_CHARS - math.ceil(EVAL_CHARS / 64)  # all but each block's first
    assert linformer["language_modeling"] is None  # no causal-LM head


def test_cpu_preset_notes_say_how_much_was_scored(tmp_path, capsys):
    from longctx.experiments import study

    preset = dataclasses.replace(tiny("cpu"), language_modeling=None)
    study.run_study(preset=preset, data_dir=write_fake_data_dir(tmp_path / "data"), output_dir=tmp_path / "out",
                    max_steps=2, architectures="longctx-transformer")
    out = capsys.readouterr().out
    assert f"{EVAL_ROWS:,} of {FAKE_TEST_ROWS:,} scored (the first of a seed-0 shuffle)" in out
    assert "2 classification steps each; CPU" in out and "perplexity, bits/byte:" not in out


def test_scored_rows_take_a_fixed_shuffle_not_a_prefix():
    from longctx.experiments.study import scored_rows

    rows = [{"text": str(i), "label": i * 2 // 100} for i in range(100)]  # sorted by label
    chosen = scored_rows(rows, 10)
    assert chosen == scored_rows(list(rows), 10) and len(chosen) == 10
    assert {row["label"] for row in chosen} == {0, 1} and chosen != rows[:10]
    assert scored_rows(rows, None) is rows and scored_rows(rows, 1000) is rows


def test_real_data_preset_without_data_dir_names_it(offline_hub):
    from longctx.experiments import study

    with pytest.raises(ValueError, match="--data_dir") as raised:
        study.run_study(preset="cpu", architectures="longctx-transformer")
    assert "books/austen-emma.txt" in str(raised.value) and "no Hub fallback" in str(raised.value)
    # IMDb alone: the Hub is tried, and its failure names --data_dir and the layout
    classification_only = dataclasses.replace(PRESETS["cpu"], language_modeling=None)
    with pytest.raises(ValueError, match="--data_dir") as raised:
        study.load_study_data(classification_only)
    assert offline_hub and offline_hub[0][0] == ("imdb",)
    assert "imdb/train.parquet" in str(raised.value) and "ConnectionError" in str(raised.value)


def test_imdb_comes_from_the_hub_without_data_dir(monkeypatch):
    import datasets

    from longctx.experiments import study

    hub = {split: datasets.Dataset.from_dict({"text": [f"{split} {i}" for i in range(n)], "label": [0, 1] * (n // 2)})
           for split, n in (("train", 8), ("test", 4))}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: hub[split])
    data = study.load_study_data(dataclasses.replace(PRESETS["cpu"], language_modeling=None))
    assert [row["text"] for row in data.imdb_train] == hub["train"]["text"]
    assert data.summary["imdb_test_rows"] == data.summary["imdb_test_rows_scored"] == 4
    assert "Hub" in data.summary["imdb_train"] and data.book_train is None


def test_missing_or_wrong_files_in_data_dir_are_named(tmp_path, offline_hub):
    from longctx.experiments import study

    data_dir = write_fake_data_dir(tmp_path / "data")
    (data_dir / "books" / "austen-sense.txt").unlink()
    with pytest.raises(ValueError, match="austen-sense.txt not found") as raised:
        study.run_study(preset="cpu", data_dir=data_dir, output_dir=tmp_path / "out")
    assert str(data_dir / "books" / "austen-sense.txt") in str(raised.value)
    assert not (tmp_path / "out").exists()  # nothing ran

    import pandas as pd

    pd.DataFrame({"text": ["unlabelled"], "label": [-1]}).to_parquet(data_dir / "imdb" / "train.parquet")
    with pytest.raises(ValueError, match=r"labels \[-1\]"):
        study.load_study_data(dataclasses.replace(PRESETS["cpu"], language_modeling=None), data_dir)


def test_script_reports_data_errors_and_never_uses_the_samples(tmp_path, offline_hub, capsys):
    spec = importlib.util.spec_from_file_location("run_study_script", REPO_ROOT / "scripts" / "run_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--preset", "cpu", "--output_dir", str(tmp_path / "out")]) == 2
    assert "--data_dir" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert script.main(["--preset", "cpu", "--data_dir", str(missing), "--output_dir", str(tmp_path / "out")]) == 2
    assert str(missing / "books" / "austen-emma.txt") in capsys.readouterr().err
    # the smoke preset runs on the shipped samples only: a data_dir there is a mistake, not ignored
    assert script.main(["--data_dir", str(write_fake_data_dir(tmp_path / "data"))]) == 2
    assert "shipped samples" in capsys.readouterr().err


def test_gpu_preset_refuses_to_run_without_cuda(tmp_path, monkeypatch):
    import torch

    from longctx.experiments import study

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        study.run_study(preset="gpu-lra", data_dir=write_fake_data_dir(tmp_path / "data"),
                        output_dir=tmp_path / "out", max_steps=2, architectures="longctx-transformer")
    assert not (tmp_path / "out").exists()
    gpu = PRESETS["gpu-lra"]
    assert (gpu.device, gpu.bf16, gpu.data) == ("cuda", True, "real")
    assert (gpu.classification.max_length, gpu.classification.batch_size, gpu.classification.eval_rows) == (4096, 32, None)
    assert "GPU" in gpu.description and "hours" in gpu.description


def test_training_arguments_follow_the_preset_device(tmp_path):
    from longctx.experiments.study import training_arguments

    cpu = PRESETS["cpu"]
    args = training_arguments(cpu, cpu.classification, seed=0, output_dir=tmp_path)
    assert args.use_cpu and not args.bf16 and args.device.type == "cpu"
    assert (args.max_steps, args.per_device_train_batch_size, args.learning_rate) == (400, 8, 1e-3)


# --------------------------------------------------------------------------- stop and resume


def fake_architecture_runs(monkeypatch, failing=(), interrupt_at=None):
    """run_architecture replaced by a recorder: a row with one made-up result per call (errors
    for the `failing` names; KeyboardInterrupt, as a killed run, at `interrupt_at`)."""
    from longctx.experiments import study

    calls = []

    def fake(model_type, preset, seed, output_dir, metrics, data):
        if model_type == interrupt_at:
            raise KeyboardInterrupt
        calls.append(model_type)
        errors = {"classification": "RuntimeError: made up"} if model_type in failing else {}
        return {"architecture": model_type, "classification": None, "skipped": [], "errors": errors,
                "language_modeling": {"perplexity": float(len(calls)), "bits_per_byte": 1.0, "tokens_per_s": 1.0,
                                      "peak_memory_mib": 1.0}}

    monkeypatch.setattr(study, "run_architecture", fake)
    monkeypatch.setattr(study, "warm_up", lambda *args: None)
    return calls


def test_results_are_written_after_each_architecture(monkeypatch, tmp_path):
    from longctx.experiments import study

    first, second, third = list(longctx.ARCHITECTURES)[:3]
    fake_architecture_runs(monkeypatch, interrupt_at=third)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(output_dir=tmp_path, architectures=f"{first},{second},{third}")
    saved = json.loads((tmp_path / "study_results.json").read_text())
    assert [row["architecture"] for row in saved["results"]] == [first, second]


def test_resume_runs_only_what_is_missing_or_failed(monkeypatch, tmp_path):
    from longctx.experiments import study

    first, second, third = list(longctx.ARCHITECTURES)[:3]
    calls = fake_architecture_runs(monkeypatch, failing=(second,))
    study.run_study(output_dir=tmp_path, architectures=f"{first},{second}")
    earlier = json.loads((tmp_path / "study_results.json").read_text())

    assert calls == [first, second]

    calls = fake_architecture_runs(monkeypatch)
    results = study.run_study(output_dir=tmp_path, architectures=f"{third},{second},{first}", resume=True)
    # the failed architecture and the new one run again; the finished one is kept as it was
    assert calls == [third, second]
    rows = {row["architecture"]: row for row in results["results"]}
    assert [row["architecture"] for row in results["results"]] == [first, second, third]
    assert rows[first] == earlier["results"][0]
    assert not rows[second]["errors"] and not rows[third]["errors"]
    assert results["wall_seconds"] >= earlier["wall_seconds"]


def test_resume_refuses_results_of_other_settings(monkeypatch, tmp_path):
    from longctx.experiments import study

    fake_architecture_runs(monkeypatch)
    first = list(longctx.ARCHITECTURES)[0]
    study.run_study(output_dir=tmp_path, architectures=first, seed=1)
    with pytest.raises(ValueError, match="different seed"):
        study.run_study(output_dir=tmp_path, architectures=first, seed=2, resume=True)
    with pytest.raises(ValueError, match="different preset"):
        study.run_study(output_dir=tmp_path, architectures=first, seed=1, max_steps=3, resume=True)
    # the description is prose: rewording it does not stop a resume
    reworded = dataclasses.replace(PRESETS["smoke"], description="reworded")
    assert study.run_study(reworded, output_dir=tmp_path, architectures=first, seed=1, resume=True)["seed"] == 1
    # without resume the file is replaced only when asked (issue 19)
    assert study.run_study(output_dir=tmp_path, architectures=first, seed=2, overwrite=True)["seed"] == 2


def test_a_finished_study_is_never_replaced_unasked(monkeypatch, tmp_path, capsys):
    from longctx.experiments import study

    fake_architecture_runs(monkeypatch)
    first = list(longctx.ARCHITECTURES)[0]
    study.run_study(output_dir=tmp_path, architectures=first, seed=1)
    written = (tmp_path / study.RESULTS_FILE).read_text()
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        study.run_study(output_dir=tmp_path, architectures=first, seed=2)
    spec = importlib.util.spec_from_file_location("run_study_script", REPO_ROOT / "scripts" / "run_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--output_dir", str(tmp_path), "--architectures", first, "--seed", "2"]) == 2
    assert "earlier study" in capsys.readouterr().err
    assert (tmp_path / study.RESULTS_FILE).read_text() == written
    assert script.main(["--output_dir", str(tmp_path), "--architectures", first, "--seed", "2",
                        "--overwrite_output_dir"]) == 0
    assert json.loads((tmp_path / study.RESULTS_FILE).read_text())["seed"] == 2


def test_report_shows_a_study_with_the_command_of_each_row(monkeypatch, tmp_path):
    import torch

    from longctx.experiments import study
    from longctx.experiments.report import build_report

    first, second = list(longctx.ARCHITECTURES)[:2]
    fake_architecture_runs(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["scripts/run_study.py", "--architectures", first])
    study.run_study(output_dir=tmp_path / "study", architectures=first)
    monkeypatch.setattr(sys, "argv", ["scripts/run_study.py", "--resume"])
    results = study.run_study(output_dir=tmp_path / "study", architectures=f"{first},{second}", resume=True)

    report = build_report([tmp_path / "study"], tmp_path / "REPORT.md")
    assert "Preset `smoke`" in report
    lines = {row["architecture"]: next(line for line in report.splitlines() if line.startswith(f"| {row['architecture']} "))
             for row in results["results"]}
    for row in results["results"]:
        assert f"| {row['language_modeling']['perplexity']:.2f} |" in lines[row["architecture"]]
        assert f"cpu, {torch.get_num_threads()} threads" in lines[row["architecture"]]
    assert "`python scripts/run_study.py --architectures " + first + "`" in report
    assert "`python scripts/run_study.py --resume`" in report


# --------------------------------------------------------------------------- T5 (issue 23)


def test_t5_entry_is_transformers_t5_at_the_presets_size():
    import transformers
    from transformers import AutoModelForSequenceClassification
    from longctx.experiments import study

    preset = PRESETS["smoke"]
    config = study.build_config("hf-t5", preset, 512, is_decoder=False, num_labels=2)
    assert type(config) is transformers.T5Config
    assert (config.d_model, config.num_layers, config.num_decoder_layers, config.num_heads, config.d_ff,
            config.d_kv) == (128, 2, 2, 4, 256, 32)
    # the byte tokenizer's ids; attention dropout off as the preset asks (T5 has one rate)
    tokenizer = longctx.byte_tokenizer()
    assert (config.pad_token_id, config.eos_token_id, config.vocab_size) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, len(tokenizer))
    assert config.dropout_rate == 0.0 and config.num_labels == 2
    assert type(AutoModelForSequenceClassification.from_config(config)) is transformers.T5ForSequenceClassification
    with pytest.raises(ValueError, match="mem_len"):
        study.build_config("hf-t5", dataclasses.replace(preset, model=dict(preset.model, mem_len=8)), 512)


def test_t5_rows_end_with_eos_and_its_classifier_reads_the_eos_state():
    """Rows for T5 are cut one byte short and closed with </s>; T5ForSequenceClassification pools
    the decoder state at that </s>, so logits change with the text but not with the padding."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from longctx.experiments import study

    tokenizer = longctx.byte_tokenizer()
    rows = [{"text": "short", "label": 0}, {"text": "x" * 50, "label": 1}]
    plain = study.classification_dataset(rows, tokenizer, 16)
    closed = study.classification_dataset(rows, tokenizer, 16, eos_at_end=True)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert closed["input_ids"][0] == plain["input_ids"][0][:6] + [eos] + [pad] * 9
    assert closed["input_ids"][1] == plain["input_ids"][1][:15] + [eos]
    assert closed["attention_mask"][0] == [1] * 7 + [0] * 9 and closed["labels"] == [0, 1]

    torch.manual_seed(0)
    config = study.build_config("hf-t5", dataclasses.replace(PRESETS["smoke"], model=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        attention_probs_dropout_prob=0.0)), 16, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids, mask = torch.tensor(closed["input_ids"]), torch.tensor(closed["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        longer = model(input_ids=torch.cat([ids, torch.full((2, 4), pad)], 1),
                       attention_mask=torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)).logits
    assert torch.allclose(logits, longer, atol=1e-5)  # more padding after </s>: the same logits
    assert not torch.allclose(logits[0], logits[1])


def test_report_draws_the_study_pictures_from_its_json_and_links_them(tmp_path):
    from longctx.experiments.report import build_report
    from longctx.experiments.study_plots import confusion_matrices, loss_by_position

    rows = [{"architecture": "a", "classification": {"confusion_matrix": [[3, 1], [2, 4]], "accuracy": 0.7,
                                                     "f1": 0.7},
             "language_modeling": {"perplexity": 4.0, "bits_per_byte": 2.0, "tokens_per_s": 10.0,
                                   "peak_memory_mib": 1.0,
                                   "by_position": [{"positions": [1, 128], "tokens": 254, "loss": math.log(8)},
                                                   {"positions": [128, 512], "tokens": 0, "loss": None}]},
             "skipped": [], "errors": {}},
            {"architecture": "b", "classification": None, "language_modeling": None, "skipped": ["x"],
             "errors": {}}]
    assert confusion_matrices(rows) == {"a": [[3, 1], [2, 4]]}
    assert loss_by_position(rows) == {"a": [(128, pytest.approx(3.0))]}  # ln 8 nats = 3 bits
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "study_results.json").write_text(json.dumps(
        {"preset": {"name": "smoke", "model": {}}, "seed": 0, "results": rows}), encoding="utf-8")
    report = build_report([tmp_path], tmp_path / "REPORT.md")
    for name in ("confusion_matrices", "lm_loss_by_position"):
        assert (study_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}](study/{name}.png)" in report
    # pictures already there are the run's own: kept, not redrawn
    (study_dir / "confusion_matrices.png").write_bytes(b"kept")
    build_report([tmp_path], tmp_path / "REPORT.md")
    assert (study_dir / "confusion_matrices.png").read_bytes() == b"kept"


def test_script_hands_the_pretrained_presets_to_the_pretrained_study(tmp_path, monkeypatch):
    from longctx.experiments import pretrained_study

    spec = importlib.util.spec_from_file_location("run_study_script", REPO_ROOT / "scripts" / "run_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    handed = []
    monkeypatch.setattr(pretrained_study, "main", lambda argv: handed.append(argv) or 7)
    argv = ["--preset", "pretrained-cpu", "--data_dir", str(tmp_path), "--tasks", "imdb"]
    assert script.main(argv) == 7
    assert handed == [argv]
    monkeypatch.setattr(script.study, "run_study",
                        lambda **kwargs: handed.append(kwargs) or {"results": []})
    assert script.main(["--preset", "smoke", "--output_dir", str(tmp_path / "s")]) == 0
    assert handed[-1]["preset"] == "smoke"
