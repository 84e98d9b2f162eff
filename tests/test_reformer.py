"""`longctx-reformer`: the shared harness (twice: chunks longer than the test inputs, where
Reformer attention is exact plain attention, and short chunks with hashing, where some of the
harness's properties do not hold for Reformer and are replaced by the ones that do), plus the
reversible layers, internal padding, axial positions and generation."""

import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from kernel_checks import assert_outputs_and_gradients_match
from model_harness import ModelHarness, pad

from longctx.attention_lsh import local_attention, local_attention_reference
from longctx.compat import cache_of
from longctx.modeling_reformer import ReformerRecomputeCache

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            attn_layers=["local", "lsh"], hash_seed=5, hidden_act="gelu")


class ReformerHarness(ModelHarness):
    model_type = "longctx-reformer"
    bad_configs = ModelHarness.bad_configs + [
        (dict(attn_layers=["lsh", "dense"]), "attn_layers"),
        (dict(num_buckets=3), "num_buckets"),
        (dict(num_buckets=[4, 5]), "num_buckets"),
        (dict(axial_pos_shape=[8, 8, 1]), "axial_pos_shape"),
        (dict(axial_pos_embds_dim=[16, 8]), "axial_pos_embds_dim"),
        (dict(lsh_attn_chunk_length=0), "lsh_attn_chunk_length"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings"),
        (dict(type_vocab_size=2), "type_vocab_size"),
        (dict(generation_cache="fast"), "generation_cache"),
    ]

    @pytest.mark.filterwarnings("ignore:.*is deprecated.*:FutureWarning")  # renamed activation_*
    def test_gradient_checkpointing_same_loss_and_gradients(self):
        """The harness's check, per layer kind. Reversible layers recompute in the backward pass by
        themselves (every layer but the last, which keeps its activations): gradient checkpointing
        is accepted and changes nothing. Plain autograd layers (reversible=False) are checkpointed:
        each runs twice. Loss and gradients are the same in all four runs, with dropout on (its
        masks replayed in every recomputation)."""
        samples = [self.ids(1, n, seed=n) for n in (15, 9)]
        ids, mask = pad(samples, "left")
        layers = self.config(False).num_hidden_layers
        expected_calls = {  # (reversible, checkpointing) -> calls of the layers' attention
            (True, False): 2 * layers - 1, (True, True): 2 * layers - 1,
            (False, False): layers, (False, True): 2 * layers}
        for head, is_decoder in (("classification", False), ("causal-lm", True)):
            runs = {case: self._loss_grads_calls(head, is_decoder, ids, mask, checkpointing=case[1],
                                                 reversible=case[0], hidden_dropout_prob=0.1)
                    for case in expected_calls}
            loss, grads, _ = runs[False, False]
            for case, (case_loss, case_grads, calls) in runs.items():
                assert calls == expected_calls[case], (head, case, calls)
                torch.testing.assert_close(case_loss, loss, msg=lambda m: f"{head} {case}: {m}")
                for name, grad in grads.items():
                    assert grad is not None and case_grads[name] is not None, (head, case, name)
                    torch.testing.assert_close(case_grads[name], grad, rtol=1e-4, atol=1e-6,
                                               msg=lambda m: f"{head} {case} {name}: {m}")

    @pytest.mark.filterwarnings("ignore:.*is deprecated.*:FutureWarning")
    def test_checkpointing_reversible_layers_says_once_that_it_is_not_applied(self, caplog):
        logging.Logger.warning_once.cache_clear()  # transformers' once-per-message memory
        for reversible in (False, True, True):
            model = self.model("classification", False, reversible=reversible)
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        said = [record.getMessage() for record in caplog.records
                if "gradient checkpointing is not applied" in record.getMessage()]
        assert len(said) == 1 and "reversible=True" in said[0], said


class TestReformerLongChunks(ReformerHarness):
    """Chunks of 16: every harness input fits in one chunk (plain attention, no hashing)."""
    config_kwargs = dict(TINY, lsh_attn_chunk_length=16, local_attn_chunk_length=16)


class TestReformerHashed(ReformerHarness):
    """Chunks of 4 (inputs padded to multiples of 4 inside), two hashes of 4 x 2 buckets. With
    hashing only the recompute cache equals a full forward over the prefix (which the harness's
    generation checks assert); the bucket cache, the default, is checked in
    test_reformer_generation.py against its own reference."""
    config_kwargs = dict(TINY, lsh_attn_chunk_length=4, local_attn_chunk_length=4, num_hashes=2,
                         num_buckets=[4, 2], attn_layers=["local", "lsh", "lsh"],
                         generation_cache="recompute")

    def test_padded_batch_equals_samples_alone(self):
        # With hashing, a row's result depends on its padded length: chunks wrap around (the first
        # looks back at the last) and every hash round starts at a multiple of the length, as in
        # transformers. What holds: rows are independent of each other, and left padding equals
        # right padding. Each row is compared with itself alone at the batch's length.
        lengths = [11, 5, 8]
        for head, is_decoder in self.cases():
            model = self.model(head, is_decoder)
            samples = [self.ids(1, n, seed=n) for n in lengths]
            right_ids, right_mask = pad(samples, "right")
            left_ids, left_mask = pad(samples, "left")
            right, left = model(right_ids, attention_mask=right_mask), model(left_ids, attention_mask=left_mask)
            for i in range(len(samples)):
                alone = model(right_ids[i:i + 1], attention_mask=right_mask[i:i + 1])
                pairs = ([(right.logits[i], alone.logits[0]), (left.logits[i], alone.logits[0])]
                         if head == "classification" else
                         [(got[i][m[i].bool()], want[0][right_mask[i].bool()])
                          for out, m in ((right, right_mask), (left, left_mask))
                          for got, want in zip(self.per_token(out, head), self.per_token(alone, head))])
                for got, want in pairs:
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"{head} {is_decoder} row {i}")

    def test_causal_model_never_looks_ahead(self):
        # A later token changes the hash sort, so which earlier keys share an earlier query's chunk
        # (transformers' LSH has the same property): the check is on the attention weights instead.
        model = self.model("causal-lm", True)
        output = model(self.ids(2, 16), output_attentions=True)
        future = torch.ones(16, 16, dtype=torch.bool).triu(1)
        for weights in output.attentions:
            assert weights.shape == (2, 2, 16, 16)
            assert torch.all(weights[..., future] == 0)
            assert torch.all(weights.sum(-1).sub(1).abs() < 1e-5)

    def test_cached_decoding_equals_full_forward(self):
        # The cache recomputes the whole prefix: each step's logits equal a forward over the prefix.
        model = self.model("causal-lm", True)
        samples = [self.ids(1, n, seed=n) for n in (14, 9)]
        ids, mask = pad(samples, "left")
        step = 5
        out = model(ids[:, :step], attention_mask=mask[:, :step], use_cache=True)
        cache = cache_of(out)
        for t in range(step, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache,
                        use_cache=True)
            cache = cache_of(out)
            prefix = model(ids[:, :t + 1], attention_mask=mask[:, :t + 1]).logits[:, -1:]
            real = mask[:, t].bool()
            torch.testing.assert_close(out.logits[real], prefix[real], rtol=1e-5, atol=1e-6)
        assert isinstance(cache, ReformerRecomputeCache) and cache.seen == ids.shape[1]


