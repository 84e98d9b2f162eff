"""Byte-level tokenizers for longctx models.

Two tokenizers share one `tokenizers` pipeline:

* `byte_tokenizer()` -- a fixed 261-token vocabulary (5 special tokens + 256 bytes),
  needing no training data. Byte ``b`` always has id ``5 + b``.
* `train_bpe_tokenizer(files)` -- a byte-level BPE trained offline on local text files,
  whose special tokens and bytes sit at the same ids 0..260, merged tokens after them.

Both are returned as `transformers.PreTrainedTokenizerFast` objects whose
`save_pretrained` output is a plain ``tokenizer.json`` + config, so
`AutoTokenizer.from_pretrained` reloads them without importing longctx.

Every token maps to a byte sequence through the GPT-2 byte<->printable-character table
(`pre_tokenizers.ByteLevel`), so any Unicode string round-trips exactly through
encode/decode, and the Rust offset tracking reports character offsets into the original
Python string (a multi-byte character's byte tokens all share that character's span).

Text stays text: a spelling such as ``<pad>`` or ``</s>`` inside the input encodes as its bytes
(`split_special_tokens=True`, saved in the tokenizer's config), so a review that quotes ``<s>``
gets no special ids mid-text and `decode(skip_special_tokens=True)` drops none of it; the special
tokens come only from the template (``<s>``, ``</s>``), padding and code that uses their ids.
Pass ``split_special_tokens=False`` (to the constructor, or per call, e.g. the fill-mask
pipeline's ``tokenizer_kwargs``) to have ``<mask>`` in text become the mask token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"  # also the CLS token
EOS_TOKEN = "</s>"  # also the SEP token
UNK_TOKEN = "<unk>"
MASK_TOKEN = "<mask>"

# Order defines the ids: models rely on pad == 0 and on these ids being identical
# across the byte tokenizer and every trained BPE tokenizer.
SPECIAL_TOKENS: dict[str, int] = {
    PAD_TOKEN: 0, BOS_TOKEN: 1, EOS_TOKEN: 2, UNK_TOKEN: 3, MASK_TOKEN: 4,
}
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
NUM_BYTES = 256
BYTE_VOCAB_SIZE = NUM_SPECIAL_TOKENS + NUM_BYTES  # 261; also the minimum BPE vocab size

MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def _gpt2_byte_to_char() -> dict[int, str]:
    """Return GPT-2's byte -> printable character table (the ByteLevel alphabet).

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes (controls, space,
    a few Latin-1 gaps) map to U+0100 onwards in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(NUM_BYTES) if byte not in table)
    for offset, byte in enumerate(shifted):
        table[byte] = chr(NUM_BYTES + offset)
    return table


# The ByteLevel pre-tokenizer emits exactly these characters, so they are the byte "tokens".
_BYTE_TO_CHAR = _gpt2_byte_to_char()


def byte_token(byte: int) -> str:
    """Vocabulary string of the token for one byte value (e.g. ``byte_token(32) == "Ġ"``)."""
    return _BYTE_TO_CHAR[byte]


def _special_added_tokens() -> list[AddedToken]:
    # normalized=False and no strip flags: a special token in text matches only its exact
    # spelling and never swallows neighbouring whitespace, so the surrounding text round-trips.
    return [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]


def _post_processor() -> processors.TemplateProcessing:
    # "<s> A" and "<s> A </s> B </s>" (one separator between the pair, saving a token per
    # window). A single text stays open: a causal LM's prompt must not end in </s>, or
    # generate() (and the text-generation pipeline) continues after an end-of-text; encoders
    # pool <s> or real tokens and need no closing token. The $A/$B slots make
    # `Encoding.sequence_ids()` tell question tokens from context tokens, which extractive-QA
    # feature building relies on.
    return processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[
            (BOS_TOKEN, SPECIAL_TOKENS[BOS_TOKEN]),
            (EOS_TOKEN, SPECIAL_TOKENS[EOS_TOKEN]),
        ],
    )


def _bpe_model(learned_tokens: list[str], merges: list[tuple[str, str]]) -> models.BPE:
    """BPE model with the fixed id layout: specials 0..4, byte ``b`` at ``5 + b``, then merges.

    Every tokenizer shares the first 261 ids, so a byte-level model's embeddings stay
    meaningful for any trained BPE vocabulary.
    """
    vocab = dict(SPECIAL_TOKENS)
    vocab.update({byte_token(byte): NUM_SPECIAL_TOKENS + byte for byte in range(NUM_BYTES)})
    vocab.update({token: BYTE_VOCAB_SIZE + index for index, token in enumerate(learned_tokens)})
    return models.BPE(vocab=vocab, merges=merges, unk_token=UNK_TOKEN)


def _byte_level_pipeline(model: models.BPE, split_words: bool) -> Tokenizer:
    """Wrap a BPE model in the pipeline shared by all longctx tokenizers.

    `split_words=False` keeps the whole text as one pre-token (bytes need no word
    boundaries, and it is faster); `True` uses GPT-2's regex so BPE merges never cross
    word boundaries. No normalizer and no prefix space: either would break the round trip.
    """
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=split_words
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor()
    tokenizer.add_special_tokens(_special_added_tokens())
    return tokenizer


