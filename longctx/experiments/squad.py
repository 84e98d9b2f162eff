"""SQuAD v1.1 files: the official JSON (`.json` or `.json.gz`) read into rows in the schema of
the `datasets` "squad" dataset (id, title, context, question, answers {text, answer_start}),
and a split by article for offline runs (questions of one article share its context, so a
split by question would leak it into training).
"""

import gzip
import json
import zlib
from pathlib import Path


def read_squad_file(path) -> list[dict]:
    """Rows of an official SQuAD v1.1 file, in file order. A file that is not SQuAD JSON raises
    ValueError naming the path and the first field that is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as SQuAD JSON"
                         f"{' (gzip)' if path.suffix == '.gz' else ''}: "
                         f"{type(error).__name__}: {error}") from None
    articles = _field(document, "data", list, f"{path}")
    return [row for index, article in enumerate(articles)
            for row in _article_rows(article, f"{path}: data[{index}]")]


def _article_rows(article, where: str) -> list[dict]:
    title = _field(article, "title", str, where)
    rows = []
    for p, paragraph in enumerate(_field(article, "paragraphs", list, where)):
        context = _field(paragraph, "context", str, f"{where}.paragraphs[{p}]")
        for q, qa in enumerate(_field(paragraph, "qas", list, f"{where}.paragraphs[{p}]")):
            rows.append(_question_row(qa, title, context, f"{where}.paragraphs[{p}].qas[{q}]"))
    return rows


def _question_row(qa, title: str, context: str, where: str) -> dict:
    texts, starts = [], []
    for a, answer in enumerate(_field(qa, "answers", list, where)):
        text = _field(answer, "text", str, f"{where}.answers[{a}]")
        start = _field(answer, "answer_start", int, f"{where}.answers[{a}]")
        if context[start:start + len(text)] != text:
            raise ValueError(f"{where}.answers[{a}]: answer_start={start} does not point at the "
                             f"answer text {text!r} in the context")
        texts.append(text)
        starts.append(start)
    return {"id": str(_field(qa, "id", (str, int), where)), "title": title, "context": context,
            "question": _field(qa, "question", str, where),
            "answers": {"text": texts, "answer_start": starts}}


def _field(container, name: str, kind, where: str):
    if not isinstance(container, dict) or name not in container:
        raise ValueError(f"{where}: missing field {name!r} (the official SQuAD v1.1 layout is "
                         f"data -> [title, paragraphs -> [context, qas -> [id, question, "
                         f"answers -> [text, answer_start]]]])")
    value = container[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{where}.{name} is {type(value).__name__}, expected "
                         f"{getattr(kind, '__name__', kind)}")
    return value


def split_by_article(rows: list[dict], eval_articles: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): the last `eval_articles` articles (by title, in file order) for evaluation,
    the others for training -- e.g. the dev set's first 38 and last 10."""
    titles = list(dict.fromkeys(row["title"] for row in rows))
    if not 0 < eval_articles < len(titles):
        raise ValueError(f"eval_articles={eval_articles}: the file has {len(titles)} articles; "
                         f"choose 1 to {len(titles) - 1} so both splits keep at least one")
    held_out = set(titles[-eval_articles:])
    return ([row for row in rows if row["title"] not in held_out],
            [row for row in rows if row["title"] in held_out])
