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
        check_answer_offset(context, text, start, f"{where}.answers[{a}]")
        texts.append(text)
        starts.append(start)
    return {"id": str(_field(qa, "id", (str, int), where)), "title": title, "context": context,
            "question": _field(qa, "question", str, where),
            "answers": {"text": texts, "answer_start": starts}}


def check_answer_offsets(rows, numbers, source: str):
    """Every answer of rows in the `datasets` "squad" schema (from any source: a SQuAD file, a
    local parquet/csv/json, the Hub) sits at its answer_start in the context. A wrong offset
    trains on another span; one past the context labels every window (0, 0). `numbers` are the
    rows' numbers in `source`, for the message."""
    for number, row_id, context, answers in zip(numbers, rows["id"], rows["context"],
                                                rows["answers"]):
        where = f"{source}: row {number} (id {row_id!r})"
        if not isinstance(context, str):
            raise ValueError(f"{where}: context is {type(context).__name__}, expected str")
        texts, starts = _answer_lists(answers, where)
        for a, (text, start) in enumerate(zip(texts, starts)):
            check_answer_offset(context, text, start, f"{where}, answers[{a}]")


def _answer_lists(answers, where: str) -> tuple[list, list]:
    if not (isinstance(answers, dict) and isinstance(answers.get("text"), list)
            and isinstance(answers.get("answer_start"), list)
            and len(answers["text"]) == len(answers["answer_start"])):
        raise ValueError(f"{where}: answers {answers!r} must be {{'text': [...], "
                         f"'answer_start': [...]}} with one start per text (the SQuAD layout)")
    return answers["text"], answers["answer_start"]


def check_answer_offset(context: str, text, start, where: str):
    """`start` is the character where `text` begins in `context`, else ValueError with the fix."""
    if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
        raise ValueError(f"{where}: answer text {text!r} and answer_start {start!r} must be a "
                         f"string and an integer")
    if start < 0 or context[start:start + len(text)] != text:
        found = context.find(text)
        fix = (f"the text first occurs at character {found}" if found >= 0
               else "the text does not occur in the context")
        raise ValueError(f"{where}: answer_start={start} does not point at the answer text "
                         f"{text!r} in the context ({len(context)} characters; {fix}); set "
                         f"answer_start to the character where the answer begins")


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