def tiny(is_decoder=False, **overrides):
    fields = dict(TINY, lsh_attn_chunk_length=4, local_attn_chunk_length=4, num_buckets=4,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=is_decoder)
    return AutoConfig.for_model("longctx-reformer", **{**fields, **overrides})


def gradients(model, ids, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    output = model(ids).last_hidden_state
    output.pow(2).sum().backward()
    return output.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("is_decoder", [False, True])
def test_reversible_backward_equals_plain_autograd_with_dropout(is_decoder):
    """Same weights, same seed: the reversible backward (recomputing each layer, replaying its
    dropout masks and buckets, no hash_seed) gives plain autograd's gradients, in float64."""
    config = tiny(is_decoder, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3, hash_seed=None,
                  num_hashes=2, attn_layers=["lsh", "local", "lsh", "local"], chunk_size_feed_forward=4)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).double().train()
    ids = torch.randint(5, 261, (2, 16))
    model.config.reversible = True
    out_reversible, grads_reversible = gradients(model, ids, seed=3)
    after_reversible = torch.rand(1)  # the global RNG advanced as in a plain run: the replay forks it
    model.config.reversible = False
    out_plain, grads_plain = gradients(model, ids, seed=3)
    assert torch.equal(torch.rand(1), after_reversible)
    torch.testing.assert_close(out_reversible, out_plain, rtol=0, atol=0)
    assert set(grads_reversible) == set(grads_plain) == {n for n, p in model.named_parameters()}
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_reversible[name], grad, rtol=1e-9, atol=1e-11, msg=name)


