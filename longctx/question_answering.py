"""Extractive question answering: feature building, span decoding and the pipeline task.

transformers 5 removed the ``question-answering`` pipeline. This module brings it back for any
model loadable with `AutoModelForQuestionAnswering` (longctx or transformers models) and a fast
tokenizer, and exposes the two steps a SQuAD script needs as library code:

* `prepare_features` -- cut each (question, context) pair into overlapping windows that fit the
  model, remembering which example each window came from and where its context tokens sit in
  the context string;
* `best_spans` -- turn the start/end logits of all windows of one example into ranked answers.

`register_question_answering_pipeline()` (called by ``import longctx``) makes
``transformers.pipeline("question-answering", model=..., tokenizer=...)`` return
`QuestionAnsweringPipeline`. Where longctx is not installed, a checkpoint saved by longctx brings
the pipeline itself: this file travels with the modeling code and config.json names it in
`custom_pipelines` (`CUSTOM_PIPELINES`), so ``pipeline("question-answering", model=folder,
trust_remote_code=True)`` builds it. It therefore imports nothing but numpy, torch and transformers.

Score of a span (used everywhere here): inside the window (feature) that holds the span,

    score(s, e) = softmax(start_logits)[s] * softmax(end_logits)[e]

where both softmaxes run over that window's context tokens plus its first token ([CLS] / <s>,
position 0); question, separator and padding tokens are excluded. The first token is where
extractive QA training puts the label of a window that does not contain the answer (SQuAD 2,
and run_qa for answers cut off by windowing), so the probability it takes is "not in this
window": a window that knows it lacks the answer gives all its spans low scores, which keeps
windows comparable although each is normalised on its own. The same probabilities give the
"no answer" score p_start[0] * p_end[0]. The transformers 4 pipeline scored spans the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, Pipeline

TASK = "question-answering"
DEFAULT_DOC_STRIDE = 128
DEFAULT_N_BEST = 20
# Used only when neither the tokenizer nor the model config states a usable length.
FALLBACK_MAX_SEQ_LEN = 384
# Tokenizers without a real limit report a huge sentinel (about 1e30) as model_max_length.
_NO_LIMIT = 10**9

CONTEXT_SEQUENCE = 1  # sequence_ids() of the second text of a pair
# Keys of the tokenizer output that are bookkeeping, not model inputs.
_TOKENIZER_BOOKKEEPING = ("offset_mapping", "overflow_to_sample_mapping")


# --------------------------------------------------------------------------- features


def require_fast_tokenizer(tokenizer) -> None:
    """Raise ValueError unless `tokenizer` is a fast (Rust) tokenizer.

    Windowing needs character offsets and `sequence_ids()`, which only fast tokenizers provide.
    """
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"Extractive question answering needs a fast tokenizer (character offsets and "
            f"sequence ids), got {type(tokenizer).__name__}; load one with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True) or use longctx.byte_tokenizer()."
        )


def context_rooms(tokenizer, questions: Sequence[str], max_length: int) -> list[int]:
    """Per question, how many context tokens fit in one window next to it (may be <= 0)."""
    if not questions:
        return []
    # One batched call for all questions.
    question_ids = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    special_tokens = tokenizer.num_special_tokens_to_add(pair=True)
    return [max_length - len(ids) - special_tokens for ids in question_ids]


def context_room(tokenizer, question: str, max_length: int) -> int:
    """How many context tokens fit in one window next to `question` (may be <= 0)."""
    return context_rooms(tokenizer, [question], max_length)[0]


def _check_window_sizes(
    tokenizer, questions: Sequence[str], max_length: int, doc_stride: int
) -> None:
    """Fail with a usable message before the tokenizer does: for a stride that is too large
    the Rust tokenizer panics instead of raising, and for a too-long question it raises an
    opaque truncation error."""
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if not isinstance(doc_stride, int) or doc_stride < 0:
        raise ValueError(
            f"doc_stride must be an int >= 0 (tokens shared by consecutive windows), "
            f"got {doc_stride!r}"
        )
    for index, room in enumerate(context_rooms(tokenizer, questions, max_length)):
        if room < 1:
            raise ValueError(
                f"questions[{index}] leaves no room for the context: with its special tokens it "
                f"takes {max_length - room} of max_length={max_length} tokens; raise max_length "
                f"(max_seq_len in the pipeline) or shorten the question."
            )
        if doc_stride >= room:
            raise ValueError(
                f"doc_stride={doc_stride} must be smaller than the {room} context tokens that fit "
                f"in a window next to questions[{index}] (max_length={max_length}); lower "
                f"doc_stride or raise max_length."
            )


def _context_offsets(encodings, feature: int) -> list:
    """The feature's offsets with every non-context token (question, special, padding) set to
    None."""
    sequence_ids = encodings.sequence_ids(feature)
    return [
        tuple(offset) if sequence_id == CONTEXT_SEQUENCE else None
        for offset, sequence_id in zip(encodings["offset_mapping"][feature], sequence_ids)
    ]


def prepare_features(tokenizer, questions, contexts, max_length: int, doc_stride: int) -> dict:
    """Tokenize (question, context) pairs into overlapping windows of at most `max_length` tokens.

    Each window ("feature") holds the whole question and a slice of the context; consecutive
    windows of one example share `doc_stride` context tokens so an answer cut by one window
    boundary is whole in the next. Windows are padded to the longest one.

    `questions` and `contexts` are equally long lists of strings (a single string each is also
    accepted). Returns a dict of lists, one entry per feature:

    * the model inputs the tokenizer produces (``input_ids``, ``attention_mask``, and
      ``token_type_ids`` for tokenizers that use them);
    * ``example_index``: index into `questions`/`contexts` of the example the feature came from;
    * ``offset_mapping``: per token, the (char_start, char_end) span in that example's context,
      or None for tokens that are not context (the run_qa convention).

    Raises ValueError when the tokenizer is not fast, when a question leaves no room for context
    in `max_length`, or when `doc_stride` is not smaller than the room left for the context.
    """
    require_fast_tokenizer(tokenizer)
    questions = [questions] if isinstance(questions, str) else list(questions)
    contexts = [contexts] if isinstance(contexts, str) else list(contexts)
    if len(questions) != len(contexts):
        raise ValueError(
            f"questions and contexts must pair up one to one, got {len(questions)} questions and "
            f"{len(contexts)} contexts")
    _check_window_sizes(tokenizer, questions, max_length, doc_stride)
    if not questions:  # the tokenizer fails on an empty batch
        return {
            **{name: [] for name in tokenizer.model_input_names},
            "example_index": [],
            "offset_mapping": [],
        }
    encodings = tokenizer(
        questions,
        contexts,
        truncation="only_second",  # never cut the question, only window the context
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="longest",
        padding_side="right",  # position 0 must be <s>/[CLS]: it is the "no answer here" label
    )
    features = {
        name: values
        for name, values in encodings.items()
        if name not in _TOKENIZER_BOOKKEEPING
    }
    features["example_index"] = list(encodings["overflow_to_sample_mapping"])
    n_features = len(encodings["input_ids"])
    features["offset_mapping"] = [
        _context_offsets(encodings, feature) for feature in range(n_features)
    ]
    return features


def answer_token_positions(offsets, answer_start: int, answer_text: str) -> tuple[int, int]:
    """Training labels of one feature: the (start, end) token positions of the answer, or (0, 0)
    (the first token, "not in this window") when the window does not hold the whole answer.

    `offsets` is the feature's row of ``prepare_features(...)["offset_mapping"]`` (None for
    non-context tokens). Several tokens may share one character span (the bytes of one
    character): the start is the last token starting at or before the answer's first
    character, the end the first token ending at or after its last one."""
    answer_end = answer_start + len(answer_text)
    context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
    if not context_tokens or not answer_text:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if offsets[first][0] > answer_start or offsets[last][1] < answer_end:
        return 0, 0
    start = max(i for i in context_tokens if offsets[i][0] <= answer_start)
    end = min(i for i in context_tokens if offsets[i][1] >= answer_end)
    return start, end


def training_labels(features: dict, answers: Sequence[dict]) -> tuple[list[int], list[int]]:
    """`start_positions`, `end_positions` for every feature of `prepare_features`, from each
    example's first answer (`answers[i]` = {"text": [...], "answer_start": [...]}, the SQuAD
    schema)."""
    starts, ends = [], []
    for example, offsets in zip(features["example_index"], features["offset_mapping"]):
        answer = answers[example]
        if not answer["text"]:
            raise ValueError(
                f"example {example} has no answer: extractive training needs one "
                f"(SQuAD v1.1 layout)"
            )
        start, end = answer_token_positions(offsets, answer["answer_start"][0], answer["text"][0])
        starts.append(start)
        ends.append(end)
    return starts, ends


# --------------------------------------------------------------------------- spans


def _as_2d_array(logits) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(logits, dtype=np.float64)
    return array[None] if array.ndim == 1 else array


def _offset_arrays(feature_offsets, length: int):
    """(char start per token, char end per token, is-context mask), padded to `length` tokens;
    non-context tokens get -1 and are never used."""
    char_starts, char_ends = np.full(length, -1), np.full(length, -1)
    is_context = np.zeros(length, dtype=bool)
    for token, offset in enumerate(feature_offsets[:length]):
        if offset is not None:
            char_starts[token], char_ends[token] = offset
            is_context[token] = True
    return char_starts, char_ends, is_context


def _masked_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax over the allowed positions only; 0 elsewhere."""
    shifted = np.where(allowed, logits, -np.inf)
    shifted = shifted - shifted[allowed].max()
    weights = np.exp(shifted)
    return weights / weights.sum()


