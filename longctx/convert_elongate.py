"""Elongate a pretrained transformers model into a longctx model with more positions:
`python -m longctx.convert SRC DST --to MODEL_TYPE`, or `convert.elongate(model, to=...)`.

Sources (`SOURCES`): BERT, RoBERTa, DistilBERT and ELECTRA encoders (the bare model, masked LM,
sequence classification, question answering) and GPT-2 (the bare model, the LM head model).
Targets (`TARGETS`): `longctx-longformer` (an encoder, or a causal decoder from GPT-2),
`longctx-transformer` (dense; encoder or decoder) and `longctx-linformer` (encoders only).

What is copied, and what is initialised:

- Every source weight is copied (the pooler of a bare BERT/RoBERTa is dropped with a warning: a
  longctx backbone has none; a classifier keeps it as its first layer). GPT-2's Conv1D weights
  are transposed and its fused query/key/value projection split.
- Positions: the learned table (RoBERTa's without its `pad_token_id + 1` leading rows, since its
  positions start after the pad id) is repeated up to `max_position_embeddings` (default 4096):
  position p gets the source's position p mod n, as the Longformer paper did to elongate RoBERTa
  (section 5: copying keeps the local structure attention learnt; random new positions do not).
- Longformer: the global projections (query_global, key_global, value_global) start as copies
  of the local ones, as in the paper, so a global token attends like every other token.
- Linformer: E and F (keys and values projected along the sequence) are block means: projected
  row r is the mean of the keys (values) at positions [r n / k, (r + 1) n / k), n =
  `max_position_embeddings`, k = `projection_dim` (`block_mean_projection`). Attending the mean
  key of a block of neighbours approximates attending its tokens where neighbouring keys are
  alike -- the mean pooling the Linformer paper names as an alternative to learned projections;
  random E and F would start every layer from noise. It is not exact: blocks beyond a shorter
  input are empty (zero keys and values, which still take softmax weight) and a partly filled
  block is scaled down; with k = n and an input of n tokens every block is one token and the
  layer is dense attention. Fine-tune before use.

Exactness (tests/test_elongate.py): on inputs no longer than the source's positions, with right
padding and the mask the tokenizer returns, the outputs are the source's within float error for
`longctx-transformer` always, and for `longctx-longformer` when attention_window // 2 covers the
input (every token then sees every other; the global tokens' copied projections attend as the
local ones). In training mode the classifier's dropout sits differently for BERT and DistilBERT
(longctx applies dropout before and after the dense layer; BERT's pooler has none before it), and
longctx counts positions from attention_mask, so a left-padded input gets each token the position
it has alone where BERT and GPT-2 count from the first column.

Not supported (ValueError, `error:` from the CLI): ELECTRA with embedding_size != hidden_size
(longctx has no embedding projection), relative position embeddings, an MLM head whose activation
is not "gelu", GPT-2 with scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True.
"""

import logging
import re
from dataclasses import dataclass
from typing import Callable

import torch
import transformers
from transformers import AutoConfig

import longctx  # noqa: F401  (registers the longctx model types with the Auto classes)

from .convert_common import check_complete, with_int_label_keys

logger = logging.getLogger(__name__)

TARGETS = ("longctx-longformer", "longctx-transformer", "longctx-linformer")
DEFAULT_LENGTH = 4096  # the Longformer paper's
DEFAULT_WINDOW = 512
# Fields that describe the source's weights: an override would not fit them.
FROM_SOURCE = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
               "type_vocab_size", "pre_norm", "is_decoder", "classifier_head",
               "classifier_activation", "classifier_pooling", "tie_word_embeddings")
POSITIONS = "model.embeddings.position_embeddings.weight"
BERT_LAYER = {  # BERT, RoBERTa, ELECTRA: theirs (under encoder.layer.{i}.) -> ours
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.dense_in",
    "output.dense": "feed_forward.dense_out",
    "output.LayerNorm": "feed_forward_norm",
}
DISTILBERT_LAYER = {  # theirs (under transformer.layer.{i}.) -> ours
    "attention.q_lin": "attention.query",
    "attention.k_lin": "attention.key",
    "attention.v_lin": "attention.value",
    "attention.out_lin": "attention.output",
    "sa_layer_norm": "attention_norm",
    "ffn.lin1": "feed_forward.dense_in",
    "ffn.lin2": "feed_forward.dense_out",
    "output_layer_norm": "feed_forward_norm",
}
# Buffers some checkpoints saved (position ids, GPT-2's causal mask): not weights.
BUFFERS = re.compile(r"(^|\.)(position_ids|token_type_ids)$|^h\.\d+\.attn\.(masked_)?bias$")


