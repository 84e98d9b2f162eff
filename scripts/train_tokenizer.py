"""Train longctx's byte-level BPE tokenizer (the byte tokenizer's special tokens and bytes, plus
learned merges) on local text, offline, and save it for --tokenizer_name.

    python scripts/train_tokenizer.py --train_file ../shared/data/imdb/unsup.parquet \
        --vocab_size 8192 --output_dir runs/tokenizers/imdb-bpe-8k
    python scripts/train_tokenizer.py --train_file book1.txt --train_file book2.txt --output_dir tok

Tabular files (parquet, csv, json/jsonl) give the rows of --text_column_name; .txt files are read
whole. The result is a plain tokenizer.json that AutoTokenizer loads without longctx.
"""

import argparse
import sys
import tempfile
from pathlib import Path

try:
    import longctx  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from longctx import train_bpe_tokenizer
from longctx.experiments.run_common import FILE_FORMATS


def text_files(paths, column: str, scratch: Path) -> list[Path]:
    """The .txt files as they are; each tabular file's column written to a scratch text file."""
    import datasets

    files = []
    for path in map(Path, paths):
        if path.suffix not in FILE_FORMATS:
            raise ValueError(f"--train_file {path}: use one of {', '.join(FILE_FORMATS)}")
        if path.suffix == ".txt":
            files.append(path)
            continue
        table = datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path),
                                      split="train")
        if column not in table.column_names:
            raise ValueError(f"{path} has no column {column!r} ({table.column_names}); use "
                             "--text_column_name")
        target = scratch / f"{len(files)}-{path.stem}.txt"
        target.write_text("\n".join(table[column]), encoding="utf-8")
        files.append(target)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", action="append", required=True,
                        help="repeat for several files")
    parser.add_argument("--text_column_name", default="text")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--model_max_length", type=int, default=4096)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            files = text_files(args.train_file, args.text_column_name, Path(scratch))
            tokenizer = train_bpe_tokenizer(files, vocab_size=args.vocab_size,
                                            min_frequency=args.min_frequency,
                                            model_max_length=args.model_max_length)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    tokenizer.save_pretrained(args.output_dir)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