def _top_positions(logits: np.ndarray, allowed: np.ndarray, n_best: int | None) -> np.ndarray:
    """Boolean mask of the `n_best` allowed positions with the largest logits (all if None)."""
    if n_best is None or n_best >= allowed.sum():
        return allowed
    candidates = np.flatnonzero(allowed)
    best = candidates[np.argsort(-logits[candidates], kind="stable")[:n_best]]
    mask = np.zeros_like(allowed)
    mask[best] = True
    return mask


def _feature_candidates(start_probs, end_probs, can_start, can_end, max_answer_len):
    """All (score, start, end) token pairs of one feature with
    start <= end < start + max_answer_len.

    Scanning the band of width max_answer_len costs O(length * max_answer_len) instead of
    O(length ** 2) for the full start x end matrix, which matters for long windows.
    """
    length = len(start_probs)
    scores, starts, ends = [], [], []
    for extra_tokens in range(min(max_answer_len, length)):
        start = np.arange(length - extra_tokens)
        end = start + extra_tokens
        valid = can_start[start] & can_end[end]
        scores.append(start_probs[start[valid]] * end_probs[end[valid]])
        starts.append(start[valid])
        ends.append(end[valid])
    return np.concatenate(scores), np.concatenate(starts), np.concatenate(ends)


