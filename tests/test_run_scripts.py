"""The run_*.py scripts end to end on the shipped samples (tiny models, a few steps), and the
argument handling they share (longctx/run_common.py)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from longctx.run_common import DataArguments, ModelArguments, parse_config_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "longctx" / "samples"
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
        DataArguments(train_file="data.txt")


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


def test_classification_refuses_labels_other_than_0_and_1(tmp_path, monkeypatch):
    rows = [{"text": "unlabelled review", "label": -1}, {"text": "good", "label": 1}]
    path = tmp_path / "unsup.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match="binary"):
        run_script("run_classification.py", ["--model_type", "longctx-transformer", "--config_overrides", TINY,
                                             "--train_file", str(path), "--output_dir", str(tmp_path / "o"),
                                             "--do_train", "--max_steps", "1"], monkeypatch)
