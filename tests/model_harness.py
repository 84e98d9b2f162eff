"""The shared model harness: every longctx architecture's test file subclasses `ModelHarness`
and fills in its parameter table (`model_type`, tiny config kwargs, which heads exist).

Checks: every head's forward and backward with labels; a padded batch equals its samples run
one by one; causal models never look ahead; cached incremental decoding equals a full forward;
save -> load round trip; loading with trust_remote_code where `import longctx` fails; bad
configs and inputs raise ValueError.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)

import longctx  # noqa: F401  (registers the model types)
from longctx.compat import CACHE_NAME, cache_of

AUTO_CLASSES = {
    "base": AutoModel,
    "causal-lm": AutoModelForCausalLM,
    "masked-lm": AutoModelForMaskedLM,
    "classification": AutoModelForSequenceClassification,
    "qa": AutoModelForQuestionAnswering,
}
VOCAB = 261
FIRST_TEXT_ID = 5  # ids below are special tokens


class ModelHarness:
    model_type: str = None
    config_kwargs: dict = {}  # tiny sizes; dropout is set to 0 by the harness
    encoder_heads = ("base", "masked-lm", "classification", "qa")  # with is_decoder=False
    decoder_heads = ("base", "causal-lm", "classification", "qa")  # with is_decoder=True; () if none
    bad_configs: list = [  # (overrides, the field the error must name)
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(classifier_pooling="max"), "classifier_pooling"),
        (dict(classifier_head="mlp"), "classifier_head"),
        (dict(pad_token_id=VOCAB), "pad_token_id"),
        (dict(hidden_act="nope"), "hidden_act"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),  # NaN on a constant vector
        (dict(layer_norm_eps=-1e-5), "layer_norm_eps"),
    ]

    # ----------------------------------------------------------------- helpers
    def config(self, is_decoder: bool, **overrides):
        kwargs = dict(self.config_kwargs, is_decoder=is_decoder, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, num_labels=3)
        return AutoConfig.for_model(self.model_type, **{**kwargs, **overrides})

    def model(self, head: str, is_decoder: bool, seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return AUTO_CLASSES[head].from_config(self.config(is_decoder, **overrides)).eval()

    def unused_in(self, parameter: str, head: str, is_decoder: bool) -> bool:
        """Parameters that legitimately get no gradient in this head (e.g. global projections
        when no token is global)."""
        return False

    def cases(self):
        """(head, is_decoder) for every head the architecture has."""
        return ([(h, False) for h in self.encoder_heads] + [(h, True) for h in self.decoder_heads])

    takes_position_ids = True  # False: the backbone has no position_ids argument
    sep_position: int | None = None  # put a separator (id 2) there, for heads that look for one

    def ids(self, batch: int, length: int, seed: int = 1):
        ids = torch.randint(FIRST_TEXT_ID, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
        if self.sep_position is not None:
            ids[:, min(self.sep_position, length - 1)] = 2
        return ids

    @staticmethod
    def per_token(output, head: str):
        """The outputs that are per position, as one (batch, length, ...) tensor per field."""
        if head == "base":
            return [output.last_hidden_state]
        if head == "qa":
            return [output.start_logits, output.end_logits]
        return [output.logits]

    # ------------------------------------------------------------------ checks
    def test_every_head_forward_backward_with_labels(self):
        for head, is_decoder in self.cases():
            model = self.model(head, is_decoder).train()
            ids = self.ids(2, 13)
            output = model(ids, **labels_for(head, ids))
            if head == "base":
                loss = output.last_hidden_state.pow(2).mean()
            else:
                loss = output.loss
                assert loss.ndim == 0 and torch.isfinite(loss), (head, is_decoder)
            loss.backward()
            missing = [n for n, p in model.named_parameters()
                       if p.requires_grad and p.grad is None and not self.unused_in(n, head, is_decoder)]
            assert not missing, (head, is_decoder, missing)
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), (head, is_decoder)

    def test_trainer_finds_each_heads_label_arguments(self):
        """Trainer keeps only the dataset columns that forward names; labels must be among them."""
        from transformers.utils import find_labels
        expected = {"causal-lm": ["labels"], "masked-lm": ["labels"], "classification": ["labels"],
                    "qa": ["start_positions", "end_positions"]}
        for head, is_decoder in self.cases():
            if head != "base":
                assert find_labels(type(self.model(head, is_decoder))) == expected[head], head

    def test_classification_problem_types(self):
        ids = self.ids(4, 9)
        cases = [(1, torch.randn(4), "regression"),
                 (3, torch.tensor([0, 2, 1, 2]), "single_label_classification"),
                 (3, torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]), "multi_label_classification")]
        for num_labels, labels, problem in cases:
            model = self.model("classification", False, num_labels=num_labels)
            output = model(ids, labels=labels)
            assert model.config.problem_type == problem
            expected = {"regression": lambda lg: torch.nn.functional.mse_loss(lg.squeeze(-1), labels),
                        "single_label_classification": lambda lg: torch.nn.functional.cross_entropy(lg, labels),
                        "multi_label_classification":
                            lambda lg: torch.nn.functional.binary_cross_entropy_with_logits(lg, labels)}[problem]
            torch.testing.assert_close(output.loss, expected(output.logits))

    def test_padded_batch_equals_samples_alone(self):
        lengths = [11, 5, 8]
        for head, is_decoder in self.cases():
            model = self.model(head, is_decoder)
            for side in ("right", "left"):
                samples = [self.ids(1, n, seed=n) for n in lengths]
                ids, mask = pad(samples, side)
                batched = self.per_token(model(ids, attention_mask=mask), head) if head != "classification" \
                    else [model(ids, attention_mask=mask).logits]
                for i, sample in enumerate(samples):
                    alone = model(sample)
                    real = mask[i].bool()
                    if head == "classification":
                        torch.testing.assert_close(batched[0][i], alone.logits[0], rtol=1e-4, atol=1e-5)
                        continue
                    for got, want in zip(batched, self.per_token(alone, head)):
                        torch.testing.assert_close(got[i][real], want[0], rtol=1e-4, atol=1e-5,
                                                   msg=lambda m: f"{head} decoder={is_decoder} {side}: {m}")

    @pytest.mark.filterwarnings("ignore:.*is deprecated.*:FutureWarning")  # renamed activation_checkpointing_*
    def test_gradient_checkpointing_same_loss_and_gradients(self):
        """The backward pass really recomputes each layer, and gets the same gradients."""
        samples = [self.ids(1, n, seed=n) for n in (15, 9)]
        ids, mask = pad(samples, "left")
        cases = [c for c in (("classification", False), ("causal-lm", True)) if c in self.cases()]
        for head, is_decoder in cases:
            runs = [self._loss_grads_calls(head, is_decoder, ids, mask, checkpointing) for checkpointing in (False, True)]
            (loss, grads, calls), (loss_ckpt, grads_ckpt, calls_ckpt) = runs
            assert calls_ckpt == 2 * calls > 0, (head, calls, calls_ckpt)
            torch.testing.assert_close(loss_ckpt, loss)
            for name, grad in grads.items():
                if grad is not None or grads_ckpt[name] is not None:
                    torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    def _loss_grads_calls(self, head, is_decoder, ids, mask, checkpointing=False, **overrides):
        """(loss, parameter gradients, how many times the layers' attention ran) of one training
        step; `overrides` are config fields."""
        model = self.model(head, is_decoder, **overrides).train()
        calls = []
        for layer in model.model.layers:
            layer.attention.register_forward_hook(lambda *_: calls.append(1))
        if checkpointing:
            model.gradient_checkpointing_enable()
        labels = labels_for(head, ids)
        if head == "causal-lm":
            labels = {"labels": ids.masked_fill(mask == 0, -100)}
        loss = model(ids, attention_mask=mask, **labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, len(calls)

    def test_output_attentions_path_gives_the_same_outputs(self):
        """Asking for attention weights takes the explicit path: same hidden states, and each real
        query's weights over real keys sum to 1."""
        samples = [self.ids(1, n, seed=n) for n in (12, 7)]
        ids, mask = pad(samples, "right")
        for is_decoder in ([False] if self.encoder_heads else []) + ([True] if self.decoder_heads else []):
            model = self.model("base", is_decoder)
            fast = model(ids, attention_mask=mask)
            explicit = model(ids, attention_mask=mask, output_attentions=True)
            real = mask.bool()
            torch.testing.assert_close(explicit.last_hidden_state[real], fast.last_hidden_state[real],
                                       rtol=1e-4, atol=1e-5)
            assert len(explicit.attentions) == model.config.num_hidden_layers
            for weights in explicit.attentions:
                self.check_attention_weights(weights, real, model.config)

    def check_attention_weights(self, weights, real, config):
        """Weights over tokens: each real query's sum to 1, and padded keys get none. An
        architecture whose weights are over something else (Linformer) overrides this."""
        sums = weights.sum(-1)  # (batch, heads, queries)
        torch.testing.assert_close(sums.permute(0, 2, 1)[real], torch.ones_like(sums.permute(0, 2, 1)[real]))
        on_padding = weights * (~real)[:, None, None, :]
        assert torch.all(on_padding == 0)  # no query ever attends a padded key

    def test_classifier_without_a_mask_pools_the_tokens_that_are_not_padding(self):
        """No attention_mask: pooling reads the ids that are not pad_token_id (as transformers' GPT-2
        and TransfoXL classifiers do), for each pooling; the head gets exactly the pooled vector."""
        lengths = (9, 4)
        ids, _ = pad([self.ids(1, n, seed=n) for n in lengths], "right")
        for head, is_decoder in self.cases():
            if head != "classification":
                continue
            for pooling in ("first", "last", "mean"):
                model = self.model(head, is_decoder, classifier_pooling=pooling)
                hidden, pooled = capture(model, ids)
                want = {"first": lambda h, n: h[0], "last": lambda h, n: h[n - 1],
                        "mean": lambda h, n: h[:n].mean(0)}[pooling]
                for i, n in enumerate(lengths):
                    torch.testing.assert_close(pooled[i], want(hidden[i], n), msg=lambda m: f"{pooling}: {m}")

    def test_linear_classifier_head_is_one_bias_free_projection(self):
        model = self.model("classification", False, classifier_head="linear")
        shapes = {name: tuple(p.shape) for name, p in model.classifier.named_parameters()}
        assert shapes == {"score.weight": (3, model.model.output_size)}
        ids = self.ids(2, 7)
        _, pooled = capture(model, ids)
        torch.testing.assert_close(model(ids).logits, pooled @ model.classifier.score.weight.T)

    def test_causal_model_never_looks_ahead(self):
        if not self.decoder_heads:
            return self._check_causal_refused()
        model = self.model("causal-lm", True)
        ids = self.ids(2, 16)
        changed = ids.clone()
        changed[:, 9:] = self.ids(2, 7, seed=5)
        before, after = model(ids).logits, model(changed).logits
        torch.testing.assert_close(before[:, :9], after[:, :9], rtol=0, atol=1e-6)
        assert not torch.allclose(before[:, 9:], after[:, 9:])  # the future did change

    def _check_causal_refused(self):
        with pytest.raises(ValueError, match="causal|is_decoder"):
            AutoModelForCausalLM.from_config(self.config(True))

    @pytest.mark.parametrize("cache_name", ["cache", "past_key_values"])  # new and old name
    def test_cached_decoding_equals_full_forward(self, cache_name, transformers_log):
        if not self.decoder_heads:
            return
        model = self.model("causal-lm", True)
        samples = [self.ids(1, n, seed=n) for n in (14, 9)]
        ids, mask = pad(samples, "left")
        full = model(ids, attention_mask=mask).logits
        step = 5  # prefill 5 tokens, then one token at a time
        out = model(ids[:, :step], attention_mask=mask[:, :step], use_cache=True)
        pieces, cache = [out.logits], cache_of(out)
        for t in range(step, ids.shape[1]):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], use_cache=True,
                        **{cache_name: cache})
            pieces.append(out.logits)
            cache = cache_of(out)
        incremental = torch.cat(pieces, dim=1)
        real = mask.bool()
        torch.testing.assert_close(incremental[real], full[real], rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="cache"):  # two different caches
            model(ids[:, -1:], cache=cache, past_key_values=["another cache"])
        if cache_name == CACHE_NAME:  # the installed version's name: no deprecation warning
            assert not [m for m in transformers_log if "deprecated" in m], transformers_log

    def test_generate_feeds_new_tokens_only_and_logs_no_deprecation(self, transformers_log):
        """`generate()` hands the model's cache back to it (as `cache` from transformers 5.24 on,
        `past_key_values` before): after the prompt each step runs one new token, and the tokens
        are those of decoding without a cache."""
        if not self.decoder_heads:
            return
        model = self.model("causal-lm", True)
        prompts, mask = pad([self.ids(1, n, seed=n) for n in (7, 4)], "left")
        lengths = []
        hook = model.model.register_forward_pre_hook(
            lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
            with_kwargs=True)
        options = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None,
                       pad_token_id=0)
        cached = model.generate(prompts, **options)
        hook.remove()
        assert lengths == [7] + [1] * 5, lengths
        assert torch.equal(cached, model.generate(prompts, **options, use_cache=False))
        assert not [m for m in transformers_log if "deprecated" in m], transformers_log

    def test_save_load_round_trip_is_bit_identical(self, tmp_path):
        for head, is_decoder in self.cases():
            model = self.model(head, is_decoder)
            model.save_pretrained(tmp_path / head)
            loaded = AUTO_CLASSES[head].from_pretrained(tmp_path / head).eval()
            assert type(loaded) is type(model)
            ids = self.ids(2, 10)
            for got, want in zip(self.outputs(loaded, head, ids), self.outputs(model, head, ids)):
                assert torch.equal(got, want), (head, is_decoder)

    @staticmethod
    def outputs(model, head, ids):
        with torch.no_grad():
            output = model(ids)
        return [output.last_hidden_state] if head == "base" else \
            [output.start_logits, output.end_logits] if head == "qa" else [output.logits]

    def test_trust_remote_code_load_without_longctx(self, tmp_path):
        """A saved model carries its code: a Python where `import longctx` fails loads it with
        trust_remote_code=True through every Auto class, with bit-identical outputs."""
        is_decoder = bool(self.decoder_heads)
        head = "causal-lm" if is_decoder else "masked-lm"
        model = self.model(head, is_decoder)
        model.save_pretrained(tmp_path / "ckpt")
        ids = self.ids(2, 10)
        save_file({"ids": ids, "expected": self.outputs(model, head, ids)[0]}, tmp_path / "io.safetensors")
        heads = [h for h, d in self.cases() if d == is_decoder]
        script = textwrap.dedent(f"""
            import sys
            sys.modules["longctx"] = None  # `import longctx` now raises ImportError
            import torch, transformers
            from safetensors.torch import load_file
            io = load_file({str(tmp_path / 'io.safetensors')!r})
            names = {json.dumps({h: AUTO_CLASSES[h].__name__ for h in heads})}
            for head, auto_name in names.items():
                model = getattr(transformers, auto_name).from_pretrained({str(tmp_path / 'ckpt')!r},
                                                                         trust_remote_code=True).eval()
                assert "transformers_modules" in type(model).__module__, type(model).__module__
                if head == {head!r}:
                    with torch.no_grad():
                        got = model(io["ids"]).logits
                    assert torch.equal(got, io["expected"]), (got - io["expected"]).abs().max()
            print("REMOTE-OK", sorted(names))
        """)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                cwd=tmp_path, timeout=300)
        assert "REMOTE-OK" in result.stdout, result.stderr[-3000:]
        assert result.returncode == 0

    def test_bad_configs_raise_value_error_naming_the_field(self):
        for overrides, field in self.bad_configs:
            with pytest.raises(ValueError, match=field):
                self.config(False, **overrides)

    def test_too_long_input_raises_value_error(self):
        for head, is_decoder in self.cases():
            model = self.model(head, is_decoder, max_position_embeddings=32)
            with pytest.raises(ValueError, match="max_position_embeddings"):
                model(self.ids(1, 33))

    def test_bad_labels_raise_value_error_naming_the_limit(self):
        """Out-of-range labels are an IndexError (CPU) or a device assert (CUDA) inside cross_entropy,
        and no loss at all in Transformer-XL's adaptive softmax: every head refuses them first."""
        ids = self.ids(2, 10)
        lm_heads = [(head, is_decoder) for head, is_decoder in self.cases() if head in ("causal-lm", "masked-lm")]
        for head, is_decoder in lm_heads:
            model = self.model(head, is_decoder)
            for wrong in (VOCAB, -5):
                labels = ids.clone()
                labels[1, 4] = wrong
                with pytest.raises(ValueError, match=f"labels holds {wrong}, outside \\[0, {VOCAB}\\).*vocab_size"):
                    model(ids, labels=labels)
            with pytest.raises(ValueError, match=r"labels has shape \(2, 9\) but this head needs \(2, 10\)"):
                model(ids, labels=ids[:, 1:])
            ignored = ids.clone()
            ignored[:, ::2] = -100  # the ignore index is accepted
            assert torch.isfinite(model(ids, labels=ignored).loss)
        for is_decoder in {is_decoder for head, is_decoder in self.cases() if head == "classification"}:
            model = self.model("classification", is_decoder)
            with pytest.raises(ValueError, match=r"labels holds 3, outside \[0, 3\).*num_labels"):
                model(ids, labels=torch.tensor([0, 3]))
            with pytest.raises(ValueError, match=r"labels has shape \(3,\)"):
                model(ids, labels=torch.tensor([0, 1, 2]))
            assert torch.isfinite(model(ids, labels=torch.tensor([[2], [0]])).loss)  # (batch, 1) as transformers

    def test_bad_inputs_raise_value_error(self):
        model = self.model("base", False)
        ids = self.ids(2, 10)
        with pytest.raises(ValueError, match="attention_mask"):
            model(ids, attention_mask=torch.ones(2, 9, dtype=torch.long))
        with pytest.raises(ValueError, match="input_ids"):
            model()
        with pytest.raises(ValueError, match="vocab_size"):
            model(torch.full((1, 4), VOCAB))
        with pytest.raises(ValueError, match=r"input_ids is a 1-D .*\(batch, length\)"):
            model(ids[0])
        with pytest.raises(ValueError, match="input_ids is a 2-D torch.float32"):
            model(ids.float())
        with pytest.raises(ValueError, match="inputs_embeds is a 2-D"):
            model(inputs_embeds=torch.randn(10, model.config.hidden_size))
        with pytest.raises(ValueError, match="type_vocab_size"):
            model(ids, token_type_ids=torch.full_like(ids, 5))
        if self.takes_position_ids:
            with pytest.raises(ValueError, match="position_ids holds -1; positions count from 0"):
                model(ids, position_ids=torch.arange(10)[None].repeat(2, 1) - 1)
        if self.decoder_heads:
            with pytest.raises(ValueError, match="is_decoder"):
                AutoModelForCausalLM.from_config(self.config(False))

    def test_empty_inputs_raise_value_error(self):
        """A batch or a sequence of length 0: a ValueError before any head's pooling argmax."""
        is_decoder = not self.encoder_heads
        ids = self.ids(2, 10)
        for head in ("base", "classification"):
            model = self.model(head, is_decoder)
            with pytest.raises(ValueError, match=r"input_ids has shape \(2, 0\)"):
                model(ids[:, :0])
            with pytest.raises(ValueError, match=r"input_ids has shape \(0, 10\)"):
                model(ids[:0])
        embeds = torch.randn(2, 0, model.config.hidden_size)
        with pytest.raises(ValueError, match=r"inputs_embeds has shape \(2, 0, "):
            model(inputs_embeds=embeds)

    def test_attention_mask_other_than_zero_and_one_raises_value_error(self):
        model = self.model("base", False)
        ids = self.ids(2, 10)
        mask = torch.ones_like(ids)
        mask[0, :3] = 0
        for bad in (2, 0.5, -1):
            with pytest.raises(ValueError, match=f"attention_mask holds {bad}.*1 for tokens"):
                model(ids, attention_mask=torch.where(mask.bool(), bad, mask))
        with torch.no_grad():  # bool and float masks of 0 and 1 are the same mask
            expected = model(ids, attention_mask=mask).last_hidden_state
            for same in (mask.bool(), mask.float()):
                torch.testing.assert_close(model(ids, attention_mask=same).last_hidden_state,
                                           expected, rtol=0, atol=0)

    def test_inputs_embeds_of_another_dtype_raise_value_error(self):
        model = self.model("base", False)
        embeds = torch.randn(2, 10, model.config.hidden_size)
        for dtype in (torch.float64, torch.bfloat16):
            with pytest.raises(ValueError, match=rf"inputs_embeds is {dtype} but the model is "
                                                 r"torch.float32.*inputs_embeds.to\(model.dtype\)"):
                model(inputs_embeds=embeds.to(dtype))