@dataclass(frozen=True)
class SourceFamily:
    """How one transformers `model_type` is read.

    prefix: the backbone's attribute in the head classes ("bert."); stripped from source keys.
    config: source config dict -> longctx config fields (max_position_embeddings: the source's
        usable positions).
    names: source config -> {our key: (candidate source keys without the prefix, transform)}.
    heads: transformers class name -> longctx Auto class name.
    """

    prefix: str
    config: Callable[[dict], dict]
    names: Callable[[dict], dict]
    heads: dict

    @property
    def backbone_architecture(self) -> str:
        return next(name for name, auto in self.heads.items() if auto == "AutoModel")


def _heads(stem: str) -> dict:
    """The four encoder classes of a transformers family (e.g. "Bert") -> longctx Auto classes."""
    return {f"{stem}Model": "AutoModel", f"{stem}ForMaskedLM": "AutoModelForMaskedLM",
            f"{stem}ForSequenceClassification": "AutoModelForSequenceClassification",
            f"{stem}ForQuestionAnswering": "AutoModelForQuestionAnswering"}


def _linear(ours: str, theirs: str, transform=None) -> dict:
    """The `names` entries of one layer with a weight and a bias (Linear, LayerNorm, Conv1D)."""
    return {f"{ours}.{kind}": ([f"{theirs}.{kind}"], transform) for kind in ("weight", "bias")}


def _require_source(condition: bool, source: dict, field: str, why: str):
    if not condition:
        raise ValueError(f"Cannot elongate this {source.get('model_type')} model: "
                         f"{field}={source.get(field)!r}; {why}.")


def _copied(source: dict, names: dict) -> dict:
    """longctx field -> the source's value, for the source fields (values) present."""
    return {ours: source[theirs] for ours, theirs in names.items()
            if source.get(theirs) is not None}


