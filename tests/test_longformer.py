"""`longctx-longformer`: the shared harness with its parameter table, plus Longformer's own
behaviour (global attention defaults, windows)."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)

from longctx.compat import cache_of

from model_harness import ModelHarness


class LongformerHarness(ModelHarness):
    model_type = "longctx-longformer"

    def unused_in(self, parameter, head, is_decoder):
        # Only classification and QA put global attention on tokens by default.
        has_globals = head in ("classification", "qa") and not is_decoder
        return "_global." in parameter and not has_globals


class TestLongformerPreNorm(LongformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=64, attention_window=[4, 6])
    sep_position = 3  # QA's default global attention covers the tokens before the first separator
    bad_configs = ModelHarness.bad_configs + [(dict(attention_window=5), "attention_window"),
                                              (dict(attention_window=[4, 4, 4]), "attention_window"),
                                              (dict(attention_window=8.0), "attention_window")]


class TestLongformerPostNorm(LongformerHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         max_position_embeddings=64, attention_window=2, pre_norm=False, type_vocab_size=1)
    sep_position = 2


def tiny(**overrides):
    torch.manual_seed(0)
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=128, attention_window=4, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    config = AutoConfig.for_model("longctx-longformer", **{**fields, **overrides})
    return AutoModel.from_config(config).eval()


def test_tokens_outside_the_window_do_not_matter_without_globals():
    model = tiny()  # 2 layers x 2 neighbours per side: token 0 sees at most token 4
    ids = torch.randint(5, 261, (1, 40))
    changed = ids.clone()
    changed[0, 5:] = torch.randint(5, 261, (35,))
    before, after = model(ids).last_hidden_state, model(changed).last_hidden_state
    torch.testing.assert_close(before[0, 0], after[0, 0])
    assert not torch.allclose(before[0, 1], after[0, 1])  # token 1 reaches token 5 in two layers


def test_global_token_connects_distant_tokens():
    model = tiny()
    ids = torch.randint(5, 261, (1, 40))
    changed = ids.clone()
    changed[0, 39] = (ids[0, 39] + 1 - 5) % 256 + 5
    global_mask = torch.zeros_like(ids)
    global_mask[0, 20] = 1
    local = [model(x).last_hidden_state[0, 0] for x in (ids, changed)]
    torch.testing.assert_close(*local)
    linked = [model(x, global_attention_mask=global_mask).last_hidden_state[0, 0] for x in (ids, changed)]
    assert not torch.allclose(*linked)  # 39 -> global 20 (layer 1) -> 0 (layer 2)


def test_global_attention_mask_with_wrong_shape_or_on_a_decoder_raises():
    model = tiny()
    ids = torch.randint(5, 261, (2, 10))
    with pytest.raises(ValueError, match="global_attention_mask"):
        model(ids, global_attention_mask=torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="global_attention_mask"):
        tiny(is_decoder=True)(ids, global_attention_mask=torch.ones_like(ids))


def test_question_answering_without_separator_raises():
    from transformers import AutoModelForQuestionAnswering
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-longformer", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, attention_window=4)
    with pytest.raises(ValueError, match="separator"):
        AutoModelForQuestionAnswering.from_config(config)(torch.randint(5, 261, (1, 12)))


def test_generation_cache_keeps_only_the_window_and_matches_no_cache():
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-longformer", is_decoder=True, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, attention_window=[4, 8],
                                  max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = torch.randint(5, 261, (2, 7))
    mask = torch.ones_like(prompts)
    mask[1, :3] = 0  # left padding
    cached = model.generate(prompts, attention_mask=mask, max_new_tokens=60, do_sample=False, eos_token_id=None,
                            return_dict_in_generate=True)
    uncached = model.generate(prompts, attention_mask=mask, max_new_tokens=60, do_sample=False, eos_token_id=None,
                              use_cache=False)
    assert torch.equal(cached.sequences, uncached)
    largest_one_sided_window = 4
    assert all(layer.keys.shape[2] == largest_one_sided_window for layer in cache_of(cached).layers)


def test_question_answering_pipeline_uses_the_question_as_global_attention():
    from transformers import AutoModelForQuestionAnswering, pipeline

    import longctx
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-longformer", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, attention_window=8, max_position_embeddings=128)
    model = AutoModelForQuestionAnswering.from_config(config).eval()
    qa = pipeline("question-answering", model=model, tokenizer=longctx.byte_tokenizer(model_max_length=128))
    context = "Die Konferenz fand in Zürich statt. " * 8  # longer than 128 bytes: several windows
    result = qa(question="Wo?", context=context)
    assert result["answer"] == context[result["start"]:result["end"]] and result["answer"]
    # The pipeline's encoding carries the separator the model looks for: the default global mask
    # is the question, so passing it explicitly changes nothing.
    encoding = longctx.byte_tokenizer()("Wo?", "Zürich", return_tensors="pt")
    question = (torch.arange(encoding.input_ids.shape[1]) < 4).long()[None]  # <s> W o ?
    implicit = model(**encoding)
    explicit = model(**encoding, global_attention_mask=question)
    torch.testing.assert_close(implicit.start_logits, explicit.start_logits)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("is_decoder", [False, True])
def test_flex_and_chunked_kernels_give_the_same_model(is_decoder):
    """The kernel is a speed choice: outputs agree with padding and global tokens (CPU forward;
    CUDA gradients in tests/test_cuda.py)."""
    ids = torch.randint(5, 261, (3, 70))
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0
    mask[2, :9] = 0
    inputs = dict(input_ids=ids, attention_mask=mask)
    if not is_decoder:
        inputs["global_attention_mask"] = (torch.rand(3, 70) < 0.1).long()
    with torch.no_grad():
        chunked, flex = (tiny(is_decoder=is_decoder, sliding_window_kernel=kernel, num_attention_heads=2)(**inputs)
                         .last_hidden_state  # head dimension 16, Flex's least
                         for kernel in ("chunked", "flex"))
    real = mask.bool()
    torch.testing.assert_close(flex[real], chunked[real], rtol=1e-5, atol=1e-5)


def test_no_global_attention_ablation_uses_only_explicit_global_tokens():
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    ids = torch.randint(5, 261, (2, 40))
    ids[:, 3] = 2  # the question's separator
    for auto_class, output in ((AutoModelForSequenceClassification, "logits"),
                               (AutoModelForQuestionAnswering, "start_logits")):
        torch.manual_seed(0)
        config = AutoConfig.for_model("longctx-longformer", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, attention_window=4, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, default_global_attention=False)
        model = auto_class.from_config(config).eval()
        no_globals = getattr(model(ids, global_attention_mask=torch.zeros_like(ids)), output)
        torch.testing.assert_close(getattr(model(ids), output), no_globals)
        model.config.default_global_attention = True
        assert not torch.allclose(getattr(model(ids), output), no_globals)  # the defaults do change it


@pytest.mark.parametrize("head",
                         [AutoModelForSequenceClassification, AutoModelForQuestionAnswering])
def test_heads_check_inputs_before_building_their_default_global_mask(head):
    """The classification and QA heads build a default global mask from input_ids and
    attention_mask: a mask of the wrong shape, 1-D ids or an empty input failed there, in a
    RuntimeError or IndexError, before the backbone's checks."""
    model = head.from_config(tiny().config).eval()
    ids = torch.randint(5, 261, (2, 20))
    ids[:, 3] = 2  # the QA head's question ends at the first separator
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 19\)"):
        model(ids, attention_mask=torch.ones(2, 19, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 1, 1, 20\)"):
        model(ids, attention_mask=torch.ones(2, 1, 1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids is a 1-D"):
        model(ids[0])
    for empty in (ids[:, :0], ids[:0]):
        with pytest.raises(ValueError, match="input_ids has shape"):
            model(empty)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 19\)"):  # explicit globals
        model(ids, attention_mask=torch.ones(2, 19), global_attention_mask=torch.ones_like(ids))
