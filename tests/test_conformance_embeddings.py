"""Issue 18, conformance with transformers' example scripts (run_clm.py, run_mlm.py):

- Transformer-XL's input embeddings answer `.weight` as an nn.Embedding does (run_clm reads
  `model.get_input_embeddings().weight.shape[0]`), and `resize_token_embeddings` works for every
  head, growing or cutting the last cluster of the adaptive embedding and softmax;
- `--config_overrides` (`config.update_from_string`) on a built config: the fields derived from
  others follow them, given ones stay, and one that no longer fits raises ValueError naming it
  when the model is built; derived fields stay derived through config.json."""

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)

import longctx  # noqa: F401  (registers the model types)

VOCAB = 261
XL_HEADS = {"base": AutoModel, "causal-lm": AutoModelForCausalLM,
            "classification": AutoModelForSequenceClassification,
            "qa": AutoModelForQuestionAnswering}
XL_TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
               mem_len=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
XL_VARIANTS = {  # name -> the adaptive input and softmax fields
    "plain": dict(),
    "projected-untied": dict(d_embed=16, tie_word_embeddings=False),
    "clusters-one-table": dict(cutoffs=[100, 200]),
    "clusters-own-tables": dict(cutoffs=[100, 200], div_val=2, tie_word_embeddings=False),
}
XL_DERIVED = ("d_embed", "d_head", "tie_projs")
REFORMER_DERIVED = ("attn_layers", "attention_head_size", "lsh_attention_probs_dropout_prob",
                    "local_attention_probs_dropout_prob", "axial_pos_shape", "axial_pos_embds_dim")
REFORMER_TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, hash_seed=5, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def xl_model(head: str, variant: str, **fields):
    torch.manual_seed(0)
    config = AutoConfig.for_model("longctx-transfo-xl", **XL_TINY, **XL_VARIANTS[variant], **fields)
    return XL_HEADS[head].from_config(config).eval()


def ids(batch: int, length: int, high: int = VOCAB, seed: int = 1):
    return torch.randint(5, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def head_outputs(model, head: str, input_ids):
    with torch.no_grad():
        output = model(input_ids)
    if head == "base":
        return [output.last_hidden_state]
    return [output.start_logits, output.end_logits] if head == "qa" else [output.logits]


def token_parameters(model) -> dict:
    """Copies of the parameters with one row per token (or per token of a cluster)."""
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()
            if "embeddings.tables" in name or "lm_head.biases" in name or "lm_head.weights" in name}


# ------------------------------------------------------------------------ Transformer-XL embeddings
@pytest.mark.parametrize("head", XL_HEADS)
def test_single_table_input_embeddings_have_an_nn_embedding_weight(head):
    """run_clm.py: `embedding_size = model.get_input_embeddings().weight.shape[0]`."""
    for variant, width in [("plain", 32), ("projected-untied", 16), ("clusters-one-table", 32)]:
        model = xl_model(head, variant)
        embeddings = model.get_input_embeddings()
        assert embeddings.weight.shape == (model.config.vocab_size, width), variant
        assert model.config.vocab_size == VOCAB
        assert embeddings.weight is embeddings.tables[0].weight
        assert embeddings.num_embeddings == VOCAB


def test_one_table_per_cluster_has_no_weight_and_says_why():
    embeddings = xl_model("causal-lm", "clusters-own-tables").get_input_embeddings()
    expected = r"div_val=2.*cutoffs=\[100, 200\].*resize_token_embeddings"
    with pytest.raises(AttributeError, match=expected):
        embeddings.weight
    assert not hasattr(embeddings, "weight")
    assert embeddings.num_embeddings == VOCAB


