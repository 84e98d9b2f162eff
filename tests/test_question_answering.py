"""Extractive QA: feature windows, span decoding, the restored pipeline task and its registration."""

import json
import logging
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, pipeline
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS, check_task

import longctx
from longctx.question_answering import (
    TASK,
    QuestionAnsweringPipeline,
    best_spans,
    context_room,
    prepare_features,
    register_question_answering_pipeline,
)

register_question_answering_pipeline()

MAX_POSITIONS = 64


def tiny_config(**overrides):
    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=MAX_POSITIONS)
    return AutoConfig.for_model("longctx-transformer", **{**fields, **overrides})


@pytest.fixture(scope="module")
def tokenizer():
    return longctx.byte_tokenizer(model_max_length=512)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForQuestionAnswering.from_config(tiny_config()).eval()


@pytest.fixture(scope="module")
def qa(model, tokenizer):
    return pipeline("question-answering", model=model, tokenizer=tokenizer)


@pytest.fixture
def transformers_log():
    """Records everything transformers logs (its logger does not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(handler)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_debug()
    yield records
    transformers.logging.set_verbosity(verbosity)
    library_logger.removeHandler(handler)


# --------------------------------------------------------------------------- best_spans


def feature(context_chars, question_tokens=2, char_offset=0):
    """Offsets of one window "[CLS] q.. [SEP] context.. [SEP]", one token per character."""
    context = [(char_offset + i, char_offset + i + 1) for i in range(context_chars)]
    return [None] * (question_tokens + 2) + context + [None]


def logits(length, **at):
    """Zero logits of `length` tokens with the given values at positions p<index>=value."""
    values = np.zeros(length)
    for name, value in at.items():
        values[int(name[1:])] = value
    return values


def softmax_peak(peak, others):
    """Probability of a logit `peak` among `others` logits 0 (CLS included in `others`)."""
    return math.exp(peak) / (math.exp(peak) + others)


# Window over "abcd": 0 [CLS], 1-2 question, 3 [SEP], 4-7 = a b c d, 8 [SEP].
ABCD = feature(4)


def test_best_span_is_the_peak_and_score_is_the_product_of_softmaxes():
    question_noise = dict(p1=10, p2=10, p3=10, p8=10)  # outside the context: must be ignored
    start = logits(9, p5=4, **question_noise)
    end = logits(9, p6=4, **question_noise)
    [best] = best_spans(start, end, [ABCD], "abcd")
    # Softmax over the 4 context tokens and [CLS]: one logit 4, four logits 0.
    assert best == {"score": pytest.approx(softmax_peak(4, 4) ** 2), "start": 1, "end": 3, "answer": "bc"}


def test_best_span_accepts_tensors_and_a_single_feature_without_feature_axis():
    start, end = logits(9, p5=4), logits(9, p6=4)
    expected = best_spans(start[None], end[None], [ABCD], "abcd", top_k=5)
    assert best_spans(torch.tensor(start), torch.tensor(end), ABCD, "abcd", top_k=5) == expected


def test_spans_ending_before_they_start_are_excluded():
    start = logits(9, p6=5)  # best start: c
    end = logits(9, p5=5, p6=1)  # best end: b, before c
    # (c, c) scores e^5 * e^1, any (x, b) at most e^0 * e^5 (same denominators).
    assert best_spans(start, end, [ABCD], "abcd")[0]["answer"] == "c"
    answers = best_spans(start, end, [ABCD], "abcd", top_k=50)
    assert len(answers) == 10  # all 4 * 5 / 2 spans with start <= end, nothing else
    assert all(answer["start"] < answer["end"] for answer in answers)


def test_max_answer_len_limits_the_span_in_tokens():
    start, end = logits(9, p4=5), logits(9, p7=5, p6=1)  # best: a .. d
    assert best_spans(start, end, [ABCD], "abcd", max_answer_len=4)[0]["answer"] == "abcd"
    # abcd is 4 tokens: (a, c) scores e^5 * e^1, anything ending at d at most e^0 * e^5.
    assert best_spans(start, end, [ABCD], "abcd", max_answer_len=3)[0]["answer"] == "abc"
    answers = best_spans(start, end, [ABCD], "abcd", max_answer_len=2, top_k=50)
    assert {answer["answer"] for answer in answers} == {"a", "b", "c", "d", "ab", "bc", "cd"}


def test_best_span_can_come_from_a_later_window():
    # "abcdef" in two windows: chars 0-3 and 2-5 (overlap "cd").
    offsets = [feature(4, question_tokens=1), feature(4, question_tokens=1, char_offset=2)]
    start = np.stack([logits(8), logits(8, p5=6)])  # second window: e at position 5
    end = np.stack([logits(8), logits(8, p6=6)])  # f at position 6
    best, second = best_spans(start, end, offsets, "abcdef", top_k=2)
    assert best == {"score": pytest.approx(softmax_peak(6, 4) ** 2), "start": 4, "end": 6, "answer": "ef"}
    assert second["score"] < best["score"]


def test_spans_found_in_several_windows_are_deduplicated_keeping_the_best_score():
    offsets = [feature(4, question_tokens=1), feature(4, question_tokens=1, char_offset=2)]
    # Both windows point at "cd": positions 5-6 in the first, 3-4 in the second (more sure).
    start = np.stack([logits(8, p5=3), logits(8, p3=5)])
    end = np.stack([logits(8, p6=3), logits(8, p4=5)])
    answers = best_spans(start, end, offsets, "abcdef", top_k=4)
    assert answers[0]["answer"] == "cd"
    assert answers[0]["score"] == pytest.approx(softmax_peak(5, 4) ** 2)
    assert [a["answer"] for a in answers].count("cd") == 1
    assert len({(a["start"], a["end"]) for a in answers}) == 4
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)


def test_tokens_of_one_character_give_one_span():
    # "é!" as bytes: two tokens share the span of é.
    offsets = [None, None, (0, 1), (0, 1), (1, 2), None]
    answers = best_spans(logits(6), logits(6), [offsets], "é!", top_k=10)
    assert sorted(a["answer"] for a in answers) == ["!", "é", "é!"]


def test_no_valid_span_returns_the_empty_answer_with_score_zero():
    empty = {"score": 0.0, "start": 0, "end": 0, "answer": ""}
    assert best_spans(logits(4), logits(4), [[None] * 4], "abc") == [empty]
    # With n_best=1 the only start candidate (c) comes after the only end candidate (b).
    start, end = logits(9, p6=5), logits(9, p5=5, p6=1)
    assert best_spans(start, end, [ABCD], "abcd", n_best=1) == [empty]
    assert best_spans(start, end, [ABCD], "abcd", n_best=None)[0]["answer"] == "c"


def test_handle_impossible_answer_scores_the_first_token_in_its_least_sure_window():
    offsets = [feature(4, question_tokens=1), feature(4, question_tokens=1, char_offset=2)]
    start = np.stack([logits(8, p0=5), logits(8, p0=3)])
    end = np.stack([logits(8, p0=5), logits(8, p0=3)])
    answers = best_spans(start, end, offsets, "abcdef", top_k=3, handle_impossible_answer=True)
    assert answers[0] == {"score": pytest.approx(softmax_peak(3, 4) ** 2), "start": 0, "end": 0, "answer": ""}
    assert all(answer["answer"] for answer in answers[1:])
    assert "" not in [a["answer"] for a in best_spans(start, end, offsets, "abcdef", top_k=3)]


def test_best_spans_rejects_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        best_spans(logits(9), logits(9), [ABCD], "abcd", top_k=0)
    with pytest.raises(ValueError, match="max_answer_len"):
        best_spans(logits(9), logits(9), [ABCD], "abcd", max_answer_len=0)
    with pytest.raises(ValueError, match="offsets"):
        best_spans(np.zeros((2, 9)), np.zeros((2, 9)), [ABCD], "abcd")


# --------------------------------------------------------------------------- prepare_features

LONG_CONTEXT = ("Zoë met Chloé in Zürich 😀 at the café; " * 4) + "the end."


def context_tokens(features, index):
    return [(token, offset) for token, offset in zip(features["input_ids"][index], features["offset_mapping"][index])
            if offset is not None]


def test_windows_overlap_by_doc_stride_and_cover_the_context(tokenizer):
    question, stride = "Who?", 8
    features = prepare_features(tokenizer, [question], [LONG_CONTEXT], max_length=32, doc_stride=stride)
    windows = [context_tokens(features, i) for i in range(len(features["input_ids"]))]
    room = 32 - len(question) - 3  # bytes of the question and <s> </s> </s>
    assert len(windows) == math.ceil((len(LONG_CONTEXT.encode()) - stride) / (room - stride))
    assert features["example_index"] == [0] * len(windows)
    for window, following in zip(windows, windows[1:]):
        assert len(window) == room
        assert window[-stride:] == following[:stride]
    covered = {char for window in windows for _, (start, end) in window for char in range(start, end)}
    assert covered == set(range(len(LONG_CONTEXT)))


def test_offsets_point_at_the_characters_of_the_tokens(tokenizer):
    features = prepare_features(tokenizer, ["Who?"], [LONG_CONTEXT], max_length=32, doc_stride=8)
    for index in range(len(features["input_ids"])):
        for token, (start, end) in context_tokens(features, index):
            byte = token - longctx.tokenization_bytes.NUM_SPECIAL_TOKENS
            assert bytes([byte]) in LONG_CONTEXT[start:end].encode()


def test_question_is_whole_in_every_window_and_only_context_has_offsets(tokenizer):
    questions, contexts = ["Who?", "Where is it?"], [LONG_CONTEXT, "short"]
    features = prepare_features(tokenizer, questions, contexts, max_length=40, doc_stride=10)
    assert set(features) == {"input_ids", "attention_mask", "example_index", "offset_mapping"}
    for index, example in enumerate(features["example_index"]):
        question_ids = tokenizer(questions[example], add_special_tokens=False)["input_ids"]
        ids, offsets = features["input_ids"][index], features["offset_mapping"][index]
        assert ids[1:1 + len(question_ids)] == question_ids
        assert len(ids) == len(offsets) == 40  # padded to the longest window
        n_context = sum(mask for mask in features["attention_mask"][index]) - len(question_ids) - 3
        context_start = len(question_ids) + 2
        assert all(offset is not None for offset in offsets[context_start:context_start + n_context])
        assert offsets[:context_start] == [None] * context_start
        assert all(offset is None for offset in offsets[context_start + n_context:])
    assert features["example_index"][-1] == 1 and features["example_index"].count(1) == 1


def test_transformers_tokenizers_keep_their_token_type_ids(bert):
    _, bert_tokenizer = bert
    features = prepare_features(bert_tokenizer, ["what is the code?"], ["the code is xyz"], 64, 16)
    assert features["token_type_ids"][0][-2] == 1
    context_offsets = [offset for offset in features["offset_mapping"][0] if offset]
    assert context_offsets == [(0, 3), (4, 8), (9, 11), (12, 13), (13, 14), (14, 15)]  # the, code, is, x, ##y, ##z


def test_prepare_features_errors_name_the_argument_and_the_fix(tokenizer):
    assert context_room(tokenizer, "Who?", 32) == 25
    prepare_features(tokenizer, ["Who?"], [LONG_CONTEXT], max_length=32, doc_stride=24)  # largest valid stride
    with pytest.raises(ValueError, match=r"doc_stride=25 must be smaller than the 25 .*lower doc_stride"):
        prepare_features(tokenizer, ["Who?"], [LONG_CONTEXT], max_length=32, doc_stride=25)
    with pytest.raises(ValueError, match=r"questions\[1\] leaves no room.*raise max_length"):
        prepare_features(tokenizer, ["Who?", "x" * 29], ["a", "b"], max_length=32, doc_stride=0)
    with pytest.raises(ValueError, match="equal|one to one"):
        prepare_features(tokenizer, ["Who?"], ["a", "b"], max_length=32, doc_stride=0)
    with pytest.raises(ValueError, match="fast tokenizer"):
        prepare_features(transformers.ByT5Tokenizer(), ["Who?"], ["a"], max_length=32, doc_stride=0)


# --------------------------------------------------------------------------- pipeline


def check_answer(answer, context):
    assert set(answer) == {"score", "start", "end", "answer"}
    assert answer["answer"] == context[answer["start"]:answer["end"]]
    assert 0.0 <= answer["score"] <= 1.0


def test_pipeline_task_builds_our_pipeline(qa, model):
    assert isinstance(qa, QuestionAnsweringPipeline)
    assert qa.model is model and not model.training
    assert qa.default_max_seq_len() == MAX_POSITIONS  # the model's limit, below the tokenizer's 512


def test_the_call_forms_of_transformers_4(qa):
    context = "Ada Lovelace wrote the first program."
    single = qa(question="Who wrote it?", context=context)
    check_answer(single, context)
    assert qa({"question": "Who wrote it?", "context": context}) == single
    assert qa("Who wrote it?", context) == single
    assert qa([{"question": "Who wrote it?", "context": context}] * 2) == [single, single]
    assert qa(question=["Who wrote it?"] * 2, context=context) == [single, single]
    assert qa([]) == []
    three = qa(question="Who wrote it?", context=context, top_k=3)
    assert isinstance(three, list) and three[0] == single


def test_long_context_runs_in_several_windows(qa):
    question = "What?"
    inputs = qa.preprocess({"question": question, "context": LONG_CONTEXT})
    n_windows, length = inputs["model_inputs"]["input_ids"].shape
    assert length == MAX_POSITIONS and n_windows > 2
    room = MAX_POSITIONS - len(question) - 3
    first, second = ([offset for offset in window if offset] for window in inputs["offsets"][:2])
    assert first[-(room // 2):] == second[:room // 2]  # default stride: half the room (below 128)
    check_answer(qa(question=question, context=LONG_CONTEXT), LONG_CONTEXT)


def test_pipeline_matches_model_plus_best_spans(qa, model, tokenizer):
    question = "Where did they meet?"
    features = prepare_features(tokenizer, [question], [LONG_CONTEXT], max_length=MAX_POSITIONS, doc_stride=20)
    with torch.no_grad():
        outputs = model(input_ids=torch.tensor(features["input_ids"]),
                        attention_mask=torch.tensor(features["attention_mask"]))
    expected = best_spans(outputs.start_logits, outputs.end_logits, features["offset_mapping"], LONG_CONTEXT,
                          top_k=5, max_answer_len=30)
    answers = qa(question=question, context=LONG_CONTEXT, doc_stride=20, top_k=5)
    assert [(a["start"], a["end"], a["answer"]) for a in answers] == [
        (e["start"], e["end"], e["answer"]) for e in expected]
    assert [a["score"] for a in answers] == pytest.approx([e["score"] for e in expected], rel=1e-4)


def test_top_k_answers_are_sorted_distinct_and_non_ascii_safe(qa):
    context = "Zoë 😀 naïve café — 東京 🇨🇭 Ünïcödé"
    answers = qa(question="Which?", context=context, top_k=12, max_answer_len=8)
    assert len(answers) == 12
    assert len({(a["start"], a["end"]) for a in answers}) == 12
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    for answer in answers:
        check_answer(answer, context)
        assert len(answer["answer"].encode()) <= 8  # max_answer_len counts byte tokens


def test_pipeline_argument_errors(qa, model):
    with pytest.raises(ValueError, match="max_seq_len=128 exceeds"):
        qa(question="Who?", context="Ada", max_seq_len=128)
    with pytest.raises(ValueError, match="context must be a non-empty string"):
        qa(question="Who?", context="  ")
    with pytest.raises(ValueError, match="Unknown question-answering arguments"):
        qa(question="Who?", context="Ada", topk=2)
    with pytest.raises(ValueError, match="fast tokenizer"):
        pipeline("question-answering", model=model, tokenizer=transformers.ByT5Tokenizer())


def test_pipeline_loads_a_saved_model_by_path(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = pipeline("question-answering", model=str(tmp_path))
    assert type(loaded.model) is type(model)
    context = "Ada Lovelace wrote the first program."
    assert loaded(question="Who?", context=context)["answer"] == \
        pipeline("question-answering", model=model, tokenizer=tokenizer)(question="Who?", context=context)["answer"]


# Tiny sizes every architecture takes; the context below needs several 64-token windows.
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=MAX_POSITIONS)
ARCHITECTURE_FIELDS = {
    "longctx-longformer": dict(attention_window=8),
    "longctx-linformer": dict(projection_dim=8),
    # Chunks shorter than a window, so LSH hashes; hash_seed makes it the same in both processes.
    "longctx-reformer": dict(lsh_attn_chunk_length=16, local_attn_chunk_length=16, hash_seed=5),
}
HEADLESS_QUESTION = "Who met Chloé?"


def save_question_answering_model(model_type, folder, tokenizer):
    torch.manual_seed(0)
    fields = {**TINY_SIZES, **ARCHITECTURE_FIELDS.get(model_type, {})}
    config = AutoConfig.for_model(model_type, **fields)
    model = AutoModelForQuestionAnswering.from_config(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_saved_checkpoint_brings_the_pipeline_where_longctx_is_missing(tokenizer, tmp_path):
    """Every architecture's QA checkpoint + byte tokenizer: pipeline("question-answering",
    model=folder, trust_remote_code=True) in a Python where `import longctx` fails builds the
    checkpoint's own copy of the pipeline, which answers as longctx's does in this process."""
    expected = {}
    for model_type in longctx.ARCHITECTURES:
        model = save_question_answering_model(model_type, tmp_path / model_type, tokenizer)
        qa_here = pipeline("question-answering", model=model, tokenizer=tokenizer)
        expected[model_type] = qa_here(question=HEADLESS_QUESTION, context=LONG_CONTEXT, top_k=3)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["longctx"] = None  # `import longctx` now raises ImportError
        from transformers import pipeline
        answers = {{}}
        for model_type in {list(expected)!r}:
            folder = {str(tmp_path)!r} + "/" + model_type
            qa = pipeline("question-answering", model=folder, trust_remote_code=True)
            assert type(qa).__module__.startswith("transformers_modules."), type(qa).__module__
            answers[model_type] = qa(question={HEADLESS_QUESTION!r}, context={LONG_CONTEXT!r},
                                     top_k=3)
        print("ANSWERS", json.dumps(answers))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert "ANSWERS" in result.stdout, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("ANSWERS", 1)[1])
    for model_type, answers in expected.items():
        got = remote[model_type]
        assert [(a["start"], a["end"], a["answer"]) for a in got] == [
            (a["start"], a["end"], a["answer"]) for a in answers], model_type
        assert [a["score"] for a in got] == pytest.approx([a["score"] for a in answers],
                                                          rel=1e-5), model_type


def test_only_a_question_answering_checkpoint_names_the_pipeline(tmp_path):
    """A QA checkpoint names the pipeline, another head's does not (with one custom pipeline,
    pipeline() without a task would pick it); the model's config in memory does not keep it, nor
    does a config loaded where longctx is imported (pipeline() would then demand
    trust_remote_code=True for the task longctx serves)."""
    torch.manual_seed(0)
    for auto_class, names_it in [(transformers.AutoModelForQuestionAnswering, True),
                                 (transformers.AutoModelForMaskedLM, False)]:
        model = auto_class.from_config(tiny_config())
        folder = tmp_path / auto_class.__name__
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        assert ("custom_pipelines" in saved) == names_it, auto_class
        assert not hasattr(model.config, "custom_pipelines")
    saved = json.loads((tmp_path / "AutoModelForQuestionAnswering" / "config.json").read_text())
    assert saved["custom_pipelines"][TASK]["impl"] == "question_answering.QuestionAnsweringPipeline"
    carried = (tmp_path / "AutoModelForQuestionAnswering" / "question_answering.py").read_text()
    assert carried == Path(longctx.question_answering.__file__).read_text()
    reloaded = AutoConfig.from_pretrained(tmp_path / "AutoModelForQuestionAnswering")
    assert not hasattr(reloaded, "custom_pipelines")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "code", "is", "what", "?", ".", ","]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab_file = tmp_path_factory.mktemp("bert") / "vocab.txt"
    vocab_file.write_text("\n".join(words + list(letters) + [f"##{c}" for c in letters]))
    bert_tokenizer = transformers.BertTokenizerFast(str(vocab_file))
    config = transformers.BertConfig(vocab_size=len(words) + 2 * len(letters), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=48)
    torch.manual_seed(0)
    return transformers.BertForQuestionAnswering(config), bert_tokenizer


def test_pipeline_works_with_a_transformers_model(bert):
    bert_model, bert_tokenizer = bert
    bert_qa = pipeline("question-answering", model=bert_model, tokenizer=bert_tokenizer)
    context = "the code is xyz42, " * 10  # about 100 tokens: several 48-token windows
    assert bert_qa.preprocess({"question": "what is the code?", "context": context})[
        "model_inputs"]["token_type_ids"].shape[0] > 2
    for answer in bert_qa(question="what is the code?", context=context, top_k=3):
        check_answer(answer, context)


# --------------------------------------------------------------------------- registration


def test_registration_is_idempotent_silent_and_restores_the_task(monkeypatch, transformers_log):
    assert register_question_answering_pipeline() is True
    monkeypatch.delitem(PIPELINE_REGISTRY.supported_tasks, TASK)
    monkeypatch.setitem(REMOVED_TASKS, TASK, "removed")
    with pytest.raises(KeyError, match="has been removed"):
        check_task(TASK)
    assert register_question_answering_pipeline() is True
    assert register_question_answering_pipeline() is True
    _, task, _ = check_task(TASK)
    assert task["impl"] is QuestionAnsweringPipeline and task["pt"] == (AutoModelForQuestionAnswering,)
    assert TASK not in REMOVED_TASKS
    assert transformers_log == []


def test_registration_respects_another_pipeline_for_the_task(monkeypatch):
    theirs = {"impl": object, "pt": ()}
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, TASK, theirs)
    assert register_question_answering_pipeline() is False
    assert PIPELINE_REGISTRY.supported_tasks[TASK] is theirs


def test_other_tasks_are_untouched(tokenizer):
    assert "translation" in REMOVED_TASKS and "summarization" in REMOVED_TASKS
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_config(tiny_config(num_labels=2))
    result = pipeline("text-classification", model=classifier, tokenizer=tokenizer)("hello")
    assert result[0]["label"] in {"LABEL_0", "LABEL_1"}


# --------------------------------------------------------------------------- a trained model

QUESTION = "[?]"  # the answer is the text between '[' and ']'
MAX_CONTEXT_BYTES = 32
CHARACTERS = "abcdefghijklmnopqrstuvwxyzéüñ😀"  # multi-byte characters test the offsets


class BracketTask:
    """Contexts of random words, one span of them in brackets. Training also shows windows
    without the answer -- no brackets, or cut inside them -- labelled with position 0, as
    run_qa labels windows that miss the answer; that teaches the model to say "not here"."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def words(self, low, high):
        return " ".join("".join(self.rng.choice(CHARACTERS) for _ in range(self.rng.randint(1, 4)))
                        for _ in range(self.rng.randint(low, high)))

    def fitting(self, make_context):
        while len((context := make_context()).encode()) > MAX_CONTEXT_BYTES:
            pass
        return context

    def example(self):
        """(context, answer start, answer end) with the answer between the brackets."""
        context = self.fitting(lambda: f"{self.words(0, 4)} [{self.words(1, 2)}] {self.words(0, 4)}".strip())
        return context, context.index("[") + 1, context.index("]")

    def training_example(self):
        kind = self.rng.random()
        if kind < 0.2:
            return self.fitting(lambda: self.words(1, 9)), None, None
        if kind < 0.4:
            context, start, end = self.example()
            cut = self.rng.randint(start, end)
            return (context[:cut] if self.rng.random() < 0.5 else context[cut:]) or "a", None, None
        return self.example()


