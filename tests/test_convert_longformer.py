"""transformers' Longformer -> longctx-longformer: build each transformers class with random
weights, convert (in memory, and through a checkpoint folder and the CLI), compare outputs."""

import json
import logging
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer, LongformerConfig

import longctx
from longctx.convert import CONVERTERS, convert_checkpoint, convert_transformers_model, main

BOS, PAD, SEP, VOCAB, LENGTH = 0, 1, 2, 100, 23
CLASSES = ["LongformerModel", "LongformerForMaskedLM", "LongformerForSequenceClassification",
           "LongformerForQuestionAnswering"]
AUTO = CONVERTERS["longformer"].heads
TOLERANCE = 1e-4


def reference(class_name: str, window=(4, 6), seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, attention_window=list(window) if isinstance(window, tuple) else window,
                  max_position_embeddings=64 + PAD + 1, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=SEP,
                  sep_token_id=SEP, num_labels=2)
    model = getattr(transformers, class_name)(LongformerConfig(**{**fields, **overrides})).eval()
    # transformers' init leaves biases at 0 and LayerNorm at 1 (a swapped bias would go unseen) and
    # its small weights make attention nearly uniform (a masking error would barely show): redraw.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm.weight" in name or "layer_norm.weight" in name:
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0, 0.2)
    return model


def batch():
    """Four rows right padded to 23 tokens (not a multiple of any window), in the QA layout
    `<s> question </s></s> context </s>` that transformers' QA head requires (exactly three
    separators per row); token types 1 on the context; explicit global tokens 3, 2, 1 and 0 per
    row (row 2 also flags a padding position, which must not become global)."""
    gen = torch.Generator().manual_seed(1)
    lengths, questions = [23, 17, 9, 20], [4, 6, 2, 3]
    ids = torch.full((len(lengths), LENGTH), PAD)
    types = torch.zeros_like(ids)
    for row, (length, question) in enumerate(zip(lengths, questions)):
        ids[row, :length] = torch.randint(3, VOCAB, (length,), generator=gen)
        ids[row, [0, question + 1, question + 2, length - 1]] = torch.tensor([BOS, SEP, SEP, SEP])
        types[row, question + 3:length] = 1
    mask = (torch.arange(LENGTH)[None, :] < torch.tensor(lengths)[:, None]).long()
    global_mask = torch.zeros_like(ids)
    for row, positions in enumerate([[0, 5, 20], [3, 10], [1, 15], []]):
        global_mask[row, positions] = 1
    return ids, mask, types, global_mask


def outputs(model, class_name, **inputs):
    with torch.no_grad():
        out = model(**inputs)
    if class_name == "LongformerModel":
        return [out.last_hidden_state]
    if class_name == "LongformerForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def assert_same(theirs, ours, class_name, mask) -> float:
    """Outputs within TOLERANCE (per-token ones on real tokens only); returns the max abs difference."""
    worst = 0.0
    for a, b in zip(theirs, ours, strict=True):
        if class_name != "LongformerForSequenceClassification":
            a, b = a[mask.bool()], b[mask.bool()]
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=TOLERANCE, atol=TOLERANCE)
        worst = max(worst, float((a - b).abs().max()))
    return worst


@pytest.mark.parametrize("window", [(4, 6), 4], ids=["per-layer", "int"])
@pytest.mark.parametrize("class_name", CLASSES)
def test_in_memory_conversion_matches_transformers(class_name, window):
    hf = reference(class_name, window)
    ours = convert_transformers_model(hf)
    assert ours.config.model_type == "longctx-longformer" and not ours.training
    assert type(ours) is longctx.ARCHITECTURES["longctx-longformer"].auto_classes()[AUTO[class_name]]
    ids, mask, types, global_mask = batch()
    explicit = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, global_attention_mask=global_mask)
    assert_same(outputs(hf, class_name, **explicit), outputs(ours, class_name, **explicit), class_name, mask)
    # The heads' default global attention: first token (classification), question (QA), none otherwise.
    default = dict(input_ids=ids, attention_mask=mask)
    assert_same(outputs(hf, class_name, **default), outputs(ours, class_name, **default), class_name, mask)


def test_cpu_block_band_path_matches_transformers(monkeypatch):
    """A window large enough for the CPU block-band kernel (one-sided 32: blocks of 32), 150
    tokens with right padding and global tokens: still transformers' numbers."""
    calls = []
    original = longctx.attention_sliding.block_band_attention
    monkeypatch.setattr(longctx.attention_sliding, "block_band_attention",
                        lambda *a, **k: calls.append(k["block"]) or original(*a, **k))
    hf = reference("LongformerModel", window=64, seed=3, max_position_embeddings=160 + PAD + 1)
    ours = convert_transformers_model(hf)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (2, 150), generator=gen)
    mask = (torch.arange(150)[None, :] < torch.tensor([[150], [97]])).long()
    global_mask = torch.zeros_like(ids)
    global_mask[0, [0, 140]] = global_mask[1, 5] = 1
    inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask)
    assert_same(outputs(hf, "LongformerModel", **inputs), outputs(ours, "LongformerModel", **inputs),
                "LongformerModel", mask)
    assert calls == [32, 32]  # both layers went through it


