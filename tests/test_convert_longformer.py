"""transformers' Longformer -> longctx-longformer: build each transformers class with random
weights, convert (in memory, and through a checkpoint folder and the CLI), compare outputs."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import LongformerConfig

import longctx  # noqa: F401
from longctx.convert import convert_checkpoint, convert_transformers_model

SEP, PAD, BOS = 2, 1, 0
CLASSES = ["LongformerModel", "LongformerForMaskedLM", "LongformerForSequenceClassification",
           "LongformerForQuestionAnswering"]
AUTO = {"LongformerModel": "AutoModel", "LongformerForMaskedLM": "AutoModelForMaskedLM",
        "LongformerForSequenceClassification": "AutoModelForSequenceClassification",
        "LongformerForQuestionAnswering": "AutoModelForQuestionAnswering"}


def reference(class_name: str, window, seed=0):
    torch.manual_seed(seed)
    config = LongformerConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, attention_window=window, max_position_embeddings=66,
                              pad_token_id=PAD, bos_token_id=BOS, eos_token_id=SEP, sep_token_id=SEP, num_labels=2)
    return getattr(transformers, class_name)(config).eval()


def batch():
    """Three rows, right padded to 23 tokens (not a multiple of any window), in the QA layout
    `<s> question </s></s> context </s>` that transformers' QA head requires; rows 0 and 1 also
    get explicit global tokens, different counts per row."""
    gen = torch.Generator().manual_seed(1)
    rows, lengths, questions = [], [23, 17, 9], [4, 6, 2]
    for length, question in zip(lengths, questions):
        body = torch.randint(3, 100, (length,), generator=gen)
        body[0], body[question + 1], body[question + 2], body[length - 1] = BOS, SEP, SEP, SEP
        rows.append(torch.cat([body, torch.full((23 - length,), PAD)]))
    ids = torch.stack(rows)
    mask = (torch.arange(23)[None, :] < torch.tensor(lengths)[:, None]).long()
    global_mask = torch.zeros_like(ids)
    global_mask[0, [0, 5, 20]] = 1
    global_mask[1, 3] = 1
    return ids, mask, global_mask


def outputs(model, class_name, **inputs):
    with torch.no_grad():
        out = model(**inputs)
    if class_name == "LongformerModel":
        return [out.last_hidden_state]
    if class_name == "LongformerForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def assert_same(theirs, ours, class_name, mask):
    for a, b in zip(theirs, ours):
        if class_name == "LongformerForSequenceClassification":
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        else:  # per-token outputs: only real tokens are comparable
            torch.testing.assert_close(b[mask.bool()], a[mask.bool()], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [[4, 6], 4])
@pytest.mark.parametrize("class_name", CLASSES)
def test_in_memory_conversion_matches_transformers(class_name, window):
    hf = reference(class_name, window)
    ours = convert_transformers_model(hf)
    ids, mask, global_mask = batch()
    explicit = dict(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask)
    assert_same(outputs(hf, class_name, **explicit), outputs(ours, class_name, **explicit), class_name, mask)
    # The heads' default global attention: first token (classification), question (QA), none otherwise.
    default = dict(input_ids=ids, attention_mask=mask)
    assert_same(outputs(hf, class_name, **default), outputs(ours, class_name, **default), class_name, mask)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_checkpoint_folder_and_cli_convert(tmp_path, weights):
    class_name = "LongformerForMaskedLM"
    hf = reference(class_name, [4, 6], seed=3)
    source = tmp_path / "source"
    hf.save_pretrained(source)
    if weights == "bin":  # an old-style checkpoint: must be read with weights_only=True
        (source / "model.safetensors").unlink()
        torch.save(hf.state_dict(), source / "pytorch_model.bin")
    result = subprocess.run([sys.executable, "-m", "longctx.convert", str(source), str(tmp_path / "cli")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    convert_checkpoint(source, tmp_path / "api")
    ids, mask, global_mask = batch()
    inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask)
    for folder in ("cli", "api"):
        assert json.loads((tmp_path / folder / "config.json").read_text())["model_type"] == "longctx-longformer"
        ours = getattr(transformers, AUTO[class_name]).from_pretrained(tmp_path / folder).eval()
        assert_same(outputs(hf, class_name, **inputs), outputs(ours, class_name, **inputs), class_name, mask)


def test_unsupported_source_raises_value_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="supported"):
        convert_checkpoint(tmp_path, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        convert_checkpoint(empty, tmp_path / "out2")


def test_question_answering_with_other_than_two_labels_raises():
    hf = reference("LongformerForQuestionAnswering", 4)
    hf.config.num_labels = 3
    with pytest.raises(ValueError, match="num_labels"):
        convert_transformers_model(hf)
