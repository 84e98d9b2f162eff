"""`longctx-transfo-xl`: the shared harness with its parameter table, plus Transformer-XL's own
behaviour: the relative attention kernel against explicit distances, segment recurrence equal to
one forward over the concatenation, generation carrying memory, the adaptive softmax."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longctx.attention_relative import (
    VisibleKeys,
    relative_attention,
    relative_attention_reference,
    relative_shift,
)
from longctx.compat import cache_of
from longctx.modeling_transfo_xl import sinusoid_encoding
from model_harness import ModelHarness, pad


def redrawn(model):
    """The initial weights make attention and the softmax almost uniform (differences would hide
    under tolerances): redraw them larger, deterministically."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=gen)
            parameter.copy_(1 + 0.1 * noise if "norm.weight" in name else 0.2 * noise)
    return model.eval()


class TransfoXLHarness(ModelHarness):
    model_type = "longctx-transfo-xl"
    encoder_heads = ()  # causal only: memory of earlier segments
    takes_position_ids = False  # relative positions, from the memory
    bad_configs = ModelHarness.bad_configs + [
        (dict(cutoffs=[300]), "cutoffs"), (dict(cutoffs=[50, 20]), "cutoffs"), (dict(div_val=0), "div_val"),
        (dict(mem_len=-1), "mem_len"), (dict(attn_type=1), "attn_type"), (dict(type_vocab_size=2), "type_vocab_size"),
        (dict(cutoffs=[20], div_val=64, d_embed=32), "div_val"), (dict(tie_projs=[True] * 5), "tie_projs"),
        (dict(hidden_size=33, num_attention_heads=3), "hidden_size"),
        (dict(relative_attention_kernel="flash"), "relative_attention_kernel"),
        (dict(relative_attention_kernel="blocks", attention_probs_dropout_prob=0.1), "relative_attention_kernel"),
        (dict(relative_attention_kernel="fused", attention_probs_dropout_prob=0.1), "relative_attention_kernel"),
    ]

    def model(self, head, is_decoder, seed=0, **overrides):
        """Weights are redrawn larger: at their initial scale the adaptive softmax is so close to
        uniform that a change of the future moves the log-probs by less than allclose sees."""
        return redrawn(super().model(head, is_decoder, seed, **overrides))

    def test_too_long_input_raises_value_error(self):
        """Overridden: Transformer-XL has no length limit (relative positions are computed for
        any distance), so an input past max_position_embeddings runs."""
        model = self.model("causal-lm", True, max_position_embeddings=32)
        logits = model(self.ids(1, 70)).logits
        assert logits.shape == (1, 70, model.config.vocab_size) and torch.isfinite(logits).all()

    def test_bad_inputs_raise_value_error(self):
        """The harness's checks, but its last one (a causal LM refuses an is_decoder=False config)
        does not apply: Transformer-XL reads is_decoder=False as True, as transformers' own
        TransfoXLConfig (is_decoder=False) describes the same causal model."""
        self.decoder_heads = ()  # instance attribute: turns off only that last check
        super().test_bad_inputs_raise_value_error()
        del self.decoder_heads
        config = self.config(False)
        assert config.is_decoder and config.pooling == "last"
        assert AutoModelForCausalLM.from_config(config)(self.ids(1, 4)).logits.shape[:2] == (1, 4)


class TestTransfoXLPostNorm(TransfoXLHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         mem_len=16)


class TestTransfoXLPreNormAdaptive(TransfoXLHarness):
    """transformers' names (aliases), adaptive input and softmax, shared u and v, clamping, a
    sliding window of the same length for every token."""
    config_kwargs = dict(d_model=32, n_layer=2, n_head=4, d_head=6, d_inner=48, pre_lnorm=True, cutoffs=[100, 200],
                         div_val=2, untie_r=False, clamp_len=4, mem_len=16, same_length=True)


class TestTransfoXLUntiedProjectedSoftmax(TransfoXLHarness):
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                         d_embed=16, cutoffs=[120], tie_word_embeddings=False, proj_share_all_but_first=False,
                         mem_len=16)


class TestTransfoXLBlockKernel(TransfoXLHarness):
    """The CPU block kernel forced for every call ('auto' takes it only past one block of
    queries, longer than the harness's inputs): every head, padding, generation through it."""
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         mem_len=16, same_length=True, relative_attention_kernel="blocks",
                         attention_probs_dropout_prob=0.0)


