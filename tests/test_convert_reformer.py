"""transformers' Reformer -> longctx-reformer: build each transformers class with random weights
and a fixed hash_seed, convert (in memory, and through a checkpoint folder and the CLI), compare
outputs on a right-padded batch whose length is not a multiple of the chunk lengths."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import ReformerConfig

import longctx
from longctx.convert import CONVERTERS, convert_state, convert_transformers_model

VOCAB, PAD, LENGTH = 60, 0, 21
AUTO = CONVERTERS["reformer"].heads
TOLERANCE = 1e-4
CASES = [  # class, is_decoder, attn_layers, num_buckets, num_hashes, axial
    ("ReformerModel", False, ["local", "lsh", "local", "lsh"], [2, 4], 2, True),
    ("ReformerModel", True, ["lsh", "local"], 4, 1, False),
    ("ReformerModelWithLMHead", True, ["local", "lsh", "lsh"], 4, 2, True),
    ("ReformerForMaskedLM", False, ["lsh", "local"], [4, 2], 3, True),
    ("ReformerForSequenceClassification", False, ["local", "lsh"], 4, 2, True),
    ("ReformerForQuestionAnswering", False, ["lsh", "local", "lsh"], 8, 1, False),
]


def reference(class_name: str, is_decoder=False, attn_layers=("local", "lsh"), num_buckets=4, num_hashes=2,
              axial=True, seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, attention_head_size=12,
                  attn_layers=list(attn_layers), feed_forward_size=48, hidden_act="gelu", is_decoder=is_decoder,
                  lsh_attn_chunk_length=4, local_attn_chunk_length=8, num_buckets=num_buckets, num_hashes=num_hashes,
                  hash_seed=11, lsh_num_chunks_before=1, lsh_num_chunks_after=0 if is_decoder else 1,
                  local_num_chunks_before=1, local_num_chunks_after=0, axial_pos_embds=axial,
                  axial_pos_shape=(4, 16), axial_pos_embds_dim=(12, 20), max_position_embeddings=64,
                  hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
                  pad_token_id=PAD, eos_token_id=2, num_labels=2, chunk_size_feed_forward=0)
    model = getattr(transformers, class_name)(ReformerConfig(**{**fields, **overrides})).eval()
    # transformers' init leaves biases at 0 and LayerNorm at 1 (a swapped bias would go unseen) and
    # its small weights make attention nearly uniform (a masking error would barely show): redraw.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm.weight" in name:
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:  # also lm_head.bias, which transformers 5 keeps without adding it
                parameter.normal_(0, 0.3)
    return model


def batch():
    """Three rows right padded to 21 tokens (a multiple of neither chunk length: 4, 8)."""
    gen = torch.Generator().manual_seed(1)
    lengths = [21, 14, 6]
    ids = torch.full((len(lengths), LENGTH), PAD)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, VOCAB, (length,), generator=gen)
    mask = (torch.arange(LENGTH)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def outputs(model, class_name, **inputs):
    with torch.no_grad():
        out = model(**inputs)
    if class_name == "ReformerModel":
        return [out.last_hidden_state]
    if class_name == "ReformerForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def assert_same(theirs, ours, class_name, mask) -> float:
    """Outputs within TOLERANCE (per-token ones on real tokens only); returns the max abs difference."""
    worst = 0.0
    for a, b in zip(theirs, ours, strict=True):
        if class_name != "ReformerForSequenceClassification" and mask is not None:
            a, b = a[mask.bool()], b[mask.bool()]
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=TOLERANCE, atol=TOLERANCE)
        worst = max(worst, float((a - b).abs().max()))
    return worst


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-decoder{c[1]}-{len(c[2])}layers" for c in CASES])
def test_in_memory_conversion_matches_transformers(case):
    class_name, is_decoder, attn_layers, num_buckets, num_hashes, axial = case
    hf = reference(class_name, is_decoder, attn_layers, num_buckets, num_hashes, axial)
    ours = convert_transformers_model(hf)
    assert ours.config.model_type == "longctx-reformer" and not ours.training
    assert type(ours) is longctx.ARCHITECTURES["longctx-reformer"].auto_classes()[AUTO[class_name]]
    ids, mask = batch()
    assert_same(outputs(hf, class_name, input_ids=ids, attention_mask=mask),
                outputs(ours, class_name, input_ids=ids, attention_mask=mask), class_name, mask)
    # Unpadded, a multiple of both chunk lengths (no padding inside either model).
    full = ids[:1, :16]
    assert_same(outputs(hf, class_name, input_ids=full), outputs(ours, class_name, input_ids=full), class_name, None)


# The LM head's output bias as each transformers version computed it: 4.x added `lm_head.bias`
# (tied to `lm_head.decoder.bias`; a safetensors file keeps one of the two), 5.0-5.23 added none
# (`lm_head.bias` kept, unused), 5.24+ adds `lm_head.decoder.bias` (`lm_head.bias` kept, unused).
BIAS_LAYOUTS = {  # saving version -> (the bias keys its checkpoint holds, the key it adds or None)
    "4.35.2": (["lm_head.bias"], "lm_head.bias"),
    "4.30.0": (["lm_head.bias", "lm_head.decoder.bias"], "lm_head.bias"),  # pytorch_model.bin
    "5.0.0": (["lm_head.bias"], None),
    "5.23.0": (["lm_head.bias"], None),
    "5.24.0": (["lm_head.bias", "lm_head.decoder.bias"], "lm_head.decoder.bias"),
    "5.25.0": (["lm_head.bias", "lm_head.decoder.bias"], "lm_head.decoder.bias"),
}


@pytest.mark.parametrize("version", sorted(BIAS_LAYOUTS))
def test_lm_head_bias_is_the_one_the_saving_version_adds(version):
    keys, added = BIAS_LAYOUTS[version]
    hf = reference("ReformerForMaskedLM")
    state = {k: v for k, v in hf.state_dict().items() if not k.startswith("lm_head.")}
    state["lm_head.decoder.weight"] = hf.lm_head.decoder.weight.detach()
    tied = torch.randn(VOCAB)
    for key in keys:  # 4.x's two keys are one tensor; 5.x's are two
        state[key] = tied if version < "5" else torch.randn(VOCAB)
    source_config = {**hf.config.to_dict(), "transformers_version": version}
    ours = convert_state(source_config, state, "ReformerForMaskedLM")
    expected_bias = state[added] if added else torch.zeros(VOCAB)
    ids, mask = batch()
    hidden = ours.model(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours(ids, attention_mask=mask).logits,
                               hidden @ hf.lm_head.decoder.weight.T + expected_bias)


def test_lm_head_bias_of_the_installed_transformers_is_reproduced():
    """In memory, whatever transformers is installed: the converted LM logits are its own, with
    both bias parameters random (whichever it adds, the other must not be)."""
    hf = reference("ReformerForMaskedLM")
    ours = convert_transformers_model(hf)
    ids, mask = batch()
    assert_same(outputs(hf, "ReformerForMaskedLM", input_ids=ids, attention_mask=mask),
                outputs(ours, "ReformerForMaskedLM", input_ids=ids, attention_mask=mask),
                "ReformerForMaskedLM", mask)


def test_num_buckets_none_is_kept_for_the_model_to_choose():
    hf = reference("ReformerModel", num_buckets=None, attn_layers=["lsh", "lsh"])
    ours = convert_transformers_model(hf)
    assert ours.config.num_buckets is None
    ids = batch()[0][:1, :16]
    assert_same(outputs(hf, "ReformerModel", input_ids=ids), outputs(ours, "ReformerModel", input_ids=ids),
                "ReformerModel", None)
    assert ours.config.num_buckets == hf.config.num_buckets == 8


@pytest.mark.parametrize("class_name", ["ReformerModelWithLMHead", "ReformerForSequenceClassification"])
def test_checkpoint_folder_through_the_cli(tmp_path, class_name):
    is_decoder = class_name == "ReformerModelWithLMHead"
    hf = reference(class_name, is_decoder=is_decoder, seed=3)
    source, destination = tmp_path / "source", tmp_path / "converted"
    hf.save_pretrained(source)
    result = subprocess.run([sys.executable, "-m", "longctx.convert", str(source), str(destination)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "longctx-reformer" and AUTO[class_name] in config["auto_map"]
    assert (destination / "modeling_reformer.py").exists() and (destination / "reversible.py").exists()
    ours = getattr(transformers, AUTO[class_name]).from_pretrained(destination).eval()
    ids, mask = batch()
    assert_same(outputs(hf, class_name, input_ids=ids, attention_mask=mask),
                outputs(ours, class_name, input_ids=ids, attention_mask=mask), class_name, mask)


def test_question_answering_with_other_than_two_labels_raises():
    hf = reference("ReformerForQuestionAnswering", num_labels=3)
    with pytest.raises(ValueError, match="num_labels=3"):
        convert_transformers_model(hf)
