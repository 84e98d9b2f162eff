"""transformers' TransfoXL (4.35.2 and earlier; v5 deleted it) -> `longctx-transfo-xl`.

`TRANSFO_XL_CONVERTER` is the `Converter` that `longctx.convert.CONVERTERS["transfo-xl"]` names,
so `python -m longctx.convert SRC DST` converts `TransfoXLLMHeadModel` (e.g. the transfo-xl-wt103
format) and `TransfoXLModel` folders. Weights come from model.safetensors, or pytorch_model.bin
read with `torch.load(weights_only=True)` only. The longctx model reproduces transformers'
per-token losses (tests/test_convert_transfo_xl.py, against a 4.35.2 recording); see
longctx/modeling_transfo_xl.py for the two by-design differences (empty first memory, losses in
token order). `TransfoXLForSequenceClassification` (its bias-free `score` layer on the last
non-pad token) becomes a sequence classifier with `classifier_head="linear"`, which every
converted config carries, so that a converted language model fine-tuned for classification gets
transformers' head too. Its logits match transformers' (same zero first memory) on right-padded
batches.
"""

from .convert_common import Converter, with_int_label_keys

PREFIX = "transformer."
CONFIG_NAMES = {  # transformers' TransfoXLConfig -> longctx field
    "vocab_size": "vocab_size", "cutoffs": "cutoffs", "d_model": "hidden_size",
    "d_embed": "d_embed", "n_head": "num_attention_heads", "d_head": "d_head",
    "d_inner": "intermediate_size", "div_val": "div_val", "pre_lnorm": "pre_norm",
    "n_layer": "num_hidden_layers", "mem_len": "mem_len", "clamp_len": "clamp_len",
    "same_length": "same_length", "proj_share_all_but_first": "proj_share_all_but_first",
    "tie_projs": "tie_projs", "attn_type": "attn_type", "sample_softmax": "sample_softmax",
    "adaptive": "adaptive", "dropout": "hidden_dropout_prob",
    "dropatt": "attention_probs_dropout_prob", "untie_r": "untie_r",
    "layer_norm_epsilon": "layer_norm_eps", "init_std": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings", "id2label": "id2label", "label2id": "label2id",
    "problem_type": "problem_type",
}
LAYER_NAMES = {  # theirs (under transformer.layers.{i}.) -> ours (under model.layers.{i}.)
    "dec_attn.r_net.weight": "attention.position.weight",
    "dec_attn.o_net.weight": "attention.output.weight",
    "dec_attn.r_w_bias": "attention.content_bias",  # u: the content bias
    "dec_attn.r_r_bias": "attention.position_bias",  # v: the position bias
    "dec_attn.layer_norm.weight": "attention_norm.weight",
    "dec_attn.layer_norm.bias": "attention_norm.bias",
    "pos_ff.CoreNet.0.weight": "feed_forward.dense_in.weight",
    "pos_ff.CoreNet.0.bias": "feed_forward.dense_in.bias",
    "pos_ff.CoreNet.3.weight": "feed_forward.dense_out.weight",
    "pos_ff.CoreNet.3.bias": "feed_forward.dense_out.bias",
    "pos_ff.layer_norm.weight": "feed_forward_norm.weight",
    "pos_ff.layer_norm.bias": "feed_forward_norm.bias",
}


def transfo_xl_config(source: dict) -> dict:
    config = {ours: source[theirs] for theirs, ours in CONFIG_NAMES.items()
              if source.get(theirs) is not None}
    with_int_label_keys(config)
    config.update(model_type="longctx-transfo-xl", is_decoder=True, hidden_act="relu",
                  type_vocab_size=0, classifier_head="linear", classifier_pooling="last",
                  pad_token_id=source.get("pad_token_id"), bos_token_id=source.get("bos_token_id"),
                  eos_token_id=source.get("eos_token_id"))
    return config