def _valid_token_ids(config: dict) -> dict:
    """The special token ids, None where the source has none (not longctx's defaults) or one
    outside the vocabulary (GPT-2's 50256 in a small test vocabulary: longctx refuses it)."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        config.setdefault(name, None)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id"):
        value = config.get(name)
        if value is not None and not 0 <= value < config["vocab_size"]:
            config[name] = None
    return config


# -- BERT, RoBERTa, ELECTRA -----------------------------------------------------------------------

BERT_FIELDS = {name: name for name in (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
    "layer_norm_eps", "initializer_range", "type_vocab_size", "pad_token_id", "bos_token_id",
    "eos_token_id", "sep_token_id", "max_position_embeddings", "id2label", "label2id",
    "problem_type", "tie_word_embeddings")}


def bert_like_config(source: dict, classifier_activation: str = "tanh", offset: int = 0) -> dict:
    _require_source(source.get("position_embedding_type", "absolute") == "absolute", source,
                    "position_embedding_type", "longctx has learned absolute positions only")
    _require_source(not source.get("is_decoder"), source, "is_decoder",
                    "elongate the encoder (is_decoder=False)")
    config = with_int_label_keys(_copied(source, BERT_FIELDS))
    config.update(pre_norm=False, classifier_pooling="first", classifier_head="pooler",
                  classifier_activation=classifier_activation,
                  max_position_embeddings=source["max_position_embeddings"] - offset)
    return _valid_token_ids(config)


def roberta_offset(source: dict) -> int:
    """RoBERTa positions start after the pad id: theirs = ours + pad_token_id + 1."""
    pad = source.get("pad_token_id")
    return (1 if pad is None else pad) + 1


def roberta_config(source: dict) -> dict:
    config = bert_like_config(source, offset=roberta_offset(source))
    if config.get("sep_token_id") is None:
        config["sep_token_id"] = config.get("eos_token_id")  # </s> separates the question
    return config


def electra_config(source: dict) -> dict:
    embedding = source.get("embedding_size", source["hidden_size"])
    _require_source(embedding == source["hidden_size"], source, "embedding_size",
                    f"longctx has no projection from embedding_size to hidden_size="
                    f"{source['hidden_size']}; only ELECTRAs with embedding_size == hidden_size "
                    f"(base, large) convert")
    # transformers' ElectraClassificationHead applies gelu where BERT's pooler has tanh.
    return bert_like_config(source, classifier_activation="gelu")


def bert_backbone_names(source: dict, layer_map: dict, stack: str, offset: int = 0) -> dict:
    names = {
        "model.embeddings.word_embeddings.weight": (["embeddings.word_embeddings.weight"], None),
        POSITIONS: (["embeddings.position_embeddings.weight"], lambda t: t[offset:]),
        "model.embeddings.token_type_embeddings.weight": (
            ["embeddings.token_type_embeddings.weight"], None),
        **_linear("model.embeddings.layer_norm", "embeddings.LayerNorm"),
    }
    layers = source.get("num_hidden_layers", source.get("n_layers"))
    for layer in range(layers):
        for theirs, ours in layer_map.items():
            names.update(_linear(f"model.layers.{layer}.{ours}", f"{stack}.{layer}.{theirs}"))
    return names


def masked_lm_names(dense: str, norm: str, decoder: str, biases: list) -> dict:
    """Our MaskedLMPredictionHead from theirs: `biases` lists the decoder bias's names (BERT and
    RoBERTa save one tensor under two names)."""
    return {**_linear("lm_head.dense", dense), **_linear("lm_head.layer_norm", norm),
            "lm_head.decoder.weight": ([f"{decoder}.weight"], None),  # absent when tied: fine
            "lm_head.decoder.bias": (biases, None)}


def bert_names(source: dict) -> dict:
    return {**bert_backbone_names(source, BERT_LAYER, "encoder.layer"),
            **masked_lm_names("cls.predictions.transform.dense",
                              "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
                              ["cls.predictions.bias", "cls.predictions.decoder.bias"]),
            # BERT's classifier: pooler (dense, tanh) then one projection; ours in one head
            **_linear("classifier.dense", "pooler.dense"),
            **_linear("classifier.out_proj", "classifier"),
            **_linear("qa_outputs", "qa_outputs")}


def roberta_names(source: dict) -> dict:
    return {**bert_backbone_names(source, BERT_LAYER, "encoder.layer", roberta_offset(source)),
            **masked_lm_names("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder",
                              ["lm_head.bias", "lm_head.decoder.bias"]),
            **_linear("classifier.dense", "classifier.dense"),
            **_linear("classifier.out_proj", "classifier.out_proj"),
            **_linear("qa_outputs", "qa_outputs")}


def electra_names(source: dict) -> dict:
    return {**bert_backbone_names(source, BERT_LAYER, "encoder.layer"),
            **masked_lm_names("generator_predictions.dense", "generator_predictions.LayerNorm",
                              "generator_lm_head", ["generator_lm_head.bias"]),
            **_linear("classifier.dense", "classifier.dense"),
            **_linear("classifier.out_proj", "classifier.out_proj"),
            **_linear("qa_outputs", "qa_outputs")}


# -- DistilBERT -----------------------------------------------------------------------------------

DISTILBERT_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "dim", "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
    "hidden_act": "activation", "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "classifier_dropout": "seq_classif_dropout",
    "initializer_range": "initializer_range", "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "sep_token_id": "sep_token_id",
    "max_position_embeddings": "max_position_embeddings", "id2label": "id2label",
    "label2id": "label2id", "problem_type": "problem_type",
    "tie_word_embeddings": "tie_word_embeddings"}


def distilbert_config(source: dict) -> dict:
    config = with_int_label_keys(_copied(source, DISTILBERT_FIELDS))
    # DistilBERT: no token types, LayerNorm eps fixed at 1e-12, a relu between its classifier's
    # two layers (pre_classifier, classifier).
    config.update(pre_norm=False, type_vocab_size=0, layer_norm_eps=1e-12,
                  classifier_pooling="first", classifier_head="pooler",
                  classifier_activation="relu")
    return _valid_token_ids(config)


def distilbert_names(source: dict) -> dict:
    names = bert_backbone_names(source, DISTILBERT_LAYER, "transformer.layer")
    del names["model.embeddings.token_type_embeddings.weight"]
    return {**names,
            **masked_lm_names("vocab_transform", "vocab_layer_norm", "vocab_projector",
                              ["vocab_projector.bias"]),
            **_linear("classifier.dense", "pre_classifier"),
            **_linear("classifier.out_proj", "classifier"),
            **_linear("qa_outputs", "qa_outputs")}


# -- GPT-2 ----------------------------------------------------------------------------------------

GPT2_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "n_embd", "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head", "intermediate_size": "n_inner",
    "hidden_act": "activation_function", "hidden_dropout_prob": "resid_pdrop",
    "attention_probs_dropout_prob": "attn_pdrop", "layer_norm_eps": "layer_norm_epsilon",
    "initializer_range": "initializer_range", "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
    "max_position_embeddings": "n_positions", "tie_word_embeddings": "tie_word_embeddings"}


def gpt2_config(source: dict) -> dict:
    _require_source(source.get("scale_attn_weights", True), source, "scale_attn_weights",
                    "longctx always scales attention by 1/sqrt(head_dim)")
    _require_source(not source.get("scale_attn_by_inverse_layer_idx", False), source,
                    "scale_attn_by_inverse_layer_idx", "longctx does not scale by layer")
    config = _copied(source, GPT2_FIELDS)
    config.setdefault("intermediate_size", 4 * config["hidden_size"])  # n_inner None: 4 x width
    # GPT-2: pre-LN blocks, a final LayerNorm, no LayerNorm on the embeddings, no token types.
    config.update(pre_norm=True, is_decoder=True, type_vocab_size=0)
    return _valid_token_ids(config)


def _conv1d(t: torch.Tensor) -> torch.Tensor:
    """GPT-2's Conv1D keeps weights as (in, out); nn.Linear as (out, in)."""
    return t.t().contiguous() if t.dim() == 2 else t