def labels_for(head: str, ids) -> dict:
    if head == "causal-lm":
        return {"labels": ids}
    if head == "masked-lm":
        labels = torch.full_like(ids, -100)
        labels[:, ::3] = ids[:, ::3]
        return {"labels": labels}
    if head == "classification":
        return {"labels": torch.arange(ids.shape[0]) % 3}
    if head == "qa":
        return {"start_positions": torch.tensor([1, 3])[: ids.shape[0]],
                "end_positions": torch.tensor([4, 3])[: ids.shape[0]]}
    return {}


def capture(model, ids):
    """One classification forward: (the backbone's last hidden state, the classifier's input)."""
    seen = {}
    hooks = [model.model.register_forward_hook(lambda m, a, out: seen.update(hidden=out.last_hidden_state)),
             model.classifier.register_forward_pre_hook(lambda m, args: seen.update(pooled=args[0]))]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["hidden"], seen["pooled"]


def pad(samples, side: str):
    """Pads (1, n) id tensors to one (batch, longest) tensor with pad id 0; returns ids, mask."""
    longest = max(s.shape[1] for s in samples)
    ids = torch.zeros(len(samples), longest, dtype=torch.long)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    for i, sample in enumerate(samples):
        n = sample.shape[1]
        span = slice(longest - n, longest) if side == "left" else slice(0, n)
        ids[i, span], mask[i, span] = sample[0], 1
    return ids, mask