def _check_span_arguments(start_logits, end_logits, offsets, top_k, max_answer_len, n_best) -> None:
    if start_logits.shape != end_logits.shape:
        raise ValueError(
            f"start_logits and end_logits differ in shape: {start_logits.shape} vs "
            f"{end_logits.shape}"
        )
    if len(offsets) != start_logits.shape[0]:
        raise ValueError(
            f"offsets has {len(offsets)} features but the logits have {start_logits.shape[0]}; "
            f"pass one offsets list per feature (row of logits)"
        )
    for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if n_best is not None and (not isinstance(n_best, int) or n_best < 1):
        raise ValueError(
            f"n_best must be a positive int or None (consider every token), got {n_best!r}"
        )


def _answer(context: str, score: float, char_start: int, char_end: int) -> dict:
    return {"score": float(score), "start": int(char_start), "end": int(char_end),
            "answer": context[char_start:char_end]}


def best_spans(
    start_logits,
    end_logits,
    offsets,
    context: str,
    top_k: int = 1,
    max_answer_len: int = 30,
    n_best: int | None = DEFAULT_N_BEST,
    handle_impossible_answer: bool = False,
) -> list[dict]:
    """Rank the answer spans of ONE example from the logits of all its features (windows).

    Args:
        start_logits, end_logits: (num_features, length) arrays or tensors; padding positions
            may be included, they are masked by `offsets`. 1-D logits are one feature, with
            `offsets` either that feature's list or a list holding it.
        offsets: per feature, per token, the (char_start, char_end) of the token in `context`,
            or None for non-context tokens -- ``prepare_features(...)["offset_mapping"]`` rows.
        context: the example's context string.
        top_k: how many distinct answers to return at most.
        max_answer_len: the longest answer, in tokens.
        n_best: only the `n_best` highest start logits and the `n_best` highest end logits of
            each feature's context tokens may start / end a span (the run_qa convention);
            None considers every context token.
        handle_impossible_answer: also rank "no answer", returned as ``{"answer": "",
            "start": 0, "end": 0}``. Its score is p_start[0] * p_end[0] (position 0, the
            [CLS]/<s> token of right-padded inputs) taken in the feature where it is smallest:
            one window that is sure of a span makes "no answer" unlikely.

    Score: ``softmax(start_logits)[s] * softmax(end_logits)[e]`` with both softmaxes over the
    context tokens of the feature holding the span plus its position 0 (see the module
    docstring), so the scores of one feature's spans sum to at most 1.

    Candidates are token pairs (s, e) of one feature with both tokens in the context,
    s <= e and e - s + 1 <= max_answer_len. The answer text is
    ``context[offsets[s][0]:offsets[e][1]]``. Spans are deduplicated by their character
    (start, end) -- overlapping windows and multi-byte characters produce the same span
    several times -- keeping the highest score.

    Returns up to `top_k` dicts ``{"score", "start", "end", "answer"}`` (start/end are character
    offsets into `context`), sorted by decreasing score. When there is no valid span (no
    context tokens, or none of the n-best starts and ends form one) and
    `handle_impossible_answer` is off, returns ``[{"score": 0.0, "start": 0, "end": 0,
    "answer": ""}]``.
    """
    if np.ndim(start_logits) == 1 and len(offsets) == len(start_logits):
        offsets = [offsets]  # one feature's logits and offsets, without the feature axis
    start_logits, end_logits = _as_2d_array(start_logits), _as_2d_array(end_logits)
    _check_span_arguments(start_logits, end_logits, offsets, top_k, max_answer_len, n_best)

    found_scores, found_char_starts, found_char_ends = [], [], []
    null_score = None
    for feature, feature_offsets in enumerate(offsets):
        char_starts, char_ends, is_context = _offset_arrays(feature_offsets, start_logits.shape[1])
        in_softmax = is_context.copy()
        in_softmax[0] = True  # the "not in this window" token, see the module docstring
        start_probs = _masked_softmax(start_logits[feature], in_softmax)
        end_probs = _masked_softmax(end_logits[feature], in_softmax)
        if handle_impossible_answer:
            feature_null = start_probs[0] * end_probs[0]
            null_score = feature_null if null_score is None else min(null_score, feature_null)
        can_start = _top_positions(start_logits[feature], is_context, n_best)
        can_end = _top_positions(end_logits[feature], is_context, n_best)
        scores, starts, ends = _feature_candidates(
            start_probs, end_probs, can_start, can_end, max_answer_len
        )
        found_scores.append(scores)
        found_char_starts.append(char_starts[starts])
        found_char_ends.append(char_ends[ends])

    answers = _distinct_best(_concatenate(found_scores), _concatenate(found_char_starts),
                             _concatenate(found_char_ends), context, top_k)
    if handle_impossible_answer and null_score is not None:
        answers.append(_answer(context, null_score, 0, 0))
        answers.sort(key=lambda answer: answer["score"], reverse=True)
        answers = answers[:top_k]
    return answers or [_answer(context, 0.0, 0, 0)]