def _third(index: int):
    """Piece `index` of GPT-2's fused query/key/value projection, as a Linear's weight or bias."""
    return lambda t: _conv1d(t).chunk(3, dim=0)[index].contiguous()


def gpt2_names(source: dict) -> dict:
    names = {"model.embeddings.word_embeddings.weight": (["wte.weight"], None),
             POSITIONS: (["wpe.weight"], None),
             **_linear("model.final_norm", "ln_f"),
             "lm_head.weight": (["lm_head.weight"], None)}  # absent when tied: fine
    for layer in range(source["n_layer"]):
        ours, theirs = f"model.layers.{layer}", f"h.{layer}"
        for index, projection in enumerate(("query", "key", "value")):
            names.update(_linear(f"{ours}.attention.{projection}", f"{theirs}.attn.c_attn",
                                 _third(index)))
        names.update({**_linear(f"{ours}.attention.output", f"{theirs}.attn.c_proj", _conv1d),
                      **_linear(f"{ours}.attention_norm", f"{theirs}.ln_1"),
                      **_linear(f"{ours}.feed_forward.dense_in", f"{theirs}.mlp.c_fc", _conv1d),
                      **_linear(f"{ours}.feed_forward.dense_out", f"{theirs}.mlp.c_proj", _conv1d),
                      **_linear(f"{ours}.feed_forward_norm", f"{theirs}.ln_2")})
    return names


SOURCES = {  # source model_type -> SourceFamily
    "bert": SourceFamily("bert.", bert_like_config, bert_names, _heads("Bert")),
    "roberta": SourceFamily("roberta.", roberta_config, roberta_names, _heads("Roberta")),
    "electra": SourceFamily("electra.", electra_config, electra_names, _heads("Electra")),
    "distilbert": SourceFamily("distilbert.", distilbert_config, distilbert_names,
                               _heads("DistilBert")),
    "gpt2": SourceFamily("transformer.", gpt2_config, gpt2_names,
                         {"GPT2Model": "AutoModel", "GPT2LMHeadModel": "AutoModelForCausalLM"}),
}


# -- the target ------------------------------------------------------------------------------------

def family_for(source_config: dict, architecture: str | None) -> tuple[SourceFamily, str]:
    """The source family and the transformers class to elongate (config.json's architectures
    unless given)."""
    model_type = source_config.get("model_type")
    if model_type not in SOURCES:
        raise ValueError(f"Cannot elongate model_type={model_type!r}: supported sources are "
                         f"{sorted(SOURCES)}. Start from a checkpoint of one of these.")
    family = SOURCES[model_type]
    architecture = architecture or (source_config.get("architectures") or [None])[0]
    architecture = architecture or family.backbone_architecture
    if architecture not in family.heads:
        raise ValueError(f"Cannot elongate architecture {architecture!r}: supported are "
                         f"{sorted(family.heads)} (--architecture "
                         f"{family.backbone_architecture} keeps the backbone alone).")
    return family, architecture


