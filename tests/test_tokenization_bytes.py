"""Tests for longctx.tokenization_bytes (byte tokenizer and trained byte-level BPE)."""

from __future__ import annotations

import inspect
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from longctx.tokenization_bytes import (
    BYTE_VOCAB_SIZE,
    NUM_SPECIAL_TOKENS,
    SPECIAL_TOKENS,
    byte_token,
    byte_tokenizer,
    train_bpe_tokenizer,
)

TRICKY_STRINGS = [
    "",
    " ",
    "hello world",
    "  leading and trailing  ",
    "multiple   spaces\tand\ttabs\t\t",
    "line\r\nbreaks\nand\rcarriage\r\n\r\n",
    "NUL\x00 and controls \x01\x07\x1b[31m\x7f\x85",
    "emoji 😀🚀 family 👨‍👩‍👧 flag 🇩🇪 skin 👍🏽",
    "CJK 世界你好，日本語のテキスト。한국어",
    "combining e\u0301 a\u0300\u0323 Z\u0351\u0352\u0353 and precomposed é",
    "\u0301 starts with a combining mark",
    "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \U0010ffff \U000e0001",
    "RTL עברית العربية mixed",
    "zero width\u200b\u200c\u200d\ufeff and nbsp\u00a0here",
    "punctuation , . ! ? don't \"quoted\" (parens)",
    "replacement char \ufffd and latin-1 ÿþý",
    "almost special: <mas k> <s >  </ s> <pad",
]

TRAINING_LINES = [
    "the quick brown fox jumps over the lazy dog",
    "long context transformers read long documents with long attention",
    "Köln liegt am Rhein und der Rhein fließt nach Norden",
    "世界你好 世界你好 emoji 😀 🚀 😀",
    "tokenizers turn text into tokens and tokens back into text",
]


def random_unicode_strings(count: int, seed: int = 1234) -> list[str]:
    """Seeded random strings mixing ASCII/controls, Latin-1, the BMP and astral planes."""
    rng = random.Random(seed)
    ranges = [(0x00, 0x7F), (0x80, 0xFF), (0x100, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    strings = []
    while len(strings) < count:
        length = rng.randint(0, 40)
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))
        if not any(token in text for token in SPECIAL_TOKENS):  # in-text specials are tested separately
            strings.append(text)
    return strings


ROUND_TRIP_STRINGS = TRICKY_STRINGS + random_unicode_strings(200)


def expected_byte_ids(text: str) -> list[int]:
    return [NUM_SPECIAL_TOKENS + byte for byte in text.encode("utf-8")]


def char_index_of_each_byte(text: str) -> list[int]:
    """For every UTF-8 byte of `text`, the index of the Python character it belongs to."""
    return [index for index, char in enumerate(text) for _ in char.encode("utf-8")]


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(TRAINING_LINES * 40) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe_tok(corpus_file):
    return train_bpe_tokenizer(corpus_file, vocab_size=1000, min_frequency=2)


@pytest.fixture(params=["byte", "bpe"])
def any_tok(request, byte_tok, bpe_tok):
    return byte_tok if request.param == "byte" else bpe_tok


# --- vocabulary and special tokens ----------------------------------------------------------


def test_special_token_ids_are_fixed(byte_tok):
    assert SPECIAL_TOKENS == {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    assert (NUM_SPECIAL_TOKENS, BYTE_VOCAB_SIZE) == (5, 261)
    assert len(byte_tok) == byte_tok.vocab_size == 261
    for token, token_id in SPECIAL_TOKENS.items():
        assert byte_tok.convert_tokens_to_ids(token) == token_id
    assert (byte_tok.pad_token_id, byte_tok.bos_token_id, byte_tok.cls_token_id) == (0, 1, 1)
    assert (byte_tok.eos_token_id, byte_tok.sep_token_id, byte_tok.unk_token_id, byte_tok.mask_token_id) == (2, 2, 3, 4)
    assert sorted(byte_tok.all_special_ids) == [0, 1, 2, 3, 4]


def test_byte_ids_follow_byte_values_and_gpt2_alphabet(byte_tok):
    # Independent reference: transformers' copy of GPT-2's byte -> unicode table.
    gpt2_table = bytes_to_unicode()
    for byte in range(256):
        assert byte_token(byte) == gpt2_table[byte]
        assert byte_tok.convert_tokens_to_ids(byte_token(byte)) == NUM_SPECIAL_TOKENS + byte
    assert byte_tok(bytes(range(128)).decode("ascii"), add_special_tokens=False)["input_ids"] == list(range(5, 133))


def test_config_attributes(byte_tok):
    assert byte_tok.model_input_names == ["input_ids", "attention_mask"]
    assert byte_tok.clean_up_tokenization_spaces is False
    assert byte_tok.model_max_length == 4096
    assert byte_tokenizer(model_max_length=123).model_max_length == 123
    encoding = byte_tok("abc")
    assert set(encoding.keys()) == {"input_ids", "attention_mask"}  # no token_type_ids


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP_STRINGS)
def test_byte_ids_are_utf8_bytes(byte_tok, text):
    assert byte_tok(text, add_special_tokens=False)["input_ids"] == expected_byte_ids(text)