@pytest.mark.parametrize("variant", XL_VARIANTS)
@pytest.mark.parametrize("head", XL_HEADS)
def test_resize_token_embeddings_up_and_down_keeps_rows_and_runs(head, variant, tmp_path):
    model = xl_model(head, variant)
    old_ids = ids(2, 12)
    before_outputs, before_rows = head_outputs(model, head, old_ids), token_parameters(model)

    returned = model.resize_token_embeddings(VOCAB + 19)
    assert returned is model.get_input_embeddings()
    assert model.config.vocab_size == VOCAB + 19 and returned.num_embeddings == VOCAB + 19
    for name, old in before_rows.items():  # a table or bias holds its tokens' old rows first
        assert torch.equal(dict(model.named_parameters())[name][:old.shape[0]], old), name
    if head != "causal-lm":  # old ids embed as before; an LM's softmax now spreads over more ids
        for got, want in zip(head_outputs(model, head, old_ids), before_outputs):
            assert torch.equal(got, want)
    new_ids = ids(2, 12, high=VOCAB + 19, seed=2)
    new_ids[0, 3] = VOCAB + 18  # the last new id
    if head == "causal-lm":
        output = model(new_ids, labels=new_ids)
        assert torch.isfinite(output.loss)
        output.loss.backward()
        assert model(new_ids).logits.shape == (2, 12, VOCAB + 19)
    else:
        assert all(torch.isfinite(t).all() for t in head_outputs(model, head, new_ids))

    model.save_pretrained(tmp_path)
    loaded = XL_HEADS[head].from_pretrained(tmp_path).eval()
    for got, want in zip(head_outputs(loaded, head, new_ids), head_outputs(model, head, new_ids)):
        assert torch.equal(got, want)

    model.resize_token_embeddings(VOCAB)  # back down: the original model
    assert model.config.vocab_size == VOCAB
    for got, want in zip(head_outputs(model, head, old_ids), before_outputs):
        assert torch.equal(got, want)


def test_resize_down_cuts_the_last_rows_and_the_model_runs():
    model = xl_model("causal-lm", "clusters-own-tables")
    rows = token_parameters(model)
    model.resize_token_embeddings(230)
    assert model.config.vocab_size == 230
    last_table = model.model.embeddings.tables[2].weight
    assert torch.equal(last_table, rows["model.embeddings.tables.2.weight"][:30])
    assert torch.equal(model.lm_head.weights["2"], rows["lm_head.weights.2"][:30])
    short = ids(2, 10, high=230)
    assert model(short).logits.shape == (2, 10, 230)
    assert torch.isfinite(model(short, labels=short).loss)
    with pytest.raises(ValueError, match="vocab_size"):  # an id of the cut rows
        model(torch.tensor([[5, 240]]))


def test_resize_only_changes_the_last_cluster_of_the_softmax():
    """New ids join the last cluster: the log-probs of the other clusters' ids are unchanged."""
    model = xl_model("causal-lm", "clusters-own-tables")
    before = head_outputs(model, "causal-lm", ids(2, 12))[0]
    model.resize_token_embeddings(VOCAB + 40)
    after = head_outputs(model, "causal-lm", ids(2, 12))[0]
    torch.testing.assert_close(after[..., :200], before[..., :200], rtol=0, atol=1e-6)
    assert torch.logsumexp(after, dim=-1).abs().max() < 1e-4  # still a distribution


def test_new_rows_start_at_their_clusters_mean_or_as_initialised():
    model = xl_model("causal-lm", "projected-untied", cutoffs=[100])
    table, bias = model.model.embeddings.tables[0].weight, model.lm_head.biases[0]
    with torch.no_grad():
        bias.normal_()  # initialised to zeros: give the mean something to show
    tail_mean = table[100:].mean(dim=0), bias[100:].mean()
    model.resize_token_embeddings(VOCAB + 3)
    table, bias = model.model.embeddings.tables[0].weight, model.lm_head.biases[0]
    torch.testing.assert_close(table[VOCAB:], tail_mean[0].expand(3, -1))
    torch.testing.assert_close(bias[VOCAB:], tail_mean[1].expand(3))

    model.resize_token_embeddings(VOCAB + 6, mean_resizing=False)
    assert torch.equal(model.lm_head.biases[0][VOCAB + 3:], torch.zeros(3))
    drawn = model.model.embeddings.tables[0].weight[VOCAB + 3:]
    assert 0 < drawn.std() < 0.1  # N(0, initializer_range=0.02)