class TestTransfoXLFusedKernel(TransfoXLHarness):
    """The fused CPU kernel forced for every call, as the block kernel above."""
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         mem_len=16, same_length=True, relative_attention_kernel="fused",
                         attention_probs_dropout_prob=0.0)


class TestTransfoXLAbsolutePositions(TransfoXLHarness):
    """The absolute-position ablation (attn_type=2), with shared-bias settings that it ignores."""
    config_kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         mem_len=16, attn_type=2, untie_r=False)

    def test_cached_decoding_equals_full_forward(self):
        """Overridden: absolute positions restart in every segment, so a token decoded alone after
        a memory sits at position 0, not at its place in the full sequence -- the ambiguity the
        ablation measures. The prefix matches the full forward; the next token does not (the
        harness's check holds for attn_type 0, in the other classes)."""
        model = self.model("causal-lm", True)
        ids = self.ids(2, 12)
        full = model(ids).logits
        prefix = model(ids[:, :6], use_cache=True)
        torch.testing.assert_close(prefix.logits, full[:, :6], rtol=1e-5, atol=1e-5)
        after = model(ids[:, 6:7], cache=prefix.mems).logits
        assert not torch.allclose(after, full[:, 6:7], rtol=1e-3, atol=1e-3)


def tiny(**overrides):
    torch.manual_seed(0)
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, cutoffs=[60, 150], div_val=2)
    return redrawn(AutoModelForCausalLM.from_config(AutoConfig.for_model("longctx-transfo-xl",
                                                                         **{**fields, **overrides})))


# ------------------------------------------------------------------------------------ kernel
@pytest.mark.parametrize("q_len, memory", [(5, 0), (4, 7), (1, 9)])
def test_relative_shift_scores_each_key_at_its_distance(q_len, memory):
    k_len = q_len + memory
    scores = torch.randn(2, 3, q_len, k_len)  # column c: distance k_len - 1 - c
    shifted = relative_shift(scores)
    for i in range(q_len):
        for j in range(memory + i + 1):  # keys up to the query (later ones are masked)
            distance = memory + i - j
            assert shifted[:, :, i, j].equal(scores[:, :, i, k_len - 1 - distance]), (i, j)


@pytest.mark.parametrize("kernel", ["sdpa", "blocks", "auto"])
def test_fast_kernels_equal_reference_outputs_and_gradients(kernel):
    gen = torch.Generator().manual_seed(0)
    batch, heads, q_len, memory, dim = 3, 2, 6, 4, 8
    k_len = q_len + memory
    tensors = [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in
               [(batch, heads, q_len, dim), (batch, heads, k_len, dim), (batch, heads, k_len, dim),
                (heads, k_len, dim), (heads, dim), (heads, dim)]]
    padding = torch.ones(batch, k_len, dtype=torch.bool)
    padding[1, :6] = False  # row 1: its first query (key 4) sees only padding, so outputs zeros
    padding[2, -2:] = False
    visible = VisibleKeys(q_len, memory, 5, padding, "cpu")
    allowed = visible.mask()
    assert not allowed[1, 0, 0].any()
    fast = relative_attention(*tensors, visible, kernel=kernel)
    reference, weights = relative_attention_reference(*tensors, allowed)
    torch.testing.assert_close(fast, reference)
    assert fast[1, :, 0].abs().max() == 0
    assert (weights * ~allowed).abs().max() == 0
    upstream = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, tensors, upstream)
    grads_reference = torch.autograd.grad(reference, tensors, upstream)
    for got, want in zip(grads_fast, grads_reference):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------- memory
def run_in_segments(model, ids, segment_length):
    memory, pieces = None, []
    with torch.no_grad():
        for start in range(0, ids.shape[1], segment_length):
            out = model(ids[:, start:start + segment_length], mems=memory)
            pieces.append(out.logits)
            memory = out.mems
    return torch.cat(pieces, dim=1), memory


def test_segments_with_memory_equal_one_forward_when_the_memory_covers_the_span():
    model = tiny(mem_len=24)
    ids = torch.randint(5, 261, (2, 24))
    segmented, memory = run_in_segments(model, ids, 8)
    with torch.no_grad():
        whole = model(ids).logits
    torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)
    assert memory.length == 24 and memory.seen == 24 and not memory[0].requires_grad


