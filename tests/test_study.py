"""Tests for the seed study: metrics against hand-worked cases, and scripts/run_study.py end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import longctx
from longctx.language_modeling import evaluate_lm, lm_blocks, lm_scores
from longctx.study import (
    PRESETS,
    format_table,
    override_steps,
    select_architectures,
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
    assert select_architectures(None) == list(longctx.ARCHITECTURES)
    with pytest.raises(ValueError, match="available"):
        select_architectures("no-such-model")


def test_format_table_marks_skipped_tasks():
    rows = [{"architecture": "a", "classification": {"accuracy": 0.5, "f1": 0.25},
             "language_modeling": {"perplexity": 3.0, "bits_per_byte": 1.5, "tokens_per_s": 1234.0,
                                   "peak_memory_mib": 10.0}},
            {"architecture": "bbbb", "classification": None, "language_modeling": None}]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and "accuracy" in lines[0] and "1,234" in lines[2]
    assert lines[3].startswith("bbbb") and lines[3].count("n/a") == 6


# --------------------------------------------------------------------------- end to end


def test_run_study_script_end_to_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_study.py"), "--max_steps", "2",
         "--output_dir", str(tmp_path / "tmp")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "tmp" / "study_results.json").read_text())
    assert [row["architecture"] for row in results["results"]] == list(longctx.ARCHITECTURES)
    assert results["preset"]["classification"]["steps"] == results["preset"]["language_modeling"]["steps"] == 2
    assert {"torch", "transformers", "device"} <= set(results["environment"])
    assert results["metric_implementation"]
    for row in results["results"]:
        assert not row["errors"]
        heads = longctx.ARCHITECTURES[row["architecture"]].heads
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

    out = completed.stdout
    header = next(line for line in out.splitlines() if line.startswith("architecture"))
    for column in ("accuracy", "F1", "perplexity", "bits/byte", "train tok/s", "peak mem"):
        assert column in header
    for name in longctx.ARCHITECTURES:
        assert any(line.startswith(name + " ") and "|" in line for line in out.splitlines())
    assert "not results" in out


def test_tasks_are_skipped_for_missing_heads(monkeypatch, tmp_path):
    from longctx import study

    baseline = longctx.ARCHITECTURES["longctx-transformer"]
    encoder_only = longctx.Architecture(config=baseline.config, backbone=baseline.backbone, heads={})
    monkeypatch.setitem(longctx.ARCHITECTURES, "encoder-only", encoder_only)
    row = study.run_architecture("encoder-only", PRESETS["smoke"], seed=0, output_dir=tmp_path, metrics=None)
    assert row["classification"] is None and row["language_modeling"] is None and not row["errors"]
    assert len(row["skipped"]) == 2 and all("head" in reason for reason in row["skipped"])
