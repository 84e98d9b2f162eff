"""Regenerate the small data samples shipped in `longctx/experiments/samples/` from the real
datasets.

    python scripts/make_samples.py          # data in ../shared/data (from the repo root)
    python scripts/make_samples.py --data-dir /path/to/data --seed 0

Inputs (the layout of `../shared/data`, see its README):
    imdb/train.parquet, imdb/test.parquet   Large Movie Review Dataset v1.0 (columns text,
                                            label, ...)
    books/<name>.txt                        Project Gutenberg plain-text books
    squad/dev-v1.1.json.gz                  official SQuAD v1.1 dev set

Outputs (deterministic for a given seed and input; rerunning rewrites identical files):
    imdb_train.jsonl, imdb_test.jsonl       {"text", "label"} rows, balanced, shuffled
    book_train.txt, book_valid.txt          excerpts of two different books, Gutenberg
                                            header/footer stripped
    squad_sample.json                       official-format SQuAD v1.1 JSON with a few dev articles
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT_DIR = REPO_ROOT / "longctx" / "experiments" / "samples"

# Gutenberg boilerplate markers, e.g. "*** START OF THE PROJECT GUTENBERG EBOOK EMMA ***",
# "***END OF THE PROJECT GUTENBERG EBOOK ...***" or the older "*END*THE SMALL PRINT!" block.
_START_MARKERS = [
    re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG[^\n]*$",
               re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\*END\*THE SMALL PRINT![^\n]*$", re.IGNORECASE | re.MULTILINE),
]
_END_MARKERS = [
    re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG[^\n]*$",
               re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*End of (the )?Project Gutenberg[^\n]*$", re.IGNORECASE | re.MULTILINE),
]


# ----------------------------------------------------------------------------- IMDb
def imdb_rows(parquet_path: Path, per_label: int, max_chars: int, seed: int) -> list[dict]:
    """`per_label` reviews of each label (0 neg, 1 pos) shorter than `max_chars` characters,
    picked with `random.Random(seed)` from the candidates sorted by their original file name
    (so the choice does not depend on the row order of the parquet file), then shuffled."""
    import pandas as pd

    frame = pd.read_parquet(parquet_path, columns=["text", "label", "file"])
    frame = frame[(frame["label"] >= 0) & (frame["text"].str.len() < max_chars)]
    frame = frame.sort_values("file", kind="stable")
    rng = random.Random(seed)
    rows = []
    for label in (0, 1):
        candidates = frame[frame["label"] == label]
        if len(candidates) < per_label:
            raise ValueError(f"{parquet_path}: only {len(candidates)} reviews with label {label} "
                             f"under {max_chars} characters; need {per_label}")
        chosen = sorted(rng.sample(range(len(candidates)), per_label))
        rows += [{"text": str(text), "label": int(label)}
                 for text in candidates["text"].iloc[chosen]]
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- books
def read_book(path: Path) -> str:
    """The book's text with '\\n' line ends (a few Gutenberg files are cp1252, not UTF-8)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header (up to the START marker) and footer (from the END
    marker); texts without markers (NLTK's copies are already stripped) stay as they are."""
    # The footer first (the earliest END marker): old files put legal small print after it
    # that would otherwise look like a header marker.
    ends = [match.start() for marker in _END_MARKERS if (match := marker.search(text))]
    if ends:
        text = text[:min(ends)]
    starts = [match.end() for marker in _START_MARKERS if (match := marker.search(text))]
    if starts:
        text = text[max(starts):]
    return text.strip() + "\n"


def excerpt(text: str, num_chars: int) -> str:
    """The opening of the text: whole paragraphs, at most `num_chars` characters."""
    if len(text) <= num_chars:
        return text
    cut = text.rfind("\n\n", 0, num_chars)
    if cut < num_chars // 2:  # no paragraph break: fall back to a line break
        cut = text.rfind("\n", 0, num_chars)
    return text[:cut].rstrip() + "\n"


def write_text(text: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


# ----------------------------------------------------------------------------- SQuAD
def squad_sample(dev_path: Path, num_articles: int, paragraphs_per_article: int) -> dict:
    """The first `num_articles` dev articles, each cut to its first `paragraphs_per_article`
    paragraphs; every kept paragraph keeps all its questions and answers unchanged."""
    opener = gzip.open if str(dev_path).endswith(".gz") else open
    with opener(dev_path, "rt", encoding="utf-8") as f:
        dev = json.load(f)
    data = [{"title": article["title"],
             "paragraphs": article["paragraphs"][:paragraphs_per_article]}
            for article in dev["data"][:num_articles]]
    for article in data:  # sanity: answers point into their own context
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert (paragraph["context"][start:start + len(answer["text"])]
                            == answer["text"]), qa["id"]
    return {"version": dev.get("version", "1.1"), "data": data}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder with imdb/, books/, squad/ (default: ../shared/data from the "
                             "repo root)")
    parser.add_argument("--imdb-train", type=Path, help="default: DATA_DIR/imdb/train.parquet")
    parser.add_argument("--imdb-test", type=Path, help="default: DATA_DIR/imdb/test.parquet")
    parser.add_argument("--book-train", type=Path, help="default: DATA_DIR/books/austen-emma.txt")
    parser.add_argument("--book-valid", type=Path, help="default: DATA_DIR/books/austen-sense.txt")
    parser.add_argument("--squad-dev", type=Path, help="default: DATA_DIR/squad/dev-v1.1.json.gz")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imdb-train-per-label", type=int, default=200)
    parser.add_argument("--imdb-test-per-label", type=int, default=100)
    parser.add_argument("--imdb-max-chars", type=int, default=1200)
    parser.add_argument("--book-train-chars", type=int, default=60_000)
    parser.add_argument("--book-valid-chars", type=int, default=15_000)
    parser.add_argument("--squad-articles", type=int, default=3)
    parser.add_argument("--squad-paragraphs", type=int, default=3)
    args = parser.parse_args(argv)

    data = args.data_dir
    imdb_train = args.imdb_train or data / "imdb" / "train.parquet"
    imdb_test = args.imdb_test or data / "imdb" / "test.parquet"
    book_train = args.book_train or data / "books" / "austen-emma.txt"
    book_valid = args.book_valid or data / "books" / "austen-sense.txt"
    squad_dev = args.squad_dev or data / "squad" / "dev-v1.1.json.gz"
    if book_train.resolve() == book_valid.resolve():
        raise ValueError("--book-train and --book-valid must be different books (held-out text is "
                         "split by book)")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    # Different seeds per split so the two selections are independent draws.
    write_jsonl(imdb_rows(imdb_train, args.imdb_train_per_label, args.imdb_max_chars, args.seed),
                out / "imdb_train.jsonl")
    write_jsonl(imdb_rows(imdb_test, args.imdb_test_per_label, args.imdb_max_chars, args.seed + 1),
                out / "imdb_test.jsonl")
    write_text(excerpt(strip_gutenberg(read_book(book_train)), args.book_train_chars),
               out / "book_train.txt")
    write_text(excerpt(strip_gutenberg(read_book(book_valid)), args.book_valid_chars),
               out / "book_valid.txt")
    with open(out / "squad_sample.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(squad_sample(squad_dev, args.squad_articles, args.squad_paragraphs), f,
                  ensure_ascii=False)
        f.write("\n")

    total = 0
    for path in sorted(out.iterdir()):
        if path.is_file():
            total += path.stat().st_size
            print(f"{path.stat().st_size:>9,d}  {path}")
    print(f"{total:>9,d}  total")


if __name__ == "__main__":
    main()
