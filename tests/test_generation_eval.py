"""Generation evaluation: passages, the reference's perplexity, BLEU/ROUGE, and the script."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.experiments.generation_eval import Passage, TextSimilarity, passages, reference_scores

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_passages_are_spread_evenly_and_cut_prompt_then_reference():
    ids = list(range(100))
    items = passages(ids, count=3, prompt_length=10, continuation_length=5)
    assert [p.start for p in items] == [0, 42, 85]  # the last one ends at the text's end
    assert items[1].prompt == list(range(42, 52)) and items[1].reference == list(range(52, 57))
    assert items[2].reference[-1] == 99
    with pytest.raises(ValueError, match="fewer than one passage"):
        passages(ids[:14], count=1, prompt_length=10, continuation_length=5)
    with pytest.raises(ValueError, match="positive"):
        passages(ids, count=0, prompt_length=10, continuation_length=5)


def tiny_decoder():
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transformer", is_decoder=True, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config)


def test_reference_perplexity_scores_only_the_continuation():
    model = tiny_decoder()
    item = Passage(0, prompt=[10, 11, 12, 13], reference=[14, 15, 16])
    scores = reference_scores(model, [item])
    ids = torch.tensor([item.prompt + item.reference])
    labels = ids.clone()
    labels[0, :4] = -100  # the prompt is context, not scored
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss.item()
    assert scores["reference_tokens"] == 3
    assert scores["reference_loss"] == pytest.approx(expected, rel=1e-5)
    assert scores["reference_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_similarity_hand_worked_cases():
    similarity = TextSimilarity()
    same = similarity(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["rouge1"] == same["rougeL"] == pytest.approx(1.0)
    # unigrams: the x2, cat, on, mat shared out of 6 each side -> ROUGE-1 F = 5/6;
    # bigrams: "the cat", "on the", "the mat" shared out of 5 -> ROUGE-2 F = 3/5
    partial = similarity(["the cat is on the mat"], ["the cat sat on the mat"])
    assert partial["rouge1"] == pytest.approx(5 / 6) and partial["rouge2"] == pytest.approx(3 / 5)
    assert 0 < partial["bleu"] < 100
    assert similarity(["alpha beta"], ["gamma delta"])["bleu"] == 0.0
    with pytest.raises(ValueError, match="one each"):
        similarity(["a"], ["a", "b"])


def test_generation_script_writes_scores_and_generations(tmp_path, monkeypatch):
    import runpy
    out = tmp_path / "gen"
    monkeypatch.setattr(sys, "argv", [
        "run_generation.py", "--model_type", "longctx-longformer", "--config_overrides",
        "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,max_position_embeddings=256,"
        "attention_window=16", "--validation_file",
        str(REPO_ROOT / "longctx" / "experiments" / "samples" / "book_valid.txt"),
        "--num_passages", "3", "--prompt_length", "40", "--continuation_length", "12", "--output_dir", str(out)])
    runpy.run_path(str(REPO_ROOT / "scripts" / "run_generation.py"), run_name="__main__")
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_passages"] == 3 and results["eval_reference_tokens"] == 36
    assert results["eval_reference_perplexity"] > 1 and 0 <= results["eval_bleu"] <= 100
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["reference"] for row in rows)