def saved_activation_bytes(model, ids) -> int:
    """Bytes autograd keeps for the backward pass, parameters excluded."""
    parameters = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.data_ptr() not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids).last_hidden_state.sum()
    loss.backward()  # outside the hooks: what the recomputation saves is freed layer by layer
    return total


def test_reversible_activation_memory_is_independent_of_depth():
    ids = torch.randint(5, 261, (2, 64))
    measured = {}
    for reversible in (True, False):
        for layers in (2, 6):
            torch.manual_seed(0)
            config = tiny(attn_layers=["local", "lsh"] * (layers // 2), reversible=reversible)
            measured[reversible, layers] = saved_activation_bytes(AutoModel.from_config(config).train(), ids)
    assert measured[True, 2] == measured[True, 6]
    assert measured[False, 6] > 2 * measured[False, 2]


def test_length_not_a_multiple_of_the_chunks_is_padded_inside():
    """13 tokens, chunks of 4 (LSH) and 6 (local): padded to 24 inside; the same as padding by hand."""
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny(local_attn_chunk_length=6)).eval()
    ids = torch.randint(5, 261, (2, 13))
    padded_ids = torch.cat([ids, torch.zeros(2, 11, dtype=torch.long)], dim=1)
    mask = (torch.arange(24) < 13).long().expand(2, -1)
    inside = model(ids).last_hidden_state
    by_hand = model(padded_ids, attention_mask=mask).last_hidden_state[:, :13]
    assert inside.shape == (2, 13, 64)
    torch.testing.assert_close(inside, by_hand)
    model.train()  # transformers refuses this length in training; here it is padded the same way
    torch.testing.assert_close(model(ids).last_hidden_state, inside)


def test_axial_shape_that_cannot_hold_the_input_raises_with_the_fix():
    model = AutoModel.from_config(tiny(axial_pos_shape=[4, 8], max_position_embeddings=64))
    model(torch.randint(5, 261, (1, 32)))  # 32 positions fit
    with pytest.raises(ValueError, match=r"axial_pos_shape=\[4, 8\] holds 32 positions.*at least 33"):
        model(torch.randint(5, 261, (1, 33)))


def test_negative_position_ids_raise_instead_of_wrapping_around():
    """Axial embeddings index with -1 as the last position (63 here): refused, also when a
    decoder's cache would take the positions in."""
    model = AutoModel.from_config(tiny(is_decoder=True)).eval()
    ids = torch.randint(5, 261, (1, 8))
    positions = torch.arange(8)[None] - 1
    with pytest.raises(ValueError, match="position_ids holds -1"):
        model(ids, position_ids=positions, use_cache=False)
    cache = cache_of(model(ids, position_ids=torch.arange(8)[None], use_cache=True))
    with pytest.raises(ValueError, match="position_ids holds -1"):
        model(ids[:, :1], position_ids=torch.tensor([[-1]]), cache=cache, use_cache=True)


def test_axial_positions_are_row_and_column_vectors():
    model = AutoModel.from_config(tiny(axial_pos_shape=[4, 8], axial_pos_embds_dim=[12, 20]))
    rows, cols = model.embeddings.position_embeddings.weights
    encodings = model.embeddings.position_embeddings(torch.tensor([[0, 9, 31]]))
    torch.testing.assert_close(encodings[0, 1], torch.cat([rows[1, 0], cols[0, 1]]))
    torch.testing.assert_close(encodings[0, 2], torch.cat([rows[3, 0], cols[0, 7]]))


def test_config_names_follow_transformers():
    config = AutoConfig.for_model("longctx-reformer", hidden_size=64, num_attention_heads=4, feed_forward_size=96,
                                  attn_layers=["lsh", "lsh", "local"], max_position_embeddings=4096)
    assert config.intermediate_size == 96 and config.feed_forward_size == 96
    assert config.num_hidden_layers == 3 and config.attention_head_size == 16
    assert config.axial_pos_shape == [64, 64] and config.axial_pos_embds_dim == [32, 32]
    default = AutoConfig.for_model("longctx-reformer", num_hidden_layers=4)
    assert default.attn_layers == ["local", "lsh", "local", "lsh"]
    with pytest.raises(ValueError, match="num_hidden_layers=2 but attn_layers lists 3"):
        AutoConfig.for_model("longctx-reformer", num_hidden_layers=2, attn_layers=["lsh"] * 3)
    with pytest.raises(ValueError, match="lsh_num_chunks_after"):
        AutoConfig.for_model("longctx-reformer", is_decoder=True, lsh_num_chunks_after=1)


def test_num_buckets_chosen_from_the_first_long_input_as_transformers():
    model = AutoModel.from_config(tiny(num_buckets=None, max_position_embeddings=256)).eval()
    model(torch.randint(5, 261, (1, 64)))  # 2 * 64 / 4 = 32 buckets, above the limit 2 * max(8, 4): factorised
    assert model.config.num_buckets == [4, 8]


def test_generate_continues_greedily_as_a_full_forward_does():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny(is_decoder=True,
                                                  generation_cache="recompute")).eval()
    prompt = torch.randint(5, 261, (1, 6))
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ids = prompt
    for _ in range(8):
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


