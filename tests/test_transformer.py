"""`longctx-transformer`, the dense baseline: the shared harness with its parameter table."""

import torch
from transformers import AutoConfig, AutoModel

from model_harness import ModelHarness


class TestTransformerPreNorm(ModelHarness):
    model_type = "longctx-transformer"
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64)


class TestTransformerPostNormTokenTypes(ModelHarness):
    model_type = "longctx-transformer"
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         max_position_embeddings=64, pre_norm=False, type_vocab_size=2,
                         classifier_pooling="mean")


def test_inputs_embeds_of_the_autocast_dtype_are_accepted_under_autocast():
    """Under autocast the layers cast their inputs, so embeddings a bf16 layer made are fine."""
    config = AutoConfig.for_model("longctx-transformer", hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64)
    model = AutoModel.from_config(config).eval()
    embeds = torch.randn(2, 10, 32)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(inputs_embeds=embeds.bfloat16()).last_hidden_state
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)