def _concatenate(arrays: list) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0)


def _distinct_best(scores, char_starts, char_ends, context: str, top_k: int) -> list[dict]:
    """The `top_k` best-scoring distinct character spans, best first."""
    answers, seen = [], set()
    for index in np.argsort(-scores, kind="stable"):
        span = (int(char_starts[index]), int(char_ends[index]))
        if span in seen:
            continue
        seen.add(span)
        answers.append(_answer(context, scores[index], *span))
        if len(answers) == top_k:
            break
    return answers


# --------------------------------------------------------------------------- pipeline


def _examples_from_call(args: tuple, kwargs: dict):
    """Accept the transformers 4 call forms; return (inputs for Pipeline.__call__, kwargs left).

    qa(question=..., context=...) with strings, or lists (a single string is repeated to pair
    with every item of the other list); qa({"question": ..., "context": ...}); qa([dict, ...]);
    qa(question, context); and datasets / generators of dicts, which stream.
    """
    if "question" in kwargs or "context" in kwargs:
        if args or "question" not in kwargs or "context" not in kwargs:
            raise ValueError("Pass both question= and context= (and no positional input), "
                             "or a dict {'question': ..., 'context': ...} (or a list of them).")
        question, context = kwargs.pop("question"), kwargs.pop("context")
        if isinstance(question, str) and isinstance(context, str):
            return {"question": question, "context": context}, kwargs
        questions = [question] * len(context) if isinstance(question, str) else list(question)
        contexts = [context] * len(questions) if isinstance(context, str) else list(context)
        if len(questions) != len(contexts):
            raise ValueError(f"question and context lists must be equally long, got "
                             f"{len(questions)} and {len(contexts)}")
        return [{"question": q, "context": c} for q, c in zip(questions, contexts)], kwargs
    if len(args) == 2 and all(isinstance(arg, str) for arg in args):
        return {"question": args[0], "context": args[1]}, kwargs
    if len(args) == 1:
        inputs = args[0]
        return (list(inputs) if isinstance(inputs, tuple) else inputs), kwargs
    raise ValueError("Call the pipeline as qa(question=..., context=...), "
                     "qa({'question': ..., 'context': ...}) "
                     "or qa([{'question': ..., 'context': ...}, ...]).")