def test_round_trip_exact(any_tok):
    for text in ROUND_TRIP_STRINGS:
        plain_ids = any_tok(text, add_special_tokens=False)["input_ids"]
        assert any_tok.decode(plain_ids) == text
        with_specials = any_tok(text)["input_ids"]
        assert with_specials[0] == 1 and with_specials[1:] == plain_ids  # open: no </s>
        assert any_tok.decode(with_specials, skip_special_tokens=True) == text
        assert any_tok.decode(with_specials) == f"<s>{text}"


def test_batch_round_trip(any_tok):
    texts = ROUND_TRIP_STRINGS[:50]
    batch = any_tok(texts, padding=True)
    assert any_tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == texts


def test_lone_surrogate_is_rejected(byte_tok):
    # Not valid Unicode scalar values, so they cannot be UTF-8 encoded: fail loudly, not silently.
    with pytest.raises((TypeError, ValueError)):
        byte_tok("a\ud800b")


# --- special-token spellings inside text ------------------------------------------------------


def test_mask_spelling_in_text_becomes_mask_token_when_asked(any_tok):
    text = "Paris is the <mask> of France."
    encoding = any_tok(text, return_offsets_mapping=True, split_special_tokens=False)
    ids = encoding["input_ids"]
    assert ids.count(any_tok.mask_token_id) == 1
    mask_position = ids.index(any_tok.mask_token_id)
    assert encoding["offset_mapping"][mask_position] == (13, 19)  # its span in the text
    assert text[13:19] == "<mask>"
    assert any_tok.decode(ids) == f"<s>{text}"
    # Skipping specials drops the mask but keeps the surrounding spaces untouched.
    assert any_tok.decode(ids, skip_special_tokens=True) == "Paris is the  of France."


def test_special_token_spellings_in_text_stay_text_by_default(byte_tok):
    text = "x<mask>y</s><s><pad><unk>"
    ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == expected_byte_ids(text)
    assert byte_tok.decode(ids, skip_special_tokens=True) == text


def test_special_spellings_stay_text_and_the_template_still_adds_specials(any_tok, tmp_path):
    """Raw text stays text (issue 19): no pad id with attention 1 mid-review, nothing dropped by
    decode(skip_special_tokens=True); <s> and </s> still come from the template; the setting
    survives save_pretrained / AutoTokenizer.from_pretrained."""
    text, other = "a <pad> b </s>", "<s><mask>"
    any_tok.save_pretrained(tmp_path)
    for tok in (any_tok, AutoTokenizer.from_pretrained(tmp_path)):
        encoding = tok(text)
        assert encoding["input_ids"][0] == tok.bos_token_id
        assert set(SPECIAL_TOKENS.values()).isdisjoint(encoding["input_ids"][1:])
        assert all(encoding["attention_mask"])
        assert tok.decode(encoding["input_ids"], skip_special_tokens=True) == text
        assert tok.decode(encoding["input_ids"]) == "<s>" + text
        pair = tok(text, other)["input_ids"]
        assert [token for token in pair if token in SPECIAL_TOKENS.values()] == [1, 2, 2]
        assert tok.decode(pair, skip_special_tokens=True) == text + other
    byte_ids = byte_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert byte_ids == expected_byte_ids(text)


def test_split_special_tokens_false_restores_special_ids_from_text(corpus_file):
    for tok in (byte_tokenizer(split_special_tokens=False),
                train_bpe_tokenizer(corpus_file, vocab_size=300, split_special_tokens=False)):
        assert tok("a <pad> b </s>", add_special_tokens=False)["input_ids"][2] == 0
    with pytest.raises(ValueError, match="split_special_tokens"):
        byte_tokenizer(split_special_tokens="yes")


