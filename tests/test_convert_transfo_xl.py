"""transformers 4.35.2's TransfoXL -> longctx-transfo-xl, against a recording.

tests/fixtures/transfo_xl_4352 holds a TransfoXLLMHeadModel with random weights (adaptive softmax
with div_val=2, same_length, clamp_len, mem_len) and its per-token losses and log-probs over three
consecutive segments carrying mems, recorded by scripts/record_transfo_xl_reference.py in a
virtual environment with transformers 4.35.2 (v5 has no TransfoXL), and a
TransfoXLForSequenceClassification with its logits and loss on a right-padded batch. Conversion
goes through `convert_checkpoint`, what `python -m longctx.convert` runs."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from longctx import convert
from longctx.convert_transfo_xl import TRANSFO_XL_CONVERTER

FIXTURE = Path(__file__).parent / "fixtures" / "transfo_xl_4352"
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(convert.CONVERTERS, "transfo-xl", TRANSFO_XL_CONVERTER)


def reference(folder: Path = FIXTURE):
    return load_file(folder / "reference.safetensors")


def zero_memory(config, batch: int):
    """transformers' first memory: mem_len zero vectors per layer (ours is empty by default)."""
    return [torch.zeros(batch, config.mem_len, config.hidden_size)] * config.num_hidden_layers


def run_segments(model, ids):
    """Per segment: (losses, log-probs), carrying the memory as the recording did."""
    memory, results = zero_memory(model.config, ids.shape[1]), []
    with torch.no_grad():
        for segment in ids:
            log_probs = model(segment, mems=memory).logits
            out = model(segment, labels=segment, mems=memory)
            results.append((out.losses, log_probs))
            memory = out.mems
    return results


def cluster_order(losses, labels, cutoffs):
    """transformers 4.35.2's order of `losses`: all tokens of the head cluster, then of each
    tail."""
    flat, targets = losses.flatten(), labels[:, 1:].flatten()
    cluster = torch.bucketize(targets, torch.tensor(cutoffs), right=True)
    return flat[torch.sort(cluster, stable=True).indices].view_as(losses)


@pytest.mark.parametrize("variant", ["", "pre_lnorm"],
                         ids=["adaptive-same-length", "pre-lnorm-shared-biases"])
