"""Equivalence with lucidrains' `linformer` 0.2.3 (`LinformerSelfAttention`): its weights, mapped
into one longctx Linformer attention layer, give the same outputs and input gradients (fp32,
1e-5). The differences the mapping bridges are listed in longctx/modeling_linformer.py."""

import pytest
import torch
from linformer import LinformerSelfAttention as ReferenceAttention
from transformers import AutoConfig

import longctx  # noqa: F401  (registers the model types)
from longctx.modeling_linformer import LinformerSelfAttention
from kernel_checks import assert_outputs_and_gradients_match

HIDDEN, HEADS, MAX_LENGTH, K = 64, 4, 48, 16
TOLERANCE = 1e-5


def reference_layer(share_kv: bool, seed: int = 0) -> ReferenceAttention:
    torch.manual_seed(seed)
    layer = ReferenceAttention(HIDDEN, MAX_LENGTH, k=K, heads=HEADS, share_kv=share_kv).eval()
    with torch.no_grad():  # its E/F start at +-1/sqrt(k); any values must map, so draw wider ones
        for matrix in (layer.proj_k, getattr(layer, "proj_v", None)):
            if matrix is not None:
                matrix.normal_(0.0, MAX_LENGTH ** -0.5)
    return layer


def longctx_layer(sharing: str) -> LinformerSelfAttention:
    config = AutoConfig.for_model("longctx-linformer", hidden_size=HIDDEN, num_attention_heads=HEADS,
                                  max_position_embeddings=MAX_LENGTH, projection_dim=K, sharing=sharing,
                                  attention_probs_dropout_prob=0.0)
    return LinformerSelfAttention(config, layer_idx=0).eval()


@torch.no_grad()
def map_weights(reference: ReferenceAttention, layer: LinformerSelfAttention):
    """lucidrains has no query/key/value biases (zero ours); its E, F are (n, k), ours
    (heads or 1, n, k); with share_kv its values are its keys (W_V = W_K)."""
    value_weight = reference.to_k.weight if reference.share_kv else reference.to_v.weight
    for ours, weight in ((layer.query, reference.to_q.weight), (layer.key, reference.to_k.weight),
                         (layer.value, value_weight)):
        ours.weight.copy_(weight)
        ours.bias.zero_()
    layer.output.weight.copy_(reference.to_out.weight)
    layer.output.bias.copy_(reference.to_out.bias)
    value_matrix = reference.proj_k if reference.share_kv else reference.proj_v
    layer.key_projection.weight.copy_(reference.proj_k.expand_as(layer.key_projection.weight))
    if layer.value_projection is not None:
        layer.value_projection.weight.copy_(value_matrix.expand_as(layer.value_projection.weight))


def compare(reference, layer, length: int, **layer_inputs):
    x = torch.randn(3, length, HIDDEN, generator=torch.Generator().manual_seed(length), requires_grad=True)
    ours, weights = layer(x, **layer_inputs)
    assert weights is None
    assert_outputs_and_gradients_match(ours, reference(x), (x,), TOLERANCE, TOLERANCE)


@pytest.mark.parametrize("length", [MAX_LENGTH, 30, 5])  # full length, and shorter: the first rows of E and F
@pytest.mark.parametrize("share_kv, sharing", [(False, "headwise"), (True, "key-value"), (False, "none")])
def test_outputs_and_input_gradients_match_lucidrains(share_kv, sharing, length):
    """headwise is lucidrains' layout; key-value is its share_kv (E = F, and W_V = W_K mapped in);
    none (an E and F per head) holds one copy of its matrices per head and must agree too."""
    reference = reference_layer(share_kv)
    layer = longctx_layer(sharing)
    map_weights(reference, layer)
    compare(reference, layer, length)


def test_layerwise_matrix_comes_from_the_backbone_and_matches_lucidrains():
    reference = reference_layer(share_kv=True)
    layer = longctx_layer("layerwise")
    assert layer.key_projection is None and layer.value_projection is None
    projection = torch.nn.Module()  # stands for the backbone's one matrix (E = F, every layer)
    projection.weight = torch.nn.Parameter(reference.proj_k.detach()[None].clone())
    with torch.no_grad():
        for ours, theirs in ((layer.query, reference.to_q), (layer.key, reference.to_k),
                             (layer.value, reference.to_k)):
            ours.weight.copy_(theirs.weight)
            ours.bias.zero_()
        layer.output.load_state_dict(reference.to_out.state_dict())
    compare(reference, layer, 20, layerwise_projection=projection)


def test_lucidrains_lets_padding_leak_where_longctx_does_not():
    """The documented difference: lucidrains projects padded positions into every row, so the
    real tokens' outputs depend on what the padding holds; longctx zeroes them first."""
    reference = reference_layer(share_kv=False)
    layer = longctx_layer("headwise")
    map_weights(reference, layer)
    real, padded = 12, 20
    x = torch.randn(1, padded, HIDDEN)
    other_padding = torch.cat([x[:, :real], torch.randn(1, padded - real, HIDDEN)], dim=1)
    mask = (torch.arange(padded) < real)[None]
    with torch.no_grad():
        alone = layer(x[:, :real])[0]
        ours = [layer(h, key_padding_mask=mask)[0][:, :real] for h in (x, other_padding)]
        theirs = [reference(h)[:, :real] for h in (x, other_padding)]
    for out in ours:
        torch.testing.assert_close(out, alone, rtol=TOLERANCE, atol=TOLERANCE)
    assert not torch.allclose(theirs[0], theirs[1], atol=1e-3)
