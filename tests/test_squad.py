"""Reading official SQuAD v1.1 files (the shipped 3-article sample, and malformed variants) and
splitting them by article."""

import gzip
import json
from pathlib import Path

import pytest

from longctx.experiments.squad import read_squad_file, split_by_article

SAMPLES = Path(__file__).resolve().parent.parent / "longctx" / "experiments" / "samples"
SAMPLE = SAMPLES / "squad_sample.json"


def test_sample_rows_follow_the_datasets_schema_and_point_at_their_answers():
    rows = read_squad_file(SAMPLE)
    document = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert len(rows) == sum(len(p["qas"]) for a in document["data"] for p in a["paragraphs"])
    for row in rows:
        assert set(row) == {"id", "title", "context", "question", "answers"}
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][start:start + len(text)] == text


def test_gzipped_file_reads_the_same(tmp_path):
    packed = tmp_path / "dev.json.gz"
    packed.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert read_squad_file(packed) == read_squad_file(SAMPLE)


def test_split_by_article_keeps_articles_whole():
    rows = read_squad_file(SAMPLE)
    train, held_out = split_by_article(rows, 1)
    assert len(train) + len(held_out) == len(rows)
    train_titles, eval_titles = {r["title"] for r in train}, {r["title"] for r in held_out}
    assert not train_titles & eval_titles
    assert eval_titles == {rows[-1]["title"]}  # the last article of the file
    for bad in (0, 3):  # the sample has 3 articles: both splits must keep one
        with pytest.raises(ValueError, match="eval_articles"):
            split_by_article(rows, bad)


def write(tmp_path, document, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def sample_document():
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("breakage,message", [
    (lambda d: d.pop("data"), "missing field 'data'"),
    (lambda d: d["data"][0].pop("title"), r"data\[0\]: missing field 'title'"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("question"), r"qas\[0\]: missing field 'question'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="7"), "answer_start is str"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=1), "does not point"),
])
def test_malformed_files_raise_value_error_naming_the_place(tmp_path, breakage, message):
    document = sample_document()
    breakage(document)
    with pytest.raises(ValueError, match=message):
        read_squad_file(write(tmp_path, document))


def test_files_that_are_not_json_or_not_gzip_raise_value_error(tmp_path):
    broken = tmp_path / "dev.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read"):
        read_squad_file(broken)
    fake_gzip = tmp_path / "dev.json.gz"
    fake_gzip.write_bytes(SAMPLE.read_bytes())  # plain JSON under a .gz name
    with pytest.raises(ValueError, match="gzip"):
        read_squad_file(fake_gzip)


def squad_layout_rows():
    """Sample rows as a local parquet/json file or the Hub would give them (no title needed)."""
    return {key: [row[key] for row in read_squad_file(SAMPLE)[:5]]
            for key in ("id", "context", "question", "answers")}


@pytest.mark.parametrize("offset,message", [
    (lambda start, context: start + 1, "first occurs at character"),
    (lambda start, context: len(context) + 50, "first occurs at character"),  # labels (0, 0)
    (lambda start, context: -1, "answer_start=-1"),
])
def test_answer_offsets_of_rows_from_any_source_are_checked(offset, message):
    from longctx.experiments.squad import check_answer_offsets

    rows = squad_layout_rows()
    check_answer_offsets(rows, range(5), "--train_file t.json")  # the sample's offsets are right
    start = rows["answers"][3]["answer_start"][0]
    rows["answers"][3]["answer_start"][0] = offset(start, rows["context"][3])
    with pytest.raises(ValueError, match=rf"--train_file t.json: row 13 \(id '{rows['id'][3]}'\), "
                                         rf"answers\[0\]: .*{message}.*set answer_start"):
        check_answer_offsets(rows, range(10, 15), "--train_file t.json")


def test_answers_not_in_the_squad_layout_are_named():
    from longctx.experiments.squad import check_answer_offsets

    rows = squad_layout_rows()
    rows["answers"][1] = {"text": ["a", "b"], "answer_start": [0]}
    with pytest.raises(ValueError, match=r"row 1 .*one start per text"):
        check_answer_offsets(rows, range(5), "--validation_file v.json")