def transfo_xl_state_dict(source_state: dict, source_config: dict) -> tuple[dict, dict, set]:
    """Maps a transformers TransfoXL state dict (backbone keys with or without `transformer.`)."""
    short = {key.removeprefix(PREFIX): key for key in source_state}
    ours, origin, dropped = {}, {}, set()

    def take(theirs: str, name: str, transform=None):
        if theirs in short:
            tensor = source_state[short[theirs]]
            ours[name] = tensor if transform is None else transform(tensor)
            origin[name] = short[theirs]

    inner = source_config["n_head"] * source_config["d_head"]
    for layer in range(source_config["n_layer"]):
        theirs_prefix, ours_prefix = f"layers.{layer}.", f"model.layers.{layer}."
        for theirs, name in LAYER_NAMES.items():
            take(theirs_prefix + theirs, ours_prefix + name)
        # qkv_net: rows [queries; keys; values] -> our query and key_value projections
        qkv = theirs_prefix + "dec_attn.qkv_net.weight"
        take(qkv, ours_prefix + "attention.query.weight", lambda t: t[:inner])
        take(qkv, ours_prefix + "attention.key_value.weight", lambda t: t[inner:])
    take("r_w_bias", "model.content_bias")  # untie_r=False: one pair for every layer
    take("r_r_bias", "model.position_bias")
    if not source_config.get("untie_r", True):  # the layers' copies of the shared pair
        layer_copies = ("dec_attn.r_w_bias", "dec_attn.r_r_bias")
        dropped |= {key for s, key in short.items() if s.endswith(layer_copies)}
    for i in range(len(source_config.get("cutoffs", [])) + 1):
        take(f"word_emb.emb_layers.{i}.weight", f"model.embeddings.tables.{i}.weight")
        take(f"word_emb.emb_projs.{i}", f"model.embeddings.projections.{i}")
    dropped |= {key for s, key in short.items() if s == "pos_emb.inv_freq"}  # recomputed
    _softmax(take, short, source_config, dropped)
    _score(take, short, source_config)
    return ours, origin, dropped


def _score(take, short: dict, source_config: dict):
    """TransfoXLForSequenceClassification's `score`: d_embed inputs in transformers, which only
    ran where d_embed == d_model (it reads the d_model-wide hidden states)."""
    if "score.weight" in short:
        d_model = source_config["d_model"]
        if source_config.get("d_embed", d_model) != d_model:
            raise ValueError(f"TransfoXLForSequenceClassification with "
                             f"d_embed={source_config['d_embed']} != d_model={d_model}: its score "
                             "layer cannot read the hidden states (transformers could not run it "
                             "either); convert a checkpoint with d_embed == d_model.")
    take("score.weight", "classifier.score.weight")


def _softmax(take, short: dict, source_config: dict, dropped: set):
    """The adaptive softmax (`crit.`): biases and cluster logits always; weights and projections
    only where untied (a tied copy, which pytorch_model.bin files hold, is dropped)."""
    take("crit.cluster_weight", "lm_head.cluster_weight")
    take("crit.cluster_bias", "lm_head.cluster_bias")
    clusters = len(source_config.get("cutoffs", [])) + 1
    tie_projs = source_config.get("tie_projs") or [False] * clusters
    tied_weights = source_config.get("tie_word_embeddings", True)
    for i in range(clusters):
        take(f"crit.out_layers.{i}.bias", f"lm_head.biases.{i}")
        weight, projection = f"crit.out_layers.{i}.weight", f"crit.out_projs.{i}"
        if tied_weights:
            dropped.update(short[weight] for _ in [0] if weight in short)
        else:
            take(weight, f"lm_head.weights.{i}")
        if tie_projs[i]:
            dropped.update(short[projection] for _ in [0] if projection in short)
        else:
            take(projection, f"lm_head.projections.{i}")


TRANSFO_XL_CONVERTER = Converter(
    config=transfo_xl_config,
    state=transfo_xl_state_dict,
    heads={  # transformers class -> longctx Auto class
        "TransfoXLModel": "AutoModel",
        "TransfoXLLMHeadModel": "AutoModelForCausalLM",
        "TransfoXLForSequenceClassification": "AutoModelForSequenceClassification",
    },
)