def test_backbone_from_inputs_embeds_matches_transformers():
    hf = reference("LongformerModel", seed=5)
    ours = convert_transformers_model(hf)
    ids, mask, types, global_mask = batch()
    embeds = hf.embeddings.word_embeddings(ids).detach()
    inputs = dict(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types, global_attention_mask=global_mask)
    assert_same(outputs(hf, "LongformerModel", **inputs), outputs(ours, "LongformerModel", **inputs),
                "LongformerModel", mask)


def test_masked_lm_keeps_tied_decoder_and_dtype():
    hf = reference("LongformerForMaskedLM").to(torch.bfloat16)
    ours = convert_transformers_model(hf)
    assert ours.lm_head.decoder.weight is ours.model.embeddings.word_embeddings.weight
    assert ours.model.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    # Positions: ours start at 0, RoBERTa's at pad_token_id + 1.
    assert ours.config.max_position_embeddings == 64
    torch.testing.assert_close(ours.model.embeddings.position_embeddings.weight,
                               hf.longformer.embeddings.position_embeddings.weight[PAD + 1:], rtol=0, atol=0)


def test_pooler_is_dropped_with_a_warning(caplog):
    hf = reference("LongformerModel")
    assert hf.pooler is not None
    with caplog.at_level(logging.WARNING, logger="longctx.convert_longformer"):
        convert_transformers_model(hf)
    assert "pooler.dense.weight" in caplog.text


@pytest.mark.parametrize("class_name", CLASSES)
def test_checkpoint_folder_through_the_cli(tmp_path, class_name):
    """save_pretrained folder (with a tokenizer) -> `python -m longctx.convert` -> Auto classes."""
    hf = reference(class_name, seed=3)
    source, destination = tmp_path / "source", tmp_path / "converted"
    hf.save_pretrained(source)
    longctx.byte_tokenizer().save_pretrained(source)
    result = subprocess.run([sys.executable, "-m", "longctx.convert", str(source), str(destination)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("pooler" in result.stderr) == (class_name == "LongformerModel")
    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "longctx-longformer" and AUTO[class_name] in config["auto_map"]
    assert (destination / "model.safetensors").exists() and (destination / "modeling_longformer.py").exists()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (destination / name).read_bytes() == (source / name).read_bytes()
    assert AutoTokenizer.from_pretrained(destination)("ab")["input_ids"] is not None
    ours = getattr(transformers, AUTO[class_name]).from_pretrained(destination).eval()
    ids, mask, types, global_mask = batch()
    for inputs in (dict(input_ids=ids, attention_mask=mask, token_type_ids=types, global_attention_mask=global_mask),
                   dict(input_ids=ids, attention_mask=mask)):
        assert_same(outputs(hf, class_name, **inputs), outputs(ours, class_name, **inputs), class_name, mask)


def write_bin_shards(state: dict, folder, shards: int):
    """An old-style pytorch_model.bin checkpoint (torch.save of tensors), sharded when shards > 1."""
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    keys, weight_map = sorted(state), {}
    for shard in range(shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
        part = {key: state[key].clone() for key in keys[shard::shards]}
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_safetensors_shards(state: dict, folder, shards: int):
    keys, weight_map = sorted(state), {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].contiguous().clone() for key in keys[shard::shards]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["bin", "bin-sharded", "safetensors-sharded"])
def test_other_weight_layouts_convert(tmp_path, layout):
    class_name = "LongformerForSequenceClassification"
    hf = reference(class_name, seed=4)
    source = tmp_path / "source"
    hf.save_pretrained(source)
    (source / "model.safetensors").unlink()
    state = hf.state_dict()
    if layout.startswith("bin"):
        write_bin_shards(state, source, shards=3 if layout.endswith("sharded") else 1)
    else:
        write_safetensors_shards(state, source, shards=3)
    ours = getattr(transformers, AUTO[class_name]).from_pretrained(convert_checkpoint(source, tmp_path / "out"))
    ids, mask, types, global_mask = batch()
    inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask)
    assert_same(outputs(hf, class_name, **inputs), outputs(ours.eval(), class_name, **inputs), class_name, mask)


def test_unsupported_source_raises_value_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="model_type='gpt2'.*supported model types: \\['longformer'"):
        convert_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:  # the CLI: an error message, not a traceback
        main([str(tmp_path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        convert_checkpoint(empty, tmp_path / "out2")


def test_unsupported_head_and_missing_weights_raise(tmp_path):
    hf = reference("LongformerForTokenClassification")
    with pytest.raises(ValueError, match="LongformerForTokenClassification.*LongformerForMaskedLM"):
        convert_transformers_model(hf)
    hf = reference("LongformerForMaskedLM")
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        convert_checkpoint(tmp_path, tmp_path / "out")


def test_incomplete_or_extra_weights_raise(tmp_path):
    hf = reference("LongformerForSequenceClassification")
    state = dict(hf.state_dict())
    hf.save_pretrained(tmp_path)
    del state["classifier.out_proj.bias"]
    state["longformer.encoder.layer.0.extra.weight"] = torch.zeros(2)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="classifier.out_proj.bias.*longformer.encoder.layer.0.extra.weight"):
        convert_checkpoint(tmp_path, tmp_path / "out")


def test_question_answering_with_other_than_two_labels_raises():
    hf = reference("LongformerForQuestionAnswering", num_labels=3)
    with pytest.raises(ValueError, match="num_labels=3"):
        convert_transformers_model(hf)