def target_config(family: SourceFamily, source_config: dict, to: str, overrides: dict) -> dict:
    """The longctx config fields: the source's, the target's defaults, then `overrides`."""
    if to not in TARGETS:
        raise ValueError(f"to={to!r} is not a target; use one of {TARGETS}.")
    fields = family.config(source_config)
    source_length = fields["max_position_embeddings"]
    if to == "longctx-linformer" and fields.get("is_decoder"):
        raise ValueError(f"to={to!r} cannot take a {source_config['model_type']} decoder: "
                         f"Linformer is bidirectional. Use longctx-longformer or "
                         f"longctx-transformer for a causal model.")
    if to != "longctx-longformer":
        fields.pop("sep_token_id", None)  # only Longformer's question answering reads it
    fields.update(model_type=to, max_position_embeddings=max(DEFAULT_LENGTH, source_length))
    if to == "longctx-longformer":
        # None, not Longformer's default 2: a wrong separator would misplace QA's global tokens
        fields.setdefault("sep_token_id", None)
        fields["attention_window"] = DEFAULT_WINDOW
    check_overrides(overrides, to)
    fields.update(overrides)
    check_lengths(fields, source_length, to)
    return fields


def check_lengths(fields: dict, source_length: int, to: str):
    """The new length keeps every source position; Linformer's rows each get a position."""
    length = fields["max_position_embeddings"]
    if not isinstance(length, int) or length < source_length:
        raise ValueError(f"max_position_embeddings={length!r} is below the source's "
                         f"{source_length} positions; elongating keeps them all: pass "
                         f"max_position_embeddings >= {source_length}.")
    projection = None
    if to == "longctx-linformer":
        default = longctx.ARCHITECTURES[to].config.__dataclass_fields__["projection_dim"].default
        projection = fields.get("projection_dim", default)
    if isinstance(projection, int) and projection > length:
        raise ValueError(f"projection_dim={projection} exceeds max_position_embeddings={length}: "
                         f"block-mean projections need at least one position per projected row; "
                         f"pass projection_dim <= {length}.")


def check_overrides(overrides: dict, to: str):
    config_fields = set(longctx.ARCHITECTURES[to].config.__dataclass_fields__) | {"num_labels"}
    for name in overrides:
        if name in FROM_SOURCE:
            raise ValueError(f"{name}={overrides[name]!r} cannot be overridden: it comes from the "
                             f"source model's weights. Leave it out.")
        if name not in config_fields:
            raise ValueError(f"{name}={overrides[name]!r} is not a field of {to}'s config; pass "
                             f"one of e.g. max_position_embeddings, attention_window "
                             f"(longctx-longformer), projection_dim (longctx-linformer).")


def source_state_names(family: SourceFamily, source_state: dict, source_config: dict):
    """(ours, origin): our key -> tensor (the source's layout and length), and -> its source key."""
    original = {key.removeprefix(family.prefix): key for key in source_state}
    ours, origin = {}, {}
    for name, (candidates, transform) in family.names(source_config).items():
        found = next((original[c] for c in candidates if c in original), None)
        if found is not None:
            tensor = source_state[found]
            ours[name] = tensor if transform is None else transform(tensor)
            origin[name] = found
    return ours, origin