def _check_example(example) -> tuple[str, str]:
    if not isinstance(example, dict) or not {"question", "context"} <= example.keys():
        raise ValueError(f"Each input must be a dict with 'question' and 'context' strings, "
                         f"got {example!r}")
    question, context = example["question"], example["context"]
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return question, context


class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA: finds the span of `context` that answers `question`.

    >>> qa = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer)
    >>> qa(question="Who?", context="Ada wrote it.")
    {'score': 0.93, 'start': 0, 'end': 3, 'answer': 'Ada'}

    Call options (also accepted when building the pipeline):

    * top_k (1): number of answers; 1 returns a dict, more return a list of dicts, best first.
    * max_seq_len: window length in tokens; default min(tokenizer.model_max_length,
      model.config.max_position_embeddings).
    * doc_stride: tokens shared by consecutive windows of a long context; default
      min(128, half the context room left next to the question).
    * max_answer_len (30): longest answer, in tokens (bytes for the byte tokenizer).
    * n_best (20): start/end candidates per window (see `best_spans`).
    * handle_impossible_answer (False): allow the empty answer "" (see `best_spans`).

    A list of inputs returns a list of results. All windows of one example run in one forward
    pass; `batch_size` is therefore ignored. The model is put in eval mode.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, tokenizer=None, **kwargs):
        require_fast_tokenizer(tokenizer)
        super().__init__(model, tokenizer=tokenizer, **kwargs)
        # from_config() and training leave the model in train mode; dropout would make the
        # answers random. from_pretrained() models are already in eval mode.
        self.model.eval()

    def __call__(self, *args, **kwargs):
        inputs, kwargs = _examples_from_call(args, kwargs)
        if isinstance(inputs, list) and not inputs:
            return []  # the base class peeks at inputs[0]
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, top_k=None, doc_stride=None, max_seq_len=None,
                             max_answer_len=None, n_best=None, handle_impossible_answer=None,
                             **unknown):
        if unknown:
            raise ValueError(f"Unknown question-answering arguments {sorted(unknown)}; expected "
                             f"top_k, doc_stride, max_seq_len, max_answer_len, n_best, "
                             f"handle_impossible_answer")
        preprocess = {name: value for name, value in (("doc_stride", doc_stride),
                                                      ("max_seq_len", max_seq_len))
                      if value is not None}
        postprocess = {name: value for name, value in (
            ("top_k", top_k), ("max_answer_len", max_answer_len), ("n_best", n_best),
            ("handle_impossible_answer", handle_impossible_answer)) if value is not None}
        return preprocess, {}, postprocess

    def default_max_seq_len(self) -> int:
        """min(tokenizer.model_max_length, model.config.max_position_embeddings), ignoring
        either when unset (tokenizers without a limit report a huge sentinel)."""
        limits = [self.tokenizer.model_max_length,
                  getattr(self.model.config, "max_position_embeddings", None)]
        limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT]
        return min(limits) if limits else FALLBACK_MAX_SEQ_LEN

    def _check_max_seq_len(self, max_seq_len: int) -> None:
        model_limit = getattr(self.model.config, "max_position_embeddings", None)
        if (isinstance(model_limit, int) and isinstance(max_seq_len, int)
                and max_seq_len > model_limit):
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's "
                             f"max_position_embeddings={model_limit}; pass max_seq_len <= "
                             f"{model_limit} (long contexts are split into windows anyway).")

    def preprocess(self, example, doc_stride=None, max_seq_len=None):
        question, context = _check_example(example)
        max_seq_len = self.default_max_seq_len() if max_seq_len is None else max_seq_len
        self._check_max_seq_len(max_seq_len)
        if doc_stride is None:
            # Half the room keeps a stride valid even for long questions and short windows.
            doc_stride = max(0, min(DEFAULT_DOC_STRIDE,
                                    context_room(self.tokenizer, question, max_seq_len) // 2))
        features = prepare_features(self.tokenizer, [question], [context], max_seq_len, doc_stride)
        model_inputs = {name: torch.tensor(features[name])
                        for name in self.tokenizer.model_input_names if name in features}
        return {"model_inputs": model_inputs, "offsets": features["offset_mapping"],
                "context": context}

    def _forward(self, inputs):
        outputs = self.model(**inputs["model_inputs"])
        if getattr(outputs, "start_logits", None) is None:
            raise ValueError(f"{type(self.model).__name__} returned no start_logits/end_logits; "
                             f"the question-answering pipeline needs a model loaded with "
                             f"AutoModelForQuestionAnswering.")
        return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits,
                "offsets": inputs["offsets"], "context": inputs["context"]}

    def postprocess(self, outputs, top_k=1, max_answer_len=30, n_best=DEFAULT_N_BEST,
                    handle_impossible_answer=False):
        answers = best_spans(outputs["start_logits"], outputs["end_logits"], outputs["offsets"],
                             outputs["context"], top_k=top_k, max_answer_len=max_answer_len,
                             n_best=n_best,
                             handle_impossible_answer=handle_impossible_answer)
        return answers[0] if top_k == 1 else answers

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params,
                     postprocess_params):
        # One example's windows already form a batch, and examples have different numbers of
        # windows, so examples are never collated together.
        return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params,
                                    postprocess_params)