def test_same_length_segments_equal_one_forward_with_the_sliding_window():
    """With same_length every token attends its mem_len most recent tokens: the memory always
    holds them, so segments of any number equal one forward over the concatenation, whose
    attention mask is that sliding window (not full causal: changing a token mem_len back does
    not change the output)."""
    model = tiny(mem_len=6, same_length=True, clamp_len=4)
    ids = torch.randint(5, 261, (2, 30))
    segmented, memory = run_in_segments(model, ids, 5)
    with torch.no_grad():
        whole = model(ids).logits
        far = ids.clone()
        far[:, 0] = (ids[:, 0] - 4) % 256 + 5
        changed = model(far).logits
    torch.testing.assert_close(segmented, whole, rtol=1e-5, atol=1e-5)
    assert memory.length == 6  # constant memory
    window, layers = 6, 2
    reach = layers * (window - 1)  # how far back a token's output can look
    torch.testing.assert_close(changed[:, reach + 1:], whole[:, reach + 1:], rtol=0, atol=0)
    assert not torch.allclose(changed[:, reach], whole[:, reach])


def test_memory_is_returned_even_when_the_config_says_use_cache_false():
    """transformers' Trainer sets config.use_cache=False on the models it trains and saves it so;
    the recurrence must survive that. Only a call's own use_cache=False returns no memory."""
    model = tiny(mem_len=6, use_cache=False).eval()
    ids = torch.randint(5, 261, (2, 4))
    assert model(ids).mems is not None and model(ids).mems[0].shape[1] == 4
    assert model(ids, use_cache=False).mems is None
    first = model(ids)
    assert not torch.allclose(model(ids, mems=first.mems).logits, first.logits)  # the memory is used


def test_memory_carries_no_gradient_and_segments_train():
    model = tiny(mem_len=8).train()
    ids = torch.randint(5, 261, (2, 16))
    first = model(ids[:, :8], labels=ids[:, :8])
    second = model(ids[:, 8:], labels=ids[:, 8:], mems=first.mems)
    assert all(not h.requires_grad for h in second.mems)
    second.loss.backward()
    assert model.model.layers[0].attention.query.weight.grad is not None


def test_padded_segments_with_memory_equal_samples_alone():
    """The memory remembers which of its tokens are padding: a left-padded batch carried over
    two segments gives each sample's own outputs."""
    model = tiny(mem_len=20)
    samples = [torch.randint(5, 261, (1, n)) for n in (14, 9)]
    ids, mask = pad(samples, "left")
    first = model(ids[:, :7], attention_mask=mask[:, :7])
    second = model(ids[:, 7:], attention_mask=mask[:, 7:], mems=first.mems)
    batched = torch.cat([first.logits, second.logits], dim=1)
    for i, sample in enumerate(samples):
        alone = model(sample).logits[0]
        torch.testing.assert_close(batched[i][mask[i].bool()], alone, rtol=1e-4, atol=1e-5)


def test_mems_given_as_tensors_and_bad_memory_raise():
    model = tiny(mem_len=4)
    ids = torch.randint(5, 261, (2, 5))
    zeros = [torch.zeros(2, 4, 32)] * 2
    out = model(ids, mems=zeros)
    assert out.mems.length == 4 and out.mems.seen == 9
    with pytest.raises(ValueError, match="n_layer"):
        model(ids, mems=zeros[:1])
    with pytest.raises(ValueError, match="mems"):
        model(ids, mems="nope")
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 7), mems=out.mems)
    with pytest.raises(ValueError, match="transpose"):  # transformers' (length, batch, d_model) layout
        model(ids, mems=[torch.zeros(4, 2, 32)] * 2)


@pytest.mark.parametrize("second_layer", [(2, 3, 32), (1, 4, 32), (2, 4, 16)],
                         ids=["length", "batch", "width"])
def test_mems_whose_layers_differ_raise_value_error(second_layer):
    """Only the first layer's shape was checked: a second layer of another length, batch or width
    failed deep in the attention, or was masked with the first layer's padding."""
    model = tiny(mem_len=4)
    ids = torch.randint(5, 261, (2, 5))
    mems = [torch.zeros(2, 4, 32), torch.zeros(second_layer)]
    with pytest.raises(ValueError, match=r"mems layers have shapes .*same \(batch, length, "):
        model(ids, mems=mems)


