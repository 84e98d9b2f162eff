"""The four task heads, written once for every architecture.

An architecture's head is a two-line class: the head mixin first, the architecture's
pretrained base second, and `backbone_class` naming its backbone, e.g.

    class LongctxTransformerForMaskedLM(ForMaskedLM, LongctxTransformerPreTrainedModel):
        backbone_class = LongctxTransformerModel

A causal LM also lists `GenerationMixin` last, after the pretrained base (transformers looks
for it among the direct bases to give the model a generation config).

What a head may rely on from its backbone (inputs, outputs, `output_size`, caches) is the
backbone contract, stated in `modeling_blocks`' module doc.
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
)

from .compat import CACHE_NAME, cache_field, cache_of, given_cache
from .modeling_blocks import output_flags

WORD_EMBEDDINGS = "model.embeddings.word_embeddings.weight"
IGNORE_INDEX = -100  # a label that takes no loss (transformers' convention)


def check_labels(labels, shape: tuple, limit: int, config_field: str):
    """Labels of the given shape, integers in [0, limit) or IGNORE_INDEX. A label out of range is an
    IndexError in cross_entropy on CPU, a device assert on CUDA, and in an adaptive softmax no loss
    at all; a wrong shape fails, if at all, with the flattened sizes."""
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels has shape {tuple(labels.shape)} but this head needs "
                         f"{tuple(shape)}; pass one label per "
                         f"{'position of input_ids' if len(shape) > 1 else 'sequence'}.")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels is {labels.dtype}; this loss needs integer class ids "
                         "(torch.long).")
    wrong = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= limit))]
    if wrong.numel():
        raise ValueError(f"labels holds {int(wrong[0])}, outside [0, {limit}) set by "
                         f"{config_field}={limit}; use ids below {limit}, or {IGNORE_INDEX} for "
                         "positions without loss.")


class HeadBase:
    backbone_class = None
    # Our losses are batch means: Trainer then scales them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.model = self.backbone_class(config)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def _backbone(self, kwargs) -> tuple:
        """Runs the backbone; returns (its output, whether to return a tuple)."""
        flags = output_flags(self.config, return_dict=kwargs.pop("return_dict", None))
        return self.model(**kwargs, return_dict=True), not flags.return_dict

    @staticmethod
    def _finish(output, as_tuple: bool):
        return output.to_tuple() if as_tuple else output


class GeneratesWithOwnCache:
    """For decoders whose generation state is their own object (not a transformers Cache), built by
    the first forward and holding `seen`, the number of tokens it has taken: `generate()` feeds only
    the tokens it has not seen (all of them at the first step)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      use_cache=None, cache=None, **kwargs):
        """`generate()` passes the cache as `cache` from transformers 5.24 on, before as
        `past_key_values`; the model gets it back under the same name."""
        cache = given_cache(cache, past_key_values)
        if cache is not None:
            input_ids = input_ids[:, cache.seen:]
        return {"input_ids": input_ids, CACHE_NAME: cache, "attention_mask": attention_mask,
                "use_cache": use_cache, "logits_to_keep": 1}


class ForCausalLM(HeadBase):
    """Next-token prediction with the output projection tied to the input embeddings."""

    _tied_weights_keys = {"lm_head.weight": WORD_EMBEDDINGS}

    def __init__(self, config):
        if not config.is_decoder:
            raise ValueError(
                f"{type(self).__name__} needs a causal model but the config has is_decoder=False; "
                f"build it with is_decoder=True (e.g. AutoConfig.for_model('{config.model_type}', "
                f"is_decoder=True)).")
        super().__init__(config)
        self.lm_head = self._build_lm_head(config)
        self.post_init()

    def _build_lm_head(self, config) -> nn.Module:
        """The projection to the vocabulary, tied to the input embeddings; an architecture whose
        outputs do not fit that layout overrides it (built before `post_init` initialises it)."""
        return nn.Linear(self.model.output_size, config.vocab_size, bias=False)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep: int = 0,
                **kwargs):
        """`labels` are the input ids (shifted inside); -100 marks positions without loss."""
        outputs, as_tuple = self._backbone(dict(kwargs, input_ids=input_ids,
                                                attention_mask=attention_mask))
        hidden = outputs.last_hidden_state
        if labels is not None:  # one label per input position, whatever logits_to_keep keeps
            check_labels(labels, hidden.shape[:2], self.config.vocab_size, "vocab_size")
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None if labels is None else shifted_lm_loss(logits, labels)
        return self._finish(CausalLMOutputWithPast(
            loss=loss, logits=logits, **cache_field(cache_of(outputs)),
            hidden_states=outputs.hidden_states, attentions=outputs.attentions), as_tuple)


