"""`longctx-transformer`, the dense baseline: the shared harness with its parameter table."""

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