# ------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("mem_len, same_length", [(40, False), (6, True)])
def test_generate_with_memory_equals_greedy_decoding_without(mem_len, same_length):
    """Memory covering everything, or the sliding window of same_length (which memory always
    covers): decoding token by token with memory equals recomputing the whole prefix."""
    model = tiny(mem_len=mem_len, same_length=same_length)
    prompts, mask = pad([torch.randint(5, 261, (1, n)) for n in (7, 4)], "left")
    options = dict(attention_mask=mask, max_new_tokens=25, do_sample=False, eos_token_id=None, pad_token_id=0)
    cached = model.generate(prompts, **options, return_dict_in_generate=True)
    uncached = model.generate(prompts, **options, use_cache=False)
    assert torch.equal(cached.sequences, uncached)
    assert cache_of(cached).length == min(mem_len, 7 + 24)


# ---------------------------------------------------------------------------- adaptive softmax
def test_losses_are_the_log_probs_of_the_labels_in_token_order():
    model = tiny()
    ids = torch.randint(5, 261, (2, 12))
    ids[0, 1:4] = torch.tensor([10, 100, 200])  # every cluster
    labels = ids.clone()
    labels[1, 5] = -100
    with torch.no_grad():
        log_probs = model(ids).logits
        out = model(ids, labels=labels)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 12))
    expected = -log_probs[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    expected[1, 4] = 0.0
    torch.testing.assert_close(out.losses, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, expected.sum() / 21)
    torch.testing.assert_close(out.logits, log_probs)  # eval mode: what Trainer's metrics read
    assert model.train()(ids, labels=labels).logits is None  # training: the vocabulary is skipped


def test_transformers_names_are_aliases_of_the_common_ones(tmp_path):
    config = AutoConfig.for_model("longctx-transfo-xl", d_model=64, n_head=4, d_inner=96, n_layer=3, dropout=0.2,
                                  dropatt=0.05, pre_lnorm=True, layer_norm_epsilon=1e-6)
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) \
        == (64, 4, 96, 3)
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.pre_norm, config.layer_norm_eps) \
        == (0.2, 0.05, True, 1e-6)
    assert config.d_head == 16 and config.d_embed == 64  # defaults follow d_model
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.d_model == 64 and loaded.n_layer == 3 and loaded.pre_lnorm


def test_token_types_are_refused():
    model = tiny()
    ids = torch.randint(5, 261, (1, 4))
    with pytest.raises(ValueError, match="type_vocab_size"):
        model(ids, token_type_ids=torch.ones_like(ids))