def test_resize_pads_to_a_multiple():
    model = xl_model("base", "plain")
    assert model.resize_token_embeddings(300, pad_to_multiple_of=64).weight.shape[0] == 320
    model.resize_token_embeddings(pad_to_multiple_of=100)
    assert model.config.vocab_size == 400
    assert model.resize_token_embeddings() is model.get_input_embeddings()
    assert model.config.vocab_size == 400


@pytest.mark.parametrize("variant", ["clusters-one-table", "clusters-own-tables"])
def test_resize_into_the_tail_cutoff_raises_naming_cutoffs_and_the_fix(variant):
    model = xl_model("causal-lm", variant)
    expected = r"new_num_tokens=150.*cutoffs=\[100, 200\].*more than 200.*cover the tokenizer"
    with pytest.raises(ValueError, match=expected):
        model.resize_token_embeddings(150)
    assert model.config.vocab_size == VOCAB  # untouched
    assert model(ids(1, 5)).logits.shape[-1] == VOCAB


def test_resize_below_a_special_token_raises_naming_it():
    model = xl_model("base", "plain", eos_token_id=250)
    with pytest.raises(ValueError, match="eos_token_id=250"):
        model.resize_token_embeddings(200)
    assert model.config.vocab_size == VOCAB


# ------------------------------------------------------------------------------- config overrides
def test_transfo_xl_derived_widths_follow_overrides_of_width_and_heads():
    config = AutoConfig.for_model("longctx-transfo-xl", **XL_TINY)
    config.update_from_string("d_model=64,n_head=8")
    assert (config.hidden_size, config.d_embed, config.d_head) == (64, 64, 8)
    model = AutoModelForCausalLM.from_config(config)
    assert model.get_input_embeddings().weight.shape == (VOCAB, 64)
    assert not len(model.get_input_embeddings().projections)  # d_embed == d_model: no projection
    assert model.model.layers[0].attention.content_bias.shape == (8, 8)
    assert torch.isfinite(model(ids(1, 6), labels=ids(1, 6)).loss)


def test_transfo_xl_given_widths_stay_and_none_derives_again():
    config = AutoConfig.for_model("longctx-transfo-xl", **XL_TINY, d_embed=16, d_head=4)
    config.update_from_string("hidden_size=64")
    assert (config.d_embed, config.d_head) == (16, 4)  # given: d_embed != d_model projects
    assert AutoModel.from_config(config).get_input_embeddings().projections[0].shape == (64, 16)
    config.d_embed = None
    assert config.d_embed == 64
    config.update_from_string("d_embed=48")  # a given value is kept through later overrides
    config.hidden_size = 96
    assert config.d_embed == 48


def test_transfo_xl_tie_projs_follow_the_cutoffs():
    config = AutoConfig.for_model("longctx-transfo-xl", **XL_TINY)
    config.cutoffs = [100, 200]
    assert config.tie_projs == [False, True, True]
    assert AutoModelForCausalLM.from_config(config)(ids(1, 5)).logits.shape == (1, 5, VOCAB)
    config.tie_projs = [False]  # given, and no longer one per cluster
    with pytest.raises(ValueError, match="tie_projs"):
        AutoModel.from_config(config)