# --- offsets --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ROUND_TRIP_STRINGS)
def test_byte_offsets_point_to_characters(byte_tok, text):
    offsets = byte_tok(text, return_offsets_mapping=True)["offset_mapping"]
    expected = [(index, index + 1) for index in char_index_of_each_byte(text)]
    assert offsets == [(0, 0), *expected]  # <s> then one span per byte; a single text has no </s>


def test_byte_offsets_examples(byte_tok):
    offsets = byte_tok("aé😀", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert offsets == [(0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (2, 3)]


def test_bpe_offsets_match_token_byte_spans(bpe_tok):
    # Independent computation: every token string is one char per byte, so cumulative token
    # lengths give byte spans, which map to the characters owning the first and last byte.
    for text in [*TRAINING_LINES, *TRICKY_STRINGS, "Der Rhein 世界你好 😀 fließt"]:
        encoding = bpe_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = bpe_tok.convert_ids_to_tokens(encoding["input_ids"])
        owner = char_index_of_each_byte(text)
        expected, byte_position = [], 0
        for token in tokens:
            first_byte, last_byte = byte_position, byte_position + len(token) - 1
            expected.append((owner[first_byte], owner[last_byte] + 1))
            byte_position += len(token)
        assert byte_position == len(text.encode("utf-8"))
        assert encoding["offset_mapping"] == expected


# --- pairs, truncation, overflow, padding -----------------------------------------------------


def test_pair_template_and_sequence_ids(any_tok):
    question, context = "Wo fließt er?", "Der Rhein 😀 fließt."
    encoding = any_tok(question, context, return_offsets_mapping=True)
    question_ids = any_tok(question, add_special_tokens=False)["input_ids"]
    context_ids = any_tok(context, add_special_tokens=False)["input_ids"]
    assert encoding["input_ids"] == [1, *question_ids, 2, *context_ids, 2]
    assert encoding.sequence_ids() == [None, *[0] * len(question_ids), None, *[1] * len(context_ids), None]
    for sequence_id, (start, end) in zip(encoding.sequence_ids(), encoding["offset_mapping"]):
        if sequence_id is None:
            assert (start, end) == (0, 0)
        else:
            source = question if sequence_id == 0 else context
            assert 0 <= start < end <= len(source)
    assert any_tok.decode(encoding["input_ids"], skip_special_tokens=True) == question + context


def test_only_second_truncation_with_stride_and_overflow(any_tok):
    question = "Wo fließt der Rhein?"
    context = "Der Rhein fließt durch Köln 😀 und Düsseldorf. " * 6 + "Am Ende mündet er in die Nordsee."
    answer = "Nordsee"
    answer_start = context.index(answer)
    max_length, stride = 48, 8
    encoding = any_tok(
        question,
        context,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    question_ids = any_tok(question, add_special_tokens=False)["input_ids"]
    context_ids = any_tok(context, add_special_tokens=False)["input_ids"]
    windows = len(encoding["input_ids"])
    assert windows > 2
    assert encoding["overflow_to_sample_mapping"] == [0] * windows

    context_windows = []
    for window in range(windows):
        ids, sequence_ids = encoding["input_ids"][window], encoding.sequence_ids(window)
        assert len(ids) <= max_length
        assert ids[: len(question_ids) + 2] == [1, *question_ids, 2]  # question never truncated
        assert ids[-1] == 2
        context_windows.append([token for token, seq in zip(ids, sequence_ids) if seq == 1])
    for previous, following in zip(context_windows, context_windows[1:]):
        assert previous[-stride:] == following[:stride]  # consecutive windows overlap by `stride`
    stitched = context_windows[0] + [token for window in context_windows[1:] for token in window[stride:]]
    assert stitched == context_ids

    # What an extractive-QA feature builder does: map the answer's character span to the
    # tokens containing its first and last character, via sequence_ids + offsets.
    answer_end = answer_start + len(answer)
    found = []
    for window in range(windows):
        sequence_ids, offsets = encoding.sequence_ids(window), encoding["offset_mapping"][window]
        context_positions = [i for i, seq in enumerate(sequence_ids) if seq == 1]
        starts = [i for i in context_positions if offsets[i][0] <= answer_start < offsets[i][1]]
        ends = [i for i in context_positions if offsets[i][0] < answer_end <= offsets[i][1]]
        if starts and ends:
            found.append(context[offsets[starts[0]][0] : offsets[ends[-1]][1]])
    assert found
    # Byte tokens hit the answer exactly; a BPE word token ("ĠNordsee") also covers the
    # space before the word, because offsets are exact token spans (not trimmed).
    allowed = {answer} if len(any_tok) == BYTE_VOCAB_SIZE else {answer, " " + answer}
    assert set(found) <= allowed


def test_left_padding_of_overflowing_windows(byte_tok):
    encoding = byte_tok(
        "q?",
        "abcdefghijklmnopq",
        truncation="only_second",
        max_length=12,
        stride=3,
        return_overflowing_tokens=True,
        padding="max_length",
        padding_side="left",
    )
    last = len(encoding["input_ids"]) - 1
    ids, mask = encoding["input_ids"][last], encoding["attention_mask"][last]
    pad_count = mask.count(0)
    assert pad_count > 0 and len(ids) == 12
    assert ids[:pad_count] == [0] * pad_count and mask == [0] * pad_count + [1] * (12 - pad_count)
    assert ids[pad_count] == 1
    assert encoding.sequence_ids(last)[:pad_count] == [None] * pad_count


def test_batch_padding(any_tok):
    texts = ["a", "héllo wörld 😀", ""]
    batch = any_tok(texts, padding=True)
    lengths = [len(any_tok(text)["input_ids"]) for text in texts]
    width = max(lengths)
    for ids, mask, length in zip(batch["input_ids"], batch["attention_mask"], lengths):
        assert len(ids) == len(mask) == width
        assert mask == [1] * length + [0] * (width - length)  # right padding by default
        assert ids[length:] == [0] * (width - length)
    tensors = any_tok(texts, padding="max_length", max_length=32, return_tensors="pt")
    assert tuple(tensors["input_ids"].shape) == (3, 32)
    assert tensors["attention_mask"].sum(dim=1).tolist() == lengths


# --- save / load without longctx ---------------------------------------------------------------


def summarize_tokenizer(tokenizer, texts):
    """Everything that must survive save/load; JSON-friendly. Runs in a subprocess too."""
    single = tokenizer(texts, return_offsets_mapping=True)
    pair = tokenizer(["question?"] * len(texts), texts, return_offsets_mapping=True)
    return {
        "class_mro": [cls.__name__ for cls in type(tokenizer).__mro__],
        "special_ids": {
            token: tokenizer.convert_tokens_to_ids(token) for token in ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
        },
        "attributes": [
            getattr(tokenizer, f"{name}_token_id") for name in ["pad", "bos", "cls", "eos", "sep", "unk", "mask"]
        ],
        "model_max_length": tokenizer.model_max_length,
        "model_input_names": tokenizer.model_input_names,
        "padding_side": tokenizer.padding_side,
        "vocab_size": len(tokenizer),
        "single": dict(single),
        "pair": dict(pair),
        "pair_sequence_ids": [pair.sequence_ids(i) for i in range(len(texts))],
        "decoded": tokenizer.batch_decode(single["input_ids"], skip_special_tokens=True),
    }


SUBPROCESS_SCRIPT = """
import sys
sys.modules["longctx"] = None  # makes every `import longctx...` raise ImportError
try:
    import longctx  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("longctx is importable; the test would prove nothing")
import json
from transformers import AutoTokenizer

{summarize_source}

request = json.loads(sys.stdin.read())
results = {{
    name: summarize_tokenizer(AutoTokenizer.from_pretrained(path), request["texts"])
    for name, path in request["dirs"].items()
}}
print(json.dumps(results))
"""


def test_save_and_load_with_auto_tokenizer_without_longctx(byte_tok, bpe_tok, tmp_path):
    texts = TRICKY_STRINGS + random_unicode_strings(20, seed=7) + ["fill the <mask> here"]
    dirs = {"byte": str(tmp_path / "byte"), "bpe": str(tmp_path / "bpe")}
    byte_tok.save_pretrained(dirs["byte"])
    bpe_tok.save_pretrained(dirs["bpe"])
    for directory in dirs.values():
        assert "longctx" not in Path(directory, "tokenizer_config.json").read_text()

    script = SUBPROCESS_SCRIPT.format(summarize_source=textwrap.dedent(inspect.getsource(summarize_tokenizer)))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({"texts": texts, "dirs": dirs}),
        capture_output=True,
        text=True,
        cwd=tmp_path,  # keep the repository off sys.path
        env=env,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    reloaded = json.loads(completed.stdout.strip().splitlines()[-1])

    for name, original in [("byte", byte_tok), ("bpe", bpe_tok)]:
        expected = json.loads(json.dumps(summarize_tokenizer(original, texts)))
        assert reloaded[name] == expected
        assert reloaded[name]["decoded"][: len(TRICKY_STRINGS)] == TRICKY_STRINGS


# --- BPE training ------------------------------------------------------------------------------


def test_bpe_vocab_size_and_shared_ids(bpe_tok, byte_tok):
    assert BYTE_VOCAB_SIZE < len(bpe_tok) <= 1000
    for token, token_id in SPECIAL_TOKENS.items():
        assert bpe_tok.convert_tokens_to_ids(token) == token_id
    for byte in range(256):  # bytes at the same ids as in the byte tokenizer
        assert bpe_tok.convert_tokens_to_ids(byte_token(byte)) == byte_tok.convert_tokens_to_ids(byte_token(byte))
    assert sorted(bpe_tok.get_vocab().values()) == list(range(len(bpe_tok)))  # dense ids
    assert bpe_tok.model_input_names == ["input_ids", "attention_mask"]


def test_bpe_compresses_repeated_words(bpe_tok):
    text = "the quick brown fox jumps over the lazy dog " * 5
    ids = bpe_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode("utf-8")) / 2
    assert bpe_tok.decode(ids) == text


def test_bpe_vocab_has_requested_size_when_data_suffices(corpus_file):
    tokenizer = train_bpe_tokenizer(corpus_file, vocab_size=300)
    assert len(tokenizer) == tokenizer.vocab_size == 300
    assert max(tokenizer.get_vocab().values()) == 299


def test_bpe_vocab_is_smaller_when_data_runs_out(corpus_file):
    tokenizer = train_bpe_tokenizer(str(corpus_file), vocab_size=100_000)
    assert BYTE_VOCAB_SIZE < len(tokenizer) < 100_000


def test_bpe_without_merges_equals_byte_tokenizer(corpus_file, byte_tok):
    tokenizer = train_bpe_tokenizer([corpus_file], vocab_size=BYTE_VOCAB_SIZE)
    assert len(tokenizer) == BYTE_VOCAB_SIZE
    for text in TRICKY_STRINGS:
        assert tokenizer(text)["input_ids"] == byte_tok(text)["input_ids"]


def test_bpe_min_frequency_blocks_rare_merges(tmp_path):
    path = tmp_path / "rare.txt"
    path.write_text("zqx " + "ab " * 50, encoding="utf-8")
    tokenizer = train_bpe_tokenizer(path, vocab_size=400, min_frequency=2)
    vocab = tokenizer.get_vocab()
    assert "ab" in vocab and "zq" not in vocab and "qx" not in vocab


def test_bpe_trains_on_several_files(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("alpha alpha alpha\n" * 20, encoding="utf-8")
    second.write_text("omega omega omega\n" * 20, encoding="utf-8")
    tokenizer = train_bpe_tokenizer([first, str(second)], vocab_size=300)
    assert tokenizer.convert_ids_to_tokens(tokenizer("alpha omega", add_special_tokens=False)["input_ids"]) == [
        "alpha",
        "Ġomega",
    ]


# --- argument validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": ["does/not/exist.txt"]}, r"files .*does/not/exist\.txt"),
        ({"files": []}, "files is empty"),
        ({"vocab_size": 260}, r"vocab_size must be an int >= 261.*byte_tokenizer"),
        ({"vocab_size": 300.0}, "vocab_size"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"model_max_length": 1}, "model_max_length"),
    ],
)
def test_train_bpe_rejects_bad_arguments(corpus_file, kwargs, message):
    arguments = {"files": [corpus_file], "vocab_size": 300, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_bpe_tokenizer(**arguments)


def test_byte_tokenizer_rejects_bad_max_length():
    with pytest.raises(ValueError, match="model_max_length"):
        byte_tokenizer(model_max_length=0)