def test_converted_checkpoint_reproduces_the_recorded_losses(tmp_path, variant):
    """Main fixture: div_val=2 adaptive input and softmax, same_length, clamp_len, post-LN.
    pre_lnorm: pre-LN, one (u, v) pair for all layers, div_val=1 with d_embed != d_model, an
    untied softmax, no clamping."""
    source = FIXTURE / variant if variant else FIXTURE
    destination = convert.convert_checkpoint(source, tmp_path / "ours")
    model = AutoModelForCausalLM.from_pretrained(destination).eval()
    assert model.config.model_type == "longctx-transfo-xl"
    assert model.config.pre_norm == (variant == "pre_lnorm")
    assert model.config.same_length == (variant == "")
    recorded = reference(source)
    worst = 0.0
    for s, (losses, log_probs) in enumerate(run_segments(model, recorded["input_ids"])):
        torch.testing.assert_close(losses, recorded["losses_in_order"][s], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(log_probs, recorded["log_probs"][s], rtol=0, atol=TOLERANCE)
        # transformers returned them grouped by cluster: the same numbers
        ordered = cluster_order(losses, recorded["input_ids"][s], model.config.cutoffs)
        torch.testing.assert_close(ordered, recorded["losses"][s], rtol=0, atol=TOLERANCE)
        worst = max(worst, float((losses - recorded["losses_in_order"][s]).abs().max()),
                    float((log_probs - recorded["log_probs"][s]).abs().max()))
    print(f"max |difference| vs transformers 4.35.2 ({variant or 'main'}): {worst:.2e}")


def test_memory_matters_in_the_recording():
    """The check above could not pass with a model that ignored its memory: the later segments'
    losses change when the memory is dropped."""
    model = convert.convert_state(json.loads((FIXTURE / "config.json").read_text()),
                                  load_file(FIXTURE / "model.safetensors"))
    ids = reference()["input_ids"]
    with torch.no_grad():
        without = model(ids[2], labels=ids[2]).losses
    assert (without - reference()["losses_in_order"][2]).abs().max() > 0.1


def test_pytorch_model_bin_is_read_with_weights_only_and_gives_the_same_model(tmp_path):
    """The .bin also holds the tied copies of the softmax weights: dropped, same model."""
    from_bin = AutoModelForCausalLM.from_pretrained(
        convert.convert_checkpoint(FIXTURE / "bin", tmp_path / "a"))
    from_safetensors = AutoModelForCausalLM.from_pretrained(
        convert.convert_checkpoint(FIXTURE, tmp_path / "b"))
    assert from_bin.state_dict().keys() == from_safetensors.state_dict().keys()
    for name, tensor in from_safetensors.state_dict().items():
        assert torch.equal(from_bin.state_dict()[name], tensor), name


class Payload:
    """Unpickling this without restrictions would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_pickle_with_code_is_refused(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(FIXTURE / "config.json", source / "config.json")
    marker = tmp_path / "pwned"
    state = dict(load_file(FIXTURE / "model.safetensors"), payload=Payload(marker))
    torch.save(state, source / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        convert.convert_checkpoint(source, tmp_path / "out")
    assert not marker.exists()


def test_command_line_and_backbone_conversion(tmp_path, capsys):
    convert.main([str(FIXTURE), str(tmp_path / "cli")])
    assert "converted" in capsys.readouterr().out
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "cli").eval()
    # A TransfoXLModel checkpoint: backbone keys without the `transformer.` prefix, no softmax.
    weights = load_file(FIXTURE / "model.safetensors")
    state = {key.removeprefix("transformer."): tensor for key, tensor in weights.items()
             if not key.startswith("crit.")}
    config = dict(json.loads((FIXTURE / "config.json").read_text()),
                  architectures=["TransfoXLModel"])
    backbone = convert.convert_state(config, state)
    assert isinstance(backbone, type(AutoModel.from_config(lm.config)))
    ids = reference()["input_ids"][0]
    with torch.no_grad():
        torch.testing.assert_close(backbone(ids).last_hidden_state, lm.model(ids).last_hidden_state,
                                   rtol=0, atol=0)


CLASSIFIER = FIXTURE / "sequence_classification"


def test_converted_classifier_reproduces_the_recorded_logits_and_loss(tmp_path):
    """TransfoXLForSequenceClassification: bias-free `score` on the last token before the padding,
    found from pad_token_id (transformers' TransfoXL takes no attention mask); zero first memory."""
    model = AutoModelForSequenceClassification.from_pretrained(
        convert.convert_checkpoint(CLASSIFIER, tmp_path / "ours")).eval()
    assert model.config.classifier_head == "linear" and model.config.num_labels == 3
    recorded = load_file(CLASSIFIER / "reference.safetensors")
    ids, labels = recorded["input_ids"], recorded["labels"]
    with torch.no_grad():
        out = model(ids, labels=labels, mems=zero_memory(model.config, ids.shape[0]))
        # The tokenizer's attention mask instead of the pad ids: the same rows are pooled.
        masked = model(ids, attention_mask=(ids != model.config.pad_token_id).long(),
                       mems=zero_memory(model.config, ids.shape[0]))
    torch.testing.assert_close(out.logits, recorded["logits"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(out.loss.reshape(1), recorded["loss"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(masked.logits, recorded["logits"], rtol=0, atol=TOLERANCE)


def test_the_classifier_recording_pools_padded_rows_before_the_padding():
    """The check above could not pass by pooling the last position: the recorded rows are padded,
    and their logits differ from the last position's."""
    model = convert.convert_state(json.loads((CLASSIFIER / "config.json").read_text()),
                                  load_file(CLASSIFIER / "model.safetensors"))
    recorded = load_file(CLASSIFIER / "reference.safetensors")
    ids = recorded["input_ids"]
    assert (ids[:, -1] == model.config.pad_token_id).any()
    with torch.no_grad():
        hidden = model.model(ids, mems=zero_memory(model.config, ids.shape[0])).last_hidden_state
    last_position = model.classifier(hidden[:, -1])
    padded = ids[:, -1] == model.config.pad_token_id
    assert (last_position[padded] - recorded["logits"][padded]).abs().max() > 0.1


def test_a_classifier_whose_score_cannot_read_the_hidden_states_is_refused():
    config = json.loads((CLASSIFIER / "config.json").read_text())
    state = load_file(CLASSIFIER / "model.safetensors")
    with pytest.raises(ValueError, match="d_embed=16 != d_model=32"):
        convert.convert_state(dict(config, d_embed=16), state)


def test_other_transfo_xl_heads_are_refused_with_the_supported_list():
    config = dict(json.loads((FIXTURE / "config.json").read_text()),
                  architectures=["TransfoXLForQuestionAnswering"])
    with pytest.raises(ValueError, match="TransfoXLForSequenceClassification"):
        convert.converter_for(config)
