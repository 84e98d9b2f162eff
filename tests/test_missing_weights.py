"""A checkpoint that lacks a weight loads that weight as initialised (transformers reports it
"newly initialized"), never as uninitialised memory -- for every weight of every architecture
and head, including those held in a ParameterList / ParameterDict (Reformer's axial position
embeddings, Transformer-XL's adaptive embedding and softmax).

Each weight is deleted from the saved file in turn and the model loaded again. The saved weights
are all NaN, so memory reused from an earlier model fails too; the loaded weight must then look
like a fresh model's: the same constant where the initialisation is a constant (biases 0,
LayerNorm weights 1), else finite, not constant and on the scale of a fresh draw.

This guards transformers internals that LongctxPreTrainedModel._initialize_weights relies on:
PreTrainedModel._initialize_weights (called per module when weights are initialised) and the
`_is_hf_initialized` flag it sets on loaded parameters."""

import os

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from longctx import ARCHITECTURES

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=64, num_labels=3)
CONFIGS = {  # one layer each, with every kind of parameter the architecture can have
    "transformer": ("longctx-transformer", dict(TINY, pre_norm=False, type_vocab_size=2)),
    "longformer": ("longctx-longformer", dict(TINY, attention_window=4)),
    "linformer": ("longctx-linformer", dict(TINY, projection_dim=8, sharing="layerwise")),
    "reformer": ("longctx-reformer", dict(TINY, num_hidden_layers=2, attn_layers=["local", "lsh"],
                                          axial_pos_shape=[8, 8], axial_pos_embds_dim=[16, 16])),
    "transfo-xl-adaptive": ("longctx-transfo-xl", dict(
        TINY, d_embed=32, cutoffs=[100, 200], div_val=2, tie_word_embeddings=False,
        tie_projs=[False, False, False], untie_r=True)),
    "transfo-xl-shared-biases": ("longctx-transfo-xl", dict(
        TINY, d_embed=16, cutoffs=[120], untie_r=False)),
}
CAUSAL = "AutoModelForCausalLM"


def build(model_type, config_kwargs, head, cls):
    config = ARCHITECTURES[model_type].config(**config_kwargs, is_decoder=head == CAUSAL)
    torch.manual_seed(0)
    return cls(config)


def specified_initialisation(model):
    """Every parameter as the architecture's `_init_weights` draws it, applied to every module
    directly (not through transformers' loader, whose skipping rules are under test)."""
    reference = type(model)(model.config)
    reference.apply(reference._init_weights)
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


def check_as_initialised(loaded, fresh, key):
    """`fresh`: the same parameter as `_init_weights` draws it."""
    assert torch.isfinite(loaded).all(), f"{key}: not finite after loading without it"
    if bool(fresh.min() == fresh.max()):  # a constant initialisation
        assert torch.equal(loaded, fresh), f"{key}: {loaded.flatten()[:4]} != {fresh.flatten()[:4]}"
        return
    assert bool(loaded.min() < loaded.max()), f"{key}: constant {loaded.flatten()[0]}, not drawn"
    largest, fresh_largest = float(loaded.abs().max()), float(fresh.abs().max())
    assert largest <= 3 * fresh_largest, f"{key}: |x| up to {largest}, a fresh draw {fresh_largest}"


def nan_checkpoint(model, folder):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    model.save_pretrained(folder)
    return os.path.join(folder, "model.safetensors")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_missing_weight_loads_initialised(name, tmp_path):
    model_type, config_kwargs = CONFIGS[name]
    transformers.logging.set_verbosity_error()  # the "newly initialized" report, per key
    checked = set()  # the backbone's keys are checked once, in the first head that has them
    for head, cls in ARCHITECTURES[model_type].heads.items():  # every head that exists
        model = build(model_type, config_kwargs, head, cls)
        fresh = specified_initialisation(model)
        for key, parameter in model.state_dict().items():  # a model built from its config
            check_as_initialised(parameter, fresh[key], f"{name} {head} {key} (from config)")
        path = nan_checkpoint(model, tmp_path / head)
        saved = load_file(path)
        for key in sorted(set(saved) - checked):
            save_file({k: v for k, v in saved.items() if k != key}, path, metadata={"format": "pt"})
            loaded = cls.from_pretrained(tmp_path / head).state_dict()[key]
            check_as_initialised(loaded, fresh[key], f"{name} {head} {key}")
            checked.add(key)
