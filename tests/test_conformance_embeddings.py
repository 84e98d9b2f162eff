"""Issue 18, conformance with transformers' example scripts (run_clm.py, run_mlm.py):
Transformer-XL's input embeddings answer `.weight` as an nn.Embedding does (run_clm reads
`model.get_input_embeddings().weight.shape[0]`), and `resize_token_embeddings` works for every
head, growing or cutting the last cluster of the adaptive embedding and softmax."""

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