# ------------------------------------------------------------------------- the local attention kernel
def local_case(seed: int, causal: bool, padded: bool):
    gen = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=gen))

    batch, heads, dim, chunk_length = draw(1, 3), draw(1, 3), draw(1, 6), draw(1, 6)
    length = chunk_length * draw(1, 6)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    padding = None
    if padded:
        padding = torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch,), generator=gen)[:, None]
    return dict(q=q, k=k, v=v), dict(chunk_length=chunk_length, num_chunks_before=draw(0, 3),
                                     num_chunks_after=0 if causal else draw(0, 2), causal=causal,
                                     key_padding_mask=padding)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_local_kernel_matches_dense_reference(seed, causal, padded):
    tensors, options = local_case(seed, causal, padded)
    fast = local_attention(**tensors, **options)
    slow, weights = local_attention_reference(**tensors, **options)
    if padded:  # fully masked rows (padded queries) differ in how they spread; compare real ones
        real = options["key_padding_mask"][:, None, :, None]
        fast, slow = fast * real, slow * real
    assert_outputs_and_gradients_match(fast, slow, list(tensors.values()), 1e-10, 1e-9)
    if causal:  # real queries never weigh a later key (fully masked padded rows spread evenly)
        rows = weights.detach() if not padded else weights.detach() * options["key_padding_mask"][:, None, :, None]
        assert torch.all(rows.triu(1) == 0)


@pytest.mark.parametrize("case", [(16, 1, 0, False, False), (32, 1, 1, True, False), (8, 2, 0, True, True),
                                  (4, 1, 0, True, True), (24, 2, 1, False, False), (16, 1, 0, False, True)])
def test_local_kernel_reproduces_transformers_local_self_attention(case):
    from transformers import ReformerConfig
    from transformers.models.reformer.modeling_reformer import ReformerAttention

    length, before, after, padded, causal = case
    config = ReformerConfig(attn_layers=["local"], hidden_size=16, num_attention_heads=2, attention_head_size=8,
                            local_attn_chunk_length=4, local_num_chunks_before=before, local_num_chunks_after=after,
                            is_decoder=causal)
    torch.manual_seed(0)
    attention = ReformerAttention(config, 0).eval()
    hidden = torch.randn(2, length, 16)
    mask = None
    if padded:
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length - 3:] = 0
    with torch.no_grad():
        expected = attention(hidden, attention_mask=mask).hidden_states
        local = attention.self_attention
        normed = attention.layer_norm(hidden)
        q, k, v = (proj(normed).view(2, length, 2, 8).transpose(1, 2) for proj in (local.query, local.key, local.value))
        out = local_attention(q, k, v, chunk_length=4, num_chunks_before=before, num_chunks_after=after,
                              causal=causal, key_padding_mask=mask)
        got = attention.output.dense(out.transpose(1, 2).reshape(2, length, 16))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_local_kernel_rejects_a_length_off_the_chunks():
    q = torch.randn(1, 1, 10, 4)
    with pytest.raises(ValueError, match="pad the sequence to 12"):
        local_attention(q, q, q, chunk_length=4)


@pytest.mark.parametrize("causal", [False, True])
def test_full_attention_ablation_is_dense_attention(causal):
    """The README's Reformer-with-full-attention ablation: local layers whose chunk covers the
    input (attn_layers all "local", local_attn_chunk_length >= length) compute dense attention."""
    from longctx.attention_dense import dense_attention_reference
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 24, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    padding = torch.arange(24)[None, :] < torch.tensor([[24], [17]])
    got = local_attention(q, k, v, chunk_length=32, num_chunks_before=0, causal=causal, key_padding_mask=padding)
    want, _ = dense_attention_reference(q, k, v, key_padding_mask=padding, causal=causal)
    real = padding[:, None, :, None]
    torch.testing.assert_close(got * real, want * real, rtol=1e-10, atol=1e-10)