def test_absolute_positions_are_plain_attention_over_memory_and_segment():
    """attn_type=2 spelled out for one post-LN layer: embeddings plus sinusoids of positions
    0, 1, ... in each segment (restarting), softmax(q k^T / sqrt(d)) v over memory + segment with
    the causal mask, then the residual LayerNorms and feed-forward."""
    model = tiny(attn_type=2, mem_len=8, num_hidden_layers=1).model
    first, second = torch.randint(5, 261, (2, 5)), torch.randint(5, 261, (2, 4))
    with torch.no_grad():
        memory = cache_of(model(first))
        got = model(second, mems=memory).last_hidden_state
        embed = lambda ids: model.embeddings(ids) + sinusoid_encoding(torch.arange(ids.shape[1]).float(), 32,
                                                                      torch.float32)  # noqa: E731
        torch.testing.assert_close(memory[0], embed(first))
        layer = model.layers[0]
        hidden = embed(second)
        heads = lambda x: x.view(2, x.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
        q = heads(layer.attention.query(hidden))
        k, v = (heads(t) for t in layer.attention.key_value(torch.cat([memory[0], hidden], 1)).chunk(2, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        future = torch.arange(9)[None, :] > torch.arange(5, 9)[:, None]
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        attended = layer.attention.output((weights @ v).transpose(1, 2).reshape(2, 4, 32))
        x = layer.attention_norm(hidden + attended)
        want = layer.feed_forward_norm(x + layer.feed_forward(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_returns_its_memory_and_classifies_a_document_segment_by_segment():
    """As transformers 4.35.2's TransfoXLForSequenceClassification: `mems` out, `mems` in; with a
    memory covering the document, the last segment's logits equal those of one forward."""
    from transformers import AutoModelForSequenceClassification

    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, mem_len=24, num_labels=3, pad_token_id=0,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = redrawn(AutoModelForSequenceClassification.from_config(config))
    ids = torch.randint(5, 200, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # row 1 ends in padding: pooled at its last real token
    whole = model(ids, attention_mask=mask).logits
    first = model(ids[:, :12], attention_mask=mask[:, :12])
    assert first.mems is cache_of(first)
    assert len(first.mems) == 2 and first.mems[0].shape == (2, 12, 32)
    for later_mask in (mask[:, 12:], mask):  # the new tokens' mask, or one over every token seen
        later = model(ids[:, 12:], attention_mask=later_mask, mems=first.mems)
        torch.testing.assert_close(later.logits, whole, rtol=1e-5, atol=1e-5)
    alone = model(ids[:, 12:], attention_mask=mask[:, 12:]).logits
    assert not torch.allclose(alone, whole, rtol=1e-3, atol=1e-3)  # the memory mattered
    assert len(model(ids, return_dict=False)) == 2  # (logits, memory), as transformers' tuples


# --------------------------------------------------------------------------------------- Trainer
def test_trainer_predicts_with_a_classifier_that_returns_its_memory(tmp_path):
    """The classifier returns its memory (no tensor) beside the logits: Trainer's evaluation must
    leave it out of the predictions it gathers (transformers 5.19 took nothing out unless
    the config names it in keys_to_ignore_at_inference)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transfo-xl", hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, mem_len=8,
                                  num_labels=2)
    model = AutoModelForSequenceClassification.from_config(config)
    rows = torch.randint(5, 261, (4, 6)).tolist()
    dataset = Dataset.from_dict({"input_ids": rows, "labels": [0, 1, 0, 1]})
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2,
                                  report_to="none", use_cpu=True)
    predictions = Trainer(model=model, args=arguments).predict(dataset).predictions
    assert predictions.shape == (4, 2)


def test_trainer_evaluates_the_metrics_of_transformers_run_clm(tmp_path):
    """transformers' examples/pytorch run_clm.py evaluates accuracy from the argmax of the first
    non-loss output, which must be the logits (with labels given, in eval mode)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny(mem_len=8)
    blocks = torch.randint(5, 261, (4, 10)).tolist()
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    seen = {}

    def argmax_of_first(logits, labels):
        seen["shape"] = tuple(logits[0].shape)
        return logits[0].argmax(dim=-1)

    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2,
                                  report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=arguments, preprocess_logits_for_metrics=argmax_of_first,
                      compute_metrics=lambda p: {"accuracy": float(
                          (p.predictions[:, :-1] == p.label_ids[:, 1:]).mean())})
    metrics = trainer.evaluate(dataset)
    assert seen["shape"] == (2, 10, 261) and 0 <= metrics["eval_accuracy"] <= 1


# ------------------------------------------------------------------------- kernel build notice
@pytest.mark.parametrize("logging_configured", [False, True])
def test_the_kernel_build_is_announced_before_it_starts(monkeypatch, tmp_path, capsys, caplog,
                                                        logging_configured):
    """The compilation is silent for about a minute: the console says so before it starts, through
    logging where a handler is set up, else on stderr. The build itself is mocked."""
    import logging

    import torch.utils.cpp_extension as cpp_extension

    import longctx.attention_relative_fused as relative_fused

    seen_at_build = []

    def build(**kwargs):
        logged = [r.getMessage() for r in caplog.records]
        seen_at_build.append((capsys.readouterr().err, logged, kwargs["name"]))
        return "built"

    monkeypatch.setattr(cpp_extension, "load_inline", build)
    monkeypatch.setattr(relative_fused, "_build_directory", lambda name: str(tmp_path))
    monkeypatch.setattr(relative_fused.logger, "hasHandlers", lambda: logging_configured)
    caplog.set_level(logging.WARNING, logger=relative_fused.__name__)
    capsys.readouterr()
    assert relative_fused._build(lock_wait=1.0) == "built"
    (stderr, logged, name), = seen_at_build
    assert name == relative_fused.extension_name()
    where = logged if logging_configured else [stderr]
    other = [stderr] if logging_configured else logged
    assert any("building the Transformer-XL CPU attention kernel (once, about a minute; cached in "
               f"{tmp_path})" in text for text in where), where
    assert not any("building" in text for text in other)
    # already built: nothing said
    monkeypatch.setattr(relative_fused, "_is_built", lambda name: True)
    caplog.clear()
    relative_fused._build(lock_wait=1.0)
    assert "building" not in seen_at_build[-1][0] and not seen_at_build[-1][1]