# --------------------------------------------------------------------------- registration

# config.json's `custom_pipelines`: "module.Class" of this file's pipeline (transformers loads it
# from the checkpoint folder with trust_remote_code=True) and the Auto class that loads its model.
# The module is named by its file alone, which is what it is called inside a checkpoint.
CUSTOM_PIPELINES = {
    TASK: {"impl": f"{__name__.rsplit('.', 1)[-1]}.{QuestionAnsweringPipeline.__name__}",
           "pt": ["AutoModelForQuestionAnswering"], "type": "text"},
}


def _impl_name(impl) -> str:
    return impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}"


def register_question_answering_pipeline() -> bool:
    """Make ``transformers.pipeline("question-answering", ...)`` build `QuestionAnsweringPipeline`.

    Removes the task from transformers' REMOVED_TASKS (which makes pipeline() raise) and
    registers it with PIPELINE_REGISTRY, models loaded with AutoModelForQuestionAnswering.
    Idempotent and silent; other tasks are untouched. A registration made by someone else
    (a future transformers, or the user) is respected: then nothing changes and it returns
    False. Returns True when our pipeline serves the task.
    """
    from transformers import pipelines

    # While listed here, pipeline() raises before it even looks at the registry.
    pipelines.REMOVED_TASKS.pop(TASK, None)
    current = pipelines.PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None:
        if current["impl"] is QuestionAnsweringPipeline:
            return True
        if _impl_name(current["impl"]) != _impl_name(QuestionAnsweringPipeline):
            return False
        # An older copy of this module (importlib.reload): replace it without the overwrite warning.
        del pipelines.PIPELINE_REGISTRY.supported_tasks[TASK]
    pipelines.PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=QuestionAnsweringPipeline, pt_model=AutoModelForQuestionAnswering,
        type="text")
    return True