def repeated_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """(n, width) -> (length, width): row p is the source's row p mod n."""
    repeats = -(-length // table.shape[0])
    return table.repeat(repeats, 1)[:length].clone()


def block_mean_projection(shape: tuple, dtype) -> torch.Tensor:
    """(matrices, n, k): column r averages the positions [r n / k, (r + 1) n / k) (module doc)."""
    matrices, length, rows = shape
    block = torch.arange(length) * rows // length  # the projected row each position feeds
    weights = torch.nn.functional.one_hot(block, rows).to(torch.float64)
    weights = weights / weights.sum(0, keepdim=True)
    return weights.to(dtype).expand(matrices, length, rows).clone()


def target_tensors(model, ours: dict, origin: dict, prefix: str) -> tuple[dict, set]:
    """Our mapped tensors for `model` (the positions repeated, Longformer's global projections
    copied from the local ones, Linformer's E and F set to block means); returns the state dict
    and the source keys it used."""
    expected = model.state_dict()
    state, used = {}, set()
    for key, value in ours.items():
        if key.startswith(prefix) and key.removeprefix(prefix) in expected:
            short = key.removeprefix(prefix)
            if key == POSITIONS:
                value = repeated_positions(value, expected[short].shape[0])
            state[short] = value
            used.add(origin[key])
    for key, tensor in expected.items():
        local = re.sub(r"\.(query|key|value)_global\.", r".\1.", key)
        if local != key and local in state:
            state[key] = state[local].clone()
        elif key.endswith(("key_projection.weight", "value_projection.weight",
                           "layerwise_projection.weight")):
            state[key] = block_mean_projection(tuple(tensor.shape), torch.float32)
    return state, used


def dropped_source_keys(family: SourceFamily, source_state: dict, used: set,
                        head_keys: set) -> set:
    """Source keys left out on purpose: saved buffers, a second name of one tensor, and (with a
    warning) the pooler of a model whose longctx counterpart has none and the task head of a
    checkpoint elongated as its backbone alone (`head_keys`, when the target is the backbone)."""
    dropped, warned = set(), []
    for key in set(source_state) - used:
        short = key.removeprefix(family.prefix)
        if BUFFERS.search(short) or _is_alias(short, family.prefix, used):
            dropped.add(key)
        elif short.startswith("pooler.") or key in head_keys:
            warned.append(key)
    if warned:
        logger.warning("Dropping %s: the longctx backbone has no pooler or task head "
                       "(classification pools through its own head).", sorted(warned))
    return dropped | set(warned)


def _head_keys(family: SourceFamily, source_state: dict) -> set:
    """The keys outside the backbone of a head checkpoint (e.g. BertForPreTraining's `cls.*`):
    what elongating it as its backbone alone leaves out; none for a bare model's checkpoint."""
    if not any(key.startswith(family.prefix) for key in source_state):
        return set()
    return {key for key in source_state if not key.startswith(family.prefix)}


def _is_alias(short: str, prefix: str, used: set) -> bool:
    """A decoder bias saved under a second name (BERT, RoBERTa), whose first name was used."""
    aliases = {"cls.predictions.decoder.bias": "cls.predictions.bias",
               "lm_head.decoder.bias": "lm_head.bias"}
    return short in aliases and aliases[short] in {k.removeprefix(prefix) for k in used}


def elongate_state(source_config: dict, source_state: dict, to: str,
                   architecture: str | None = None, **overrides):
    """The longctx `to` model for a transformers config + state dict (module doc): weights
    filled, in the source's dtype, in eval mode."""
    family, architecture = family_for(source_config, architecture)
    auto_class = family.heads[architecture]
    config = AutoConfig.for_model(**target_config(family, source_config, to, overrides))
    check_head(config, auto_class, architecture)
    model = getattr(transformers, auto_class).from_config(config)
    ours, origin = source_state_names(family, source_state, source_config)
    prefix = "model." if auto_class == "AutoModel" else ""
    state, used = target_tensors(model, ours, origin, prefix)
    head_keys = _head_keys(family, source_state) if auto_class == "AutoModel" else set()
    used |= dropped_source_keys(family, source_state, used, head_keys)
    check_complete(model, state, source_state, used, architecture)
    model.load_state_dict(state, strict=False)  # tied weights may be absent: checked above
    model.tie_weights()
    floats = {tensor.dtype for tensor in source_state.values() if tensor.is_floating_point()}
    if len(floats) == 1:  # keep the checkpoint's precision (fp16/bf16 stay so)
        model.to(floats.pop())
    return model.eval()


def check_head(config, auto_class: str, architecture: str):
    if auto_class == "AutoModelForQuestionAnswering" and config.num_labels != 2:
        raise ValueError(f"{architecture} has num_labels={config.num_labels}; longctx question "
                         f"answering predicts exactly 2 logits (start, end).")
    if auto_class == "AutoModelForMaskedLM" and config.hidden_act != "gelu":
        raise ValueError(f"{architecture} has hidden_act={config.hidden_act!r}, which its "
                         f"masked-LM head applies too; longctx's masked-LM head applies 'gelu'. "
                         f"Elongate the backbone (--architecture) instead.")