def test_reformer_derived_fields_follow_overrides():
    config = AutoConfig.for_model("longctx-reformer", **REFORMER_TINY)
    config.update_from_string("hidden_size=64,num_hidden_layers=3,num_attention_heads=4,"
                              "max_position_embeddings=256,attention_probs_dropout_prob=0.2")
    assert config.attn_layers == ["local", "lsh", "local"]
    assert config.axial_pos_embds_dim == [32, 32] and config.axial_pos_shape == [16, 16]
    assert config.attention_head_size == 16
    assert config.lsh_attention_probs_dropout_prob == 0.2
    assert config.local_attention_probs_dropout_prob == 0.2
    model = AutoModel.from_config(config).eval()
    assert len(model.layers) == 3
    assert model(ids(1, 40)).last_hidden_state.shape == (1, 40, 128)  # both reversible streams


@pytest.mark.parametrize("given, override, field", [
    (dict(axial_pos_embds_dim=[16, 16]), "hidden_size=64",
     r"axial_pos_embds_dim=\[16, 16\].*hidden_size=64"),
    (dict(attn_layers=["local", "lsh"]), "num_hidden_layers=3",
     r"attn_layers=\['local', 'lsh'\].*num_hidden_layers=3.*None"),
    (dict(), "num_attention_heads=3", "hidden_size=32.*num_attention_heads=3"),
])
def test_reformer_override_a_given_field_no_longer_fits_raises_at_build(given, override, field):
    config = AutoConfig.for_model("longctx-reformer", **{**REFORMER_TINY, **given})
    config.update_from_string(override)
    with pytest.raises(ValueError, match=field):
        AutoModel.from_config(config)


def test_transfo_xl_override_of_a_bad_value_raises_at_build():
    config = AutoConfig.for_model("longctx-transfo-xl", **XL_TINY)
    config.update_from_string("mem_len=-4")
    with pytest.raises(ValueError, match="mem_len=-4"):
        AutoModelForCausalLM.from_config(config)


# ------------------------------------------------------------------------------------ config.json
@pytest.mark.parametrize("model_type, tiny, derived", [
    ("longctx-transfo-xl", XL_TINY, XL_DERIVED),
    ("longctx-reformer", REFORMER_TINY, REFORMER_DERIVED),
])
def test_derived_fields_are_saved_as_none_and_stay_derived(model_type, tiny, derived, tmp_path):
    config = AutoConfig.for_model(model_type, **tiny)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert all(saved[name] is None for name in derived), {name: saved[name] for name in derived}
    loaded = AutoConfig.from_pretrained(tmp_path)
    def saved_fields(each):
        return {key: value for key, value in each.to_dict().items() if key != "_name_or_path"}

    assert saved_fields(loaded) == saved_fields(config)
    assert all(getattr(loaded, name) == getattr(config, name) for name in derived)
    for each in (loaded, config):
        each.update_from_string("hidden_size=64,num_attention_heads=8,max_position_embeddings=256,"
                                "attention_probs_dropout_prob=0.2,num_hidden_layers=3")
    assert all(getattr(loaded, name) == getattr(config, name) for name in derived)
    assert (loaded.hidden_size, loaded.head_dim) == (64, 8)
    AutoModel.from_config(loaded)


@pytest.mark.parametrize("model_type, tiny, derived, override, given", [
    ("longctx-transfo-xl", XL_TINY, XL_DERIVED, "n_head=8", "d_head"),
    ("longctx-reformer", dict(REFORMER_TINY, is_decoder=True), REFORMER_DERIVED,
     "num_attention_heads=4", "attention_head_size"),
])
def test_a_checkpoint_whose_config_holds_derived_values_loads_the_same_model(
        model_type, tiny, derived, override, given, tmp_path):
    """A guard (it passes before derived fields were saved as None too): checkpoints saved then
    hold the values; they load as given values, to the same model, and stay through overrides."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **tiny)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    written = {name: getattr(model.config, name) for name in derived}
    (tmp_path / "config.json").write_text(json.dumps({**saved, **written}))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert {name: getattr(loaded.config, name) for name in written} == written
    with torch.no_grad():
        assert torch.equal(loaded(ids(1, 9)).logits, model(ids(1, 9)).logits)
    loaded.config.update_from_string(override)
    assert getattr(loaded.config, given) == written[given]
