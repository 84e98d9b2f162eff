"""`longctx-linformer`: the shared harness with its parameter table (every sharing mode), plus
Linformer's own behaviour: padding never leaks into the projection, no causal model."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from model_harness import ModelHarness, pad


class LinformerHarness(ModelHarness):
    model_type = "longctx-linformer"
    decoder_heads = ()  # bidirectional: no causal model exists
    bad_configs = ModelHarness.bad_configs + [(dict(projection_dim=0), "projection_dim"),
                                              (dict(sharing="per-token"), "sharing")]

    def check_attention_weights(self, weights, real, config):
        """Linformer's weights are over the k projected rows, not over tokens: each real query's
        are a distribution over k."""
        assert weights.shape == (*real.shape[:1], config.num_attention_heads, real.shape[1], config.projection_dim)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


class TestLinformerHeadwisePreNorm(LinformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, projection_dim=8)


class TestLinformerNoSharingPostNorm(LinformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         max_position_embeddings=64, projection_dim=6, sharing="none", pre_norm=False,
                         type_vocab_size=1, classifier_pooling="mean")


class TestLinformerKeyValueSharing(LinformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, projection_dim=16, sharing="key-value")


class TestLinformerLayerwiseSharing(LinformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, projection_dim=4, sharing="layerwise")


FIELDS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, projection_dim=8, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)


def tiny(**overrides):
    torch.manual_seed(0)
    return AutoModel.from_config(AutoConfig.for_model("longctx-linformer", **{**FIELDS, **overrides})).eval()


@pytest.mark.parametrize("is_decoder", [True, False])
def test_causal_lm_raises_value_error_saying_linformer_is_bidirectional(is_decoder):
    if is_decoder:
        with pytest.raises(ValueError, match="bidirectional"):
            AutoConfig.for_model("longctx-linformer", is_decoder=True)
        return
    config = AutoConfig.for_model("longctx-linformer", **FIELDS)
    with pytest.raises(ValueError, match="bidirectional"):
        AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("sharing", ["none", "headwise", "key-value", "layerwise"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_tokens_do_not_influence_real_tokens(sharing, side):
    """Whatever ids (and token types) sit at padded positions, real tokens' outputs are identical."""
    model = tiny(sharing=sharing, type_vocab_size=2)
    ids, mask = pad([torch.randint(5, 261, (1, n)) for n in (20, 9, 14)], side)
    changed = torch.where(mask.bool(), ids, torch.randint(5, 261, ids.shape))
    types = torch.where(mask.bool(), 0, torch.randint(0, 2, ids.shape))
    with torch.no_grad():
        before = model(ids, attention_mask=mask).last_hidden_state
        after = model(changed, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    assert torch.equal(before[real], after[real])
    assert not torch.allclose(before[~real], after[~real])  # the padded positions themselves did change


def test_every_real_token_influences_every_output():
    """The projection mixes all positions: changing the last token changes the first output."""
    model = tiny()
    ids = torch.randint(5, 261, (1, 30))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] - 5 + 1) % 256 + 5
    with torch.no_grad():
        before, after = (model(x).last_hidden_state[0, 0] for x in (ids, changed))
    assert not torch.allclose(before, after)


def test_sharing_modes_hold_the_papers_matrices():
    """none: E and F per head; headwise: one E and one F per layer; key-value: E = F per layer;
    layerwise: one matrix in the whole model."""
    n, k, heads, layers = 64, 8, 4, 2
    expected = {"none": [(heads, n, k)] * 2 * layers, "headwise": [(1, n, k)] * 2 * layers,
                "key-value": [(1, n, k)] * layers, "layerwise": [(1, n, k)]}
    for sharing, shapes in expected.items():
        model = tiny(sharing=sharing)
        found = [tuple(p.shape) for name, p in model.named_parameters() if name.endswith("projection.weight")]
        assert found == shapes, sharing


def test_projection_rows_follow_positions():
    """A sample left-padded in a batch uses the rows of E and F it uses alone (its positions count
    real tokens), and explicit position_ids choose the rows: shifting them changes the output."""
    model = tiny()
    sample = torch.randint(5, 261, (1, 10))
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()  # positions then act through E and F only
        alone = model(sample).last_hidden_state
        explicit = model(sample, position_ids=torch.arange(10)[None]).last_hidden_state
        shifted = model(sample, position_ids=torch.arange(3, 13)[None]).last_hidden_state
    torch.testing.assert_close(explicit, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(shifted, alone)


def test_projection_matrices_start_at_the_scale_of_one_token():
    """N(0, 1/n) entries: a full-length projection keeps a unit-variance input at unit variance."""
    model = tiny(max_position_embeddings=4096, projection_dim=64, num_hidden_layers=1)
    weight = model.layers[0].attention.key_projection.weight
    assert abs(weight.std().item() * 4096 ** 0.5 - 1) < 0.02
    projected = torch.einsum("hnk,bn->bk", weight, torch.randn(256, 4096))
    assert abs(projected.std().item() - 1) < 0.1
