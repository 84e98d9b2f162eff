"""Language-modelling evaluation: position buckets, the loss by position, bits per character."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.experiments.language_modeling import evaluate_lm, evaluate_with_memory, position_buckets


def test_position_buckets_grow_fourfold_and_cover_every_predicted_position():
    assert position_buckets(1000) == [(1, 128), (128, 512), (512, 1000)]
    assert position_buckets(100) == [(1, 100)]
    assert position_buckets(2048) == [(1, 128), (128, 512), (512, 2048)]


def tiny_decoder():
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transformer", is_decoder=True, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=16, max_position_embeddings=300)
    return AutoModelForCausalLM.from_config(config)


def test_loss_by_position_adds_up_to_the_total_and_counts_characters_not_bytes():
    text = "Grüße aus Zürich, schöne Grüße! " * 12  # multi-byte characters: fewer characters than bytes
    ids = [5 + b for b in text.encode("utf-8")]
    scores = evaluate_lm(tiny_decoder(), ids, block_size=300, batch_size=2, num_characters=len(text))
    buckets = scores["by_position"]
    assert sum(b["tokens"] for b in buckets) == scores["predicted_bytes"]
    weighted = sum(b["loss"] * b["tokens"] for b in buckets) / scores["predicted_bytes"]
    assert weighted == pytest.approx(scores["loss"], rel=1e-9)
    assert scores["bits_per_character"] == pytest.approx(scores["bits_per_byte"] * len(ids) / len(text))
    assert scores["bits_per_character"] > scores["bits_per_byte"]
    assert all(math.isclose(b["perplexity"], math.exp(b["loss"])) for b in buckets)


def test_too_short_text_raises_value_error():
    with pytest.raises(ValueError, match="nothing to score"):
        evaluate_lm(tiny_decoder(), [7], block_size=8, batch_size=1)


def tiny_transfo_xl(mem_len: int, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, mem_len=mem_len, vocab_size=261, cutoffs=[], **overrides)
    model = AutoModelForCausalLM.from_config(config)
    for parameter in model.parameters():  # larger weights: sharper predictions, so differences show
        parameter.data.normal_(0, 0.3)
    return model


def test_memory_covering_the_text_scores_like_recomputing_the_whole_prefix():
    """With a memory holding everything seen, each segment's tokens attend exactly the keys a
    fresh forward over the whole prefix would: the two evaluations give the same losses."""
    from longctx.experiments.language_modeling import memory_versus_recompute
    ids = torch.randint(5, 261, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    result = memory_versus_recompute(tiny_transfo_xl(mem_len=128), ids, segment_length=25, context_length=128)
    assert result["with_memory"]["tokens"] == result["fixed_context"]["tokens"] == 96  # 4 segment starts unscored
    assert result["with_memory"]["loss"] == pytest.approx(result["fixed_context"]["loss"], rel=1e-5)
    assert result["slowdown"] > 0


def test_a_short_memory_changes_the_scores():
    from longctx.experiments.language_modeling import memory_versus_recompute
    ids = torch.randint(5, 261, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    result = memory_versus_recompute(tiny_transfo_xl(mem_len=5), ids, segment_length=25, context_length=128)
    assert result["with_memory"]["loss"] != pytest.approx(result["fixed_context"]["loss"], rel=1e-5)


# --------------------------------------------------------------------------- training with memory


def test_stream_segments_continue_each_row_in_the_next_batch():
    from longctx.experiments.language_modeling import stream_segments
    ids = list(range(1000, 1100))
    data = stream_segments(ids, batch_size=3, segment_length=10)  # 3 streams of 33 tokens: 3 segments each
    rows = data["input_ids"]
    assert len(rows) == 9 and all(len(row) == 10 for row in rows)
    for k in range(3):
        for r in range(3):
            assert rows[k * 3 + r] == ids[r * 33 + k * 10:r * 33 + k * 10 + 10]
            if k:  # row r of batch k starts where row r of batch k - 1 ended
                assert rows[k * 3 + r][0] == rows[(k - 1) * 3 + r][-1] + 1
    assert data["labels"] == rows


def test_stream_segments_refuse_a_text_too_short_for_the_batch():
    from longctx.experiments.language_modeling import stream_segments
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        stream_segments(list(range(50)), batch_size=8, segment_length=10)


def test_segment_memory_trainer_carries_the_memory_between_steps_and_restarts_each_epoch(tmp_path):
    """With learning rate 0 the weights stay put, so each logged step loss must equal the loss
    of that batch computed by hand: from the memory of the previous batch within an epoch, from an
    empty memory at an epoch's first step."""
    from transformers import TrainingArguments
    from longctx.experiments.language_modeling import (
        SegmentMemoryTrainer,
        stream_segments,
        trains_with_memory,
    )
    model = tiny_transfo_xl(mem_len=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = torch.randint(5, 261, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    data = stream_segments(ids, batch_size=2, segment_length=12)  # 8 segments per stream: 8 steps an epoch
    assert trains_with_memory(model) and not trains_with_memory(tiny_transfo_xl(mem_len=0))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=10, learning_rate=0.0,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             weight_decay=0.0)
    trainer = SegmentMemoryTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    batches = [torch.tensor(data["input_ids"][k * 2:k * 2 + 2]) for k in range(8)]
    expected, memory = [], None
    with torch.no_grad():
        for batch in batches + batches[:2]:  # the second epoch restarts
            if batch is batches[0]:
                memory = None
            out = model(batch, labels=batch, mems=memory)
            expected.append(float(out.loss))
            memory = out.mems
        alone = float(model(batches[1], labels=batches[1]).loss)
    assert len(logged) == 10
    assert logged == pytest.approx(expected, rel=1e-3)
    assert alone != pytest.approx(expected[1], rel=1e-3)  # the memory made a difference


def test_memory_evaluation_reports_loss_by_position_in_the_segment():
    """The buckets of `evaluate_with_memory` against the per-token losses of the same model calls
    made by hand: bucket (1, 128) averages positions 1..127 of both segments, (128, 200) the rest."""
    model = tiny_transfo_xl(mem_len=64)
    ids = torch.randint(5, 261, (400,), generator=torch.Generator().manual_seed(2)).tolist()
    scores = evaluate_with_memory(model, ids, segment_length=200)
    memory, losses = None, []
    with torch.no_grad():
        for start in (0, 200):
            segment = torch.tensor([ids[start:start + 200]])
            output = model(input_ids=segment, labels=segment, mems=memory)
            memory = output.mems
            losses.append(output.losses.double().reshape(-1))  # targets at positions 1..199
    losses = torch.stack(losses)  # (2 segments, 199)
    early, late = scores["by_position"]
    assert (early["positions"], early["tokens"]) == ([1, 128], 2 * 127)
    assert (late["positions"], late["tokens"]) == ([128, 200], 2 * 72)
    assert early["loss"] == pytest.approx(float(losses[:, :127].mean()), rel=1e-9)
    assert late["loss"] == pytest.approx(float(losses[:, 127:].mean()), rel=1e-9)
    assert scores["tokens"] == 398 and scores["loss"] == pytest.approx(float(losses.mean()), rel=1e-9)