def shifted_lm_loss(logits, labels):
    """Mean cross-entropy of predicting token t+1 from position t, ignoring -100 labels."""
    shifted = labels[:, 1:].to(logits.device)
    return mean_cross_entropy(logits[:, :-1].flatten(0, 1).float(), shifted.flatten())


def mean_cross_entropy(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Cross-entropy averaged over the labels that are not `ignore_index`. With none (a batch
    whose labels are all ignored) it is 0 with zero gradients, still on the autograd graph, where
    torch's mean is NaN (0 / 0), which a Trainer step would write into the weights."""
    labelled = (labels != ignore_index).sum().clamp(min=1)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / labelled


class MaskedLMPredictionHead(nn.Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (BERT / RoBERTa layout)."""

    def __init__(self, config, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.activation = nn.GELU()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden):
        return self.decoder(self.layer_norm(self.activation(self.dense(hidden))))


class DecoderOutputEmbeddings:
    """The output embeddings of a head whose `lm_head` keeps its vocabulary projection as
    `decoder`."""

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, value):
        self.lm_head.decoder = value


class ForMaskedLM(DecoderOutputEmbeddings, HeadBase):
    _tied_weights_keys = {"lm_head.decoder.weight": WORD_EMBEDDINGS}

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = self._build_lm_head(config)
        self.post_init()

    def _build_lm_head(self, config) -> nn.Module:
        """As `ForCausalLM._build_lm_head`: overridable, built before `post_init`."""
        return MaskedLMPredictionHead(config, self.model.output_size)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """`labels`: the original ids at masked positions, -100 elsewhere."""
        outputs, as_tuple = self._backbone(dict(kwargs, input_ids=input_ids,
                                                attention_mask=attention_mask))
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            check_labels(labels, logits.shape[:2], self.config.vocab_size, "vocab_size")
            loss = mean_cross_entropy(logits.flatten(0, 1).float(),
                                      labels.to(logits.device).flatten())
        return self._finish(MaskedLMOutput(loss=loss, logits=logits,
                                           hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions), as_tuple)


def classification_head(config, input_size: int) -> nn.Module:
    """The layers `config.classifier_head` names, from the pooled vector to the logits."""
    if config.classifier_head == "linear":
        return LinearClassificationHead(config, input_size)
    return ClassificationHead(config, input_size)


class LinearClassificationHead(nn.Module):
    """One bias-free projection (transformers' decoder classifiers: GPT-2, TransfoXL's `score`)."""

    def __init__(self, config, input_size: int):
        super().__init__()
        self.score = nn.Linear(input_size, config.num_labels, bias=False)

    def forward(self, pooled):
        return self.score(pooled)


class ClassificationHead(nn.Module):
    """dropout -> dense -> activation -> dropout -> projection (RoBERTa / Longformer / Reformer
    layout; the activation is `config.classifier_activation`, tanh unless a converted ELECTRA or
    DistilBERT classifier needs its own)."""

    def __init__(self, config, input_size: int):
        super().__init__()
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.activation = ACT2FN[config.classifier_activation]
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled):
        return self.out_proj(self.dropout(self.activation(self.dense(self.dropout(pooled)))))


def pool(hidden, attention_mask, how: str):
    """(batch, length, width) -> (batch, width): the first or the last real token, or the mean
    over real tokens; real tokens are those with attention_mask 1 (all if None). Works for left
    and right padding."""
    if attention_mask is None:
        return {"first": hidden[:, 0], "last": hidden[:, -1], "mean": hidden.mean(dim=1)}[how]
    mask = attention_mask.to(hidden.device, hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    positions = torch.arange(1, mask.shape[1] + 1, device=hidden.device)
    # The largest score picks the token: the last real one, or (reversed ranks) the first.
    ranks = positions if how == "last" else positions.flip(0)
    chosen = (ranks * attention_mask.to(hidden.device).long()).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), chosen]


class ForSequenceClassification(HeadBase):
    """Pools as `config.pooling` says; regression, single- or multi-label loss as transformers.
    Returns the backbone's cache (`cache`; `past_key_values` before transformers 5.24) when it
    gives one (a decoder with use_cache,
    Transformer-XL's memory), as transformers' GPT-2 and TransfoXL classifiers do."""

    output_class = SequenceClassifierOutputWithPast

    def __init__(self, config):
        super().__init__(config)
        self.classifier = classification_head(config, self.model.output_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        outputs, as_tuple = self._backbone(dict(kwargs, input_ids=input_ids,
                                                attention_mask=attention_mask))
        hidden = outputs.last_hidden_state
        pooled = pool(hidden, self._real_tokens(input_ids, attention_mask, hidden.shape[1]),
                      self.config.pooling)
        logits = self.classifier(pooled)
        loss = None if labels is None else self._loss(logits, labels.to(logits.device))
        output = self.output_class(loss=loss, logits=logits, **cache_field(cache_of(outputs)),
                                   hidden_states=outputs.hidden_states,
                                   attentions=outputs.attentions)
        return self._finish(output, as_tuple)

    def _real_tokens(self, input_ids, attention_mask, length: int):
        """The mask pooling reads: `attention_mask` (its last `length` columns: a cache's model may
        take one over the cached tokens too), else (as transformers' GPT-2 and TransfoXL
        classifiers do) the ids that are not `pad_token_id`, else None (every token)."""
        if attention_mask is not None:
            return attention_mask[:, -length:]
        if input_ids is None or self.config.pad_token_id is None:
            return None
        return (input_ids != self.config.pad_token_id).long()

    def _loss(self, logits, labels):
        if self.config.problem_type is None:
            self.config.problem_type = infer_problem_type(self.config.num_labels, labels)
        if self.config.problem_type == "regression":
            return (F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
                    if self.config.num_labels == 1 else F.mse_loss(logits.float(), labels.float()))
        if self.config.problem_type == "single_label_classification":
            # (batch, 1), which transformers' view(-1) takes as (batch,)
            if labels.dim() == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            check_labels(labels, logits.shape[:1], self.config.num_labels, "num_labels")
            return mean_cross_entropy(logits.float(), labels)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def infer_problem_type(num_labels: int, labels) -> str:
    """transformers' rule: one output is regression, integer labels single-label, else
    multi-label."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


class ForQuestionAnswering(HeadBase):
    """Extractive QA: start and end logits per token; loss averages the two cross-entropies."""

    def __init__(self, config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(self.model.output_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, **kwargs):
        outputs, as_tuple = self._backbone(dict(kwargs, input_ids=input_ids,
                                                attention_mask=attention_mask))
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).float().unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions)
        return self._finish(QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions), as_tuple)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """Positions outside the sequence (answers truncated away) are ignored, as in transformers."""
    length = start_logits.shape[1]
    start = start_positions.view(-1).to(start_logits.device).clamp(0, length)
    end = end_positions.view(-1).to(end_logits.device).clamp(0, length)
    return (mean_cross_entropy(start_logits, start, ignore_index=length)
            + mean_cross_entropy(end_logits, end, ignore_index=length)) / 2