def token_labels(offsets, start, end):
    """First token starting at char `start`, last token ending at char `end` (0, 0: no answer)."""
    if start is None:
        return 0, 0
    first = next(i for i, offset in enumerate(offsets) if offset and offset[0] == start)
    last = max(i for i, offset in enumerate(offsets) if offset and offset[1] == end)
    return first, last


def train_bracket_model(tokenizer, task, steps=350, batch_size=32, learning_rate=3e-3):
    torch.manual_seed(0)
    model = AutoModelForQuestionAnswering.from_config(
        tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    warmup = steps // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    model.train()
    for _ in range(steps):
        examples = [task.training_example() for _ in range(batch_size)]
        features = prepare_features(tokenizer, [QUESTION] * batch_size, [c for c, _, _ in examples],
                                    max_length=MAX_POSITIONS, doc_stride=0)
        labels = [token_labels(offsets, start, end)
                  for offsets, (_, start, end) in zip(features["offset_mapping"], examples)]
        loss = model(input_ids=torch.tensor(features["input_ids"]),
                     attention_mask=torch.tensor(features["attention_mask"]),
                     start_positions=torch.tensor([start for start, _ in labels]),
                     end_positions=torch.tensor([end for _, end in labels])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


def test_a_trained_model_finds_the_answer(tokenizer):
    task = BracketTask(seed=0)
    trained_qa = pipeline("question-answering", model=train_bracket_model(tokenizer, task), tokenizer=tokenizer)

    tests = [task.example() for _ in range(30)]
    found = [trained_qa(question=QUESTION, context=context)["answer"] == context[start:end]
             for context, start, end in tests]
    assert sum(found) >= 27, tests

    # Long contexts: the brackets sit in one of several windows (windows no longer than the
    # training contexts, since the model only learned those positions).
    found = []
    for context, start, end in tests[:10]:
        before, after = task.words(20, 20), task.words(12, 12)
        long_context = f"{before} {context} {after}"
        shift = len(before) + 1
        answer = trained_qa(question=QUESTION, context=long_context, max_seq_len=MAX_CONTEXT_BYTES + 8, doc_stride=16)
        found.append(answer["answer"] == long_context[shift + start:shift + end])
    assert sum(found) >= 8

    # No brackets: with handle_impossible_answer the empty answer wins.
    empty = [trained_qa(question=QUESTION, context=task.words(3, 5), handle_impossible_answer=True)["answer"] == ""
             for _ in range(10)]
    assert sum(empty) >= 8