def _check_model_max_length(model_max_length: int) -> None:
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(
            f"model_max_length must be an int >= 2 (room for <s> and at least one token), "
            f"got {model_max_length!r}"
        )


def _check_split_special_tokens(split_special_tokens: bool) -> None:
    if not isinstance(split_special_tokens, bool):
        raise ValueError(f"split_special_tokens must be True (special-token spellings in text stay "
                         f"text) or False (they become special ids), got {split_special_tokens!r}")


def _build_tokenizer(
    learned_tokens: list[str],
    merges: list[tuple[str, str]],
    split_words: bool,
    model_max_length: int,
    split_special_tokens: bool,
) -> PreTrainedTokenizerFast:
    """The single construction path used by both `byte_tokenizer` and `train_bpe_tokenizer`."""
    _check_model_max_length(model_max_length)
    _check_split_special_tokens(split_special_tokens)
    tokenizer = _byte_level_pipeline(_bpe_model(learned_tokens, merges), split_words)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        cls_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        sep_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK_TOKEN,
        padding_side="right",
        # Cleanup would delete spaces before punctuation and break the round trip.
        clean_up_tokenization_spaces=False,
        model_input_names=MODEL_INPUT_NAMES,
        # Raw text: special-token spellings in it are bytes, never special ids (module docstring)
        split_special_tokens=split_special_tokens,
    )


def model_max_length_for(config) -> int | None:
    """The `model_max_length` of a tokenizer that goes with a model of `config`: the most tokens
    the model takes in one input (a longctx config's `input_length_limit`, else the config's
    `max_position_embeddings`); transformers' VERY_LARGE_INTEGER ("no limit": it then neither
    warns nor truncates) for a model without a limit (Transformer-XL); None when the config states
    nothing. E.g. ``byte_tokenizer(model_max_length=model_max_length_for(config))``."""
    if hasattr(config, "input_length_limit"):
        limit = config.input_length_limit
        return VERY_LARGE_INTEGER if limit is None else limit
    return getattr(config, "max_position_embeddings", None)


def byte_tokenizer(model_max_length: int = 4096,
                   split_special_tokens: bool = True) -> PreTrainedTokenizerFast:
    """Fast tokenizer over UTF-8 bytes: specials at ids 0..4, byte ``b`` at id ``5 + b``.

    `model_max_length` should be the model's limit, `model_max_length_for(config)`: the tokenizer
    saved beside a model tells transformers how long its inputs may be. `split_special_tokens`:
    see the module docstring."""
    # No merges: BPE then emits one token per byte-character, i.e. one token per byte.
    return _build_tokenizer([], [], split_words=False, model_max_length=model_max_length,
                            split_special_tokens=split_special_tokens)


def _check_training_files(files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not paths:
        raise ValueError("files is empty: pass at least one path to a UTF-8 text file to train on")
    missing = [str(path) for path in paths if not os.path.isfile(path)]
    if missing:
        raise ValueError(
            f"files contains paths that are not existing files: {missing}; pass paths to text files"
        )
    return [os.fspath(path) for path in paths]


def _check_training_numbers(vocab_size: int, min_frequency: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < BYTE_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an int >= {BYTE_VOCAB_SIZE} (5 special tokens + 256 bytes), "
            f"got {vocab_size!r}; raise it, or use byte_tokenizer() for a pure byte vocabulary"
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")


def _learn_merges(
    paths: list[str], vocab_size: int, min_frequency: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """Train BPE and return (merged tokens in creation order, merge rules)."""
    # Train inside the real pipeline so training sees exactly the pre-tokens used at encode time.
    scratch = _byte_level_pipeline(models.BPE(unk_token=UNK_TOKEN), split_words=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # counted in vocab_size, never merged
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, even unseen ones
        show_progress=False,
    )
    scratch.train(paths, trainer)
    # The trainer numbers the alphabet in its own order; only merged tokens and merge
    # rules are kept, and `_bpe_model` re-imposes the fixed byte ids.
    base_tokens = set(SPECIAL_TOKENS) | set(_BYTE_TO_CHAR.values())
    trained_vocab = sorted(
        scratch.get_vocab(with_added_tokens=False).items(), key=lambda item: item[1]
    )
    learned_tokens = [token for token, _ in trained_vocab if token not in base_tokens]
    merges = [tuple(pair) for pair in json.loads(scratch.to_str())["model"]["merges"]]
    return learned_tokens, merges


def train_bpe_tokenizer(
    files: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 4096,
    split_special_tokens: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on local text files (offline).

    The vocabulary holds the 5 special tokens and 256 bytes at the same ids as
    `byte_tokenizer`, followed by at most ``vocab_size - 261`` merged tokens; it is smaller
    when the data offers fewer pairs occurring at least `min_frequency` times.
    `split_special_tokens`: see the module docstring.
    """
    paths = _check_training_files(files)
    _check_training_numbers(vocab_size, min_frequency)
    _check_model_max_length(model_max_length)  # fail before spending time on training
    _check_split_special_tokens(split_special_tokens)
    learned_tokens, merges = _learn_merges(paths, vocab_size, min_frequency)
    return _build_tokenizer(
        learned_tokens, merges, split_words=True, model_max_length=model_max_length,
        split_special_tokens=split_special_tokens,
    )
