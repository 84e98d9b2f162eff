"""The pretrained study (issue 20) end to end on its tiny preset: a tiny random BERT and
WordPiece vocabulary, IMDb-like reviews and a SQuAD file written here, every model of the table
fine-tuned and scored; the long-review subset checked against hand-counted WordPieces; resume,
refusal to overwrite and equal budgets."""

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from longctx.experiments import pretrained_study as study
from longctx.experiments.report import build_report

PRESET = "pretrained-tiny"
LIMIT = study.PRETRAINED_PRESETS[PRESET].imdb.short_limit  # 32 WordPieces

POSITIVE = "the film was good and the actor was great".split()
NEGATIVE = "the movie was bad and the plot was awful".split()


def review(words: list, count: int) -> str:
    """`count` words cycling through `words`: every one is a single WordPiece of the tiny
    vocabulary, so the encoding is count + 2 tokens ([CLS], [SEP])."""
    return " ".join(words[i % len(words)] for i in range(count))


# Test reviews: (words, label). Longer than LIMIT once encoded: 31 + 2, 40 + 2, 100 + 2 -- and
# not 30 + 2 = 32, which fits exactly.
TEST_ROWS = [(30, 1), (31, 0), (12, 1), (40, 1), (8, 0), (100, 0), (20, 1), (16, 0), (5, 1),
             (25, 0)]
LONG_ROWS = [1, 3, 5]


def write_imdb(folder):
    train = [(review(POSITIVE if i % 2 else NEGATIVE, 6 + 3 * i), i % 2) for i in range(16)]
    test = [(review(POSITIVE if label else NEGATIVE, words), label)
            for words, label in TEST_ROWS]
    (folder / "imdb").mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        table = pa.table({"text": [t for t, _ in rows], "label": [label for _, label in rows]})
        pq.write_table(table, folder / "imdb" / f"{split}.parquet")


def squad_article(title: str, index: int) -> dict:
    context = f"the actor {'good' if index % 2 else 'bad'} play the story and the film was great ."
    qas = [{"id": f"{title}-{q}", "question": question,
            "answers": [{"text": answer, "answer_start": context.index(answer)}]}
           for q, (question, answer) in enumerate([("who did play ?", "the actor"),
                                                    ("what was great ?", "the film")])]
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def write_squad(folder):
    document = {"version": "1.1",
                "data": [squad_article(f"article-{i}", i) for i in range(4)]}
    (folder / "squad").mkdir(parents=True)
    with gzip.open(folder / "squad" / "dev-v1.1.json.gz", "wt", encoding="utf-8") as f:
        json.dump(document, f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_imdb(folder)
    write_squad(folder)
    return folder


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("study")
    results = study.run_pretrained_study(PRESET, data_dir, output)
    return output, results


def entries(results) -> dict:
    return {(e["model"], e["task"]): e for e in results["results"]}


def test_long_review_subset_is_the_reviews_longer_than_the_limit(tmp_path):
    folder = study.build_tiny_source(tmp_path / "source")
    tokenizer = AutoTokenizer.from_pretrained(folder["path"])
    texts = ["good " * 30,  # 30 WordPieces + [CLS] + [SEP] = 32: fits, nothing lost
             "good " * 31,  # 33: one WordPiece lost at 32
             "playing " * 16,  # 16 words but 32 WordPieces (play ##ing) + 2 = 34
             "playing " * 15,  # 30 + 2 = 32
             "good"]
    assert [len(ids) for ids in tokenizer(texts)["input_ids"]] == [32, 33, 34, 32, 3]
    assert study.long_review_indices(tokenizer, texts, 32) == [1, 2]
    assert study.long_review_indices(tokenizer, texts, 33) == [2]


def test_end_to_end_every_model_and_task(full_run):
    output, results = full_run
    found = entries(results)
    preset = study.PRETRAINED_PRESETS[PRESET]
    assert set(found) == {(m, t) for m in preset.models for t in study.TASKS}
    for (model, task), entry in found.items():
        assert entry["status"] == "done", entry.get("error")
        if task == "imdb":
            for subset in ("sample", "long"):
                assert set(entry["metrics"][subset]) == {"accuracy", "precision", "recall", "f1",
                                                         "reviews"}
                assert 0.0 <= entry["metrics"][subset]["accuracy"] <= 1.0
        else:
            assert 0.0 <= entry["metrics"]["f1"] <= 100.0
            assert entry["data"]["eval_articles"] == 1
            assert entry["data"]["train_articles"] == 3
    on_disk = json.loads((output / study.RESULTS_FILE).read_text())
    assert entries(on_disk).keys() == found.keys()
    assert "minilm-longformer" in study.results_table(results["results"])


def test_models_are_what_the_table_says(full_run):
    _, results = full_run
    found = entries(results)
    assert found[("minilm", "imdb")]["model_type"] == "bert"
    assert found[("minilm-longformer", "squad")]["model_type"] == "longctx-longformer"
    assert found[("minilm-linformer", "imdb")]["model_type"] == "longctx-linformer"
    conversion = found[("minilm-longformer", "imdb")]["conversion"]
    assert conversion["settings"]["max_position_embeddings"] == 128
    assert conversion["settings"]["sep_token_id"] == 3  # [SEP] of the tiny vocabulary


def test_long_subset_counts_and_truncation(full_run):
    _, results = full_run
    found = entries(results)
    summary = found[("minilm", "imdb")]["data"]
    assert summary["long_rows_total"] == len(LONG_ROWS)
    assert summary["long_rows"] == len(LONG_ROWS)
    assert found[("minilm", "imdb")]["metrics"]["long"]["reviews"] == len(LONG_ROWS)
    # The 32-position source loses text of all three; the 128-position Longformer of none (the
    # longest is 102 WordPieces); the 64-position Linformer of the 102-WordPiece one.
    truncated = {model: found[(model, "imdb")]["evaluation"]["long_rows_truncated"]
                 for model in ("minilm", "minilm-longformer", "minilm-linformer")}
    assert truncated == {"minilm": 3, "minilm-longformer": 0, "minilm-linformer": 1}


def test_run_info_names_source_and_conversion(full_run):
    output, results = full_run
    source = output / study.TINY_SOURCE
    for entry in results["results"]:
        info = json.loads((output / entry["model"] / entry["task"] / "run_info.json").read_text())
        assert info["source"]["path"] == str(source.resolve())
        assert info["model"] == entry["model"] and info["task"] == entry["task"]
        assert info["budget"] == entry["budget"]
        assert info["training"]["peak_memory_mib"] == entry["training"]["peak_memory_mib"]
        assert info["training"]["seconds"] > 0
    assert results["source"]["path"] == str(source.resolve())


def test_budgets_identical_across_models(full_run):
    _, results = full_run
    for task in study.TASKS:
        runs = [e for e in results["results"] if e["task"] == task]
        assert len(runs) == 3
        assert all(e["budget"] == runs[0]["budget"] for e in runs)
        assert len({e["training"]["steps"] for e in runs}) == 1
        assert len({e["training"]["examples"] for e in runs}) == 1
    imdb = study.PRETRAINED_PRESETS[PRESET].imdb
    assert runs[0]["training"]["steps"] >= 1
    assert entries(results)[("minilm", "imdb")]["training"]["steps"] == -(
        -imdb.train_rows // imdb.batch_size) * imdb.epochs


def test_the_report_shows_each_pretrained_model_as_one_row(full_run, tmp_path):
    output, results = full_run
    text = build_report([output], tmp_path / "REPORT.md")
    assert "## Classification and QA from pretrained weights" in text
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in text.splitlines() if line.startswith("| minilm")}
    assert set(rows) == set(study.PRETRAINED_PRESETS[PRESET].models)
    for (model, task), entry in entries(results).items():
        cells = rows[model]
        if task == "imdb":
            assert cells[4] == f"{entry['metrics']['sample']['accuracy']:.4f}"
            assert cells[8] == f"{entry['metrics']['long']['accuracy']:.4f}"
        else:
            assert cells[12] == f"{entry['metrics']['f1']:.2f}"
        link = f"[{task}]({os.path.relpath(output / model / task, tmp_path)})"
        assert link in cells[-1]
        info = json.loads((output / model / task / "run_info.json").read_text())
        assert f"- `{info['command']}`" in text
    assert study.PRETRAINED_PRESETS[PRESET].description in text


def test_existing_results_are_refused_unless_overwrite(full_run, data_dir):
    output, _ = full_run
    path = output / study.RESULTS_FILE
    before = path.read_bytes()
    with pytest.raises(ValueError, match="resume"):
        study.run_pretrained_study(PRESET, data_dir, output, models=["minilm"], tasks=["imdb"])
    assert path.read_bytes() == before


def test_resume_runs_only_missing_and_failed_entries(data_dir, tmp_path, monkeypatch):
    calls = []

    def counted(task, runner):
        def run(*args, **kwargs):
            calls.append(task)
            return runner(*args, **kwargs)
        return run

    def broken(*args, **kwargs):
        calls.append("squad")
        raise RuntimeError("broken on purpose")

    monkeypatch.setitem(study.RUNNERS, "imdb", counted("imdb", study.RUNNERS["imdb"]))
    real_squad = study.RUNNERS["squad"]
    monkeypatch.setitem(study.RUNNERS, "squad", broken)
    first = study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["minilm"])
    assert calls == ["imdb", "squad"]
    assert entries(first)[("minilm", "squad")]["status"] == "failed"
    kept = entries(first)[("minilm", "imdb")]

    monkeypatch.setitem(study.RUNNERS, "squad", counted("squad", real_squad))
    calls.clear()
    second = study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["minilm"],
                                        resume=True)
    assert calls == ["squad"]  # the failed entry again, the finished one kept
    assert entries(second)[("minilm", "imdb")] == kept
    assert entries(second)[("minilm", "squad")]["status"] == "done"

    calls.clear()
    overwritten = study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["minilm"],
                                             tasks=["imdb"], overwrite=True)
    assert calls == ["imdb"]
    assert list(entries(overwritten)) == [("minilm", "imdb")]


def test_resume_refuses_other_settings(data_dir, tmp_path, monkeypatch):
    def fails(*args):  # no need to train: the settings are checked before any run
        raise RuntimeError("not run")

    monkeypatch.setitem(study.RUNNERS, "imdb", fails)
    study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["minilm"], tasks=["imdb"])
    with pytest.raises(ValueError, match=r"different seed \(42 there, 7 now\)"):
        study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["minilm"],
                                   tasks=["imdb"], resume=True, seed=7)


def test_bad_names_and_overrides_raise(data_dir, tmp_path):
    with pytest.raises(ValueError, match="models"):
        study.run_pretrained_study(PRESET, data_dir, tmp_path, models=["gpt"])
    with pytest.raises(ValueError, match="imdb.train_row"):
        study.with_budget_overrides(study.PRETRAINED_PRESETS[PRESET], {"imdb.train_row": 3})
    with pytest.raises(ValueError, match="pretrained-cpu"):
        study.resolve_preset("cpu")


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        study.main(["--help"])
    assert exit_.value.code == 0
    assert "pretrained-cpu" in capsys.readouterr().out


def test_long_models_start_from_the_source_weights(tmp_path):
    preset = study.PRETRAINED_PRESETS[PRESET]
    source = study.build_tiny_source(tmp_path / "source")
    tokenizer = AutoTokenizer.from_pretrained(source["path"])
    plain = study.build_model(preset.models["minilm"], "squad", source, tokenizer, preset)
    words = plain.bert.embeddings.word_embeddings.weight
    positions = plain.bert.embeddings.position_embeddings.weight  # (32, hidden)
    for name in ("minilm-longformer", "minilm-linformer"):
        spec = preset.models[name]
        long = study.build_model(spec, "squad", source, tokenizer, preset)
        assert long.config.model_type == spec.convert_to
        assert long.config.max_position_embeddings == spec.max_length
        assert long.config.attention_probs_dropout_prob == 0.0
        embeddings = long.state_dict()
        word_key = next(k for k in embeddings if k.endswith("word_embeddings.weight"))
        position_key = next(k for k in embeddings if k.endswith("position_embeddings.weight"))
        assert embeddings[word_key].equal(words)
        # positions copied cyclically: position p is the source's p mod 32
        assert embeddings[position_key][35].equal(positions[3])


def test_length_batches_cover_every_row_once_within_the_cap():
    lengths = [5, 40, 3, 17, 17, 9, 1, 30, 8]
    batches = study.length_batches(lengths, max_tokens=36)
    assert sorted(row for batch in batches for row in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[row] for row in batch)
        assert len(batch) == 1 or len(batch) * longest <= 36
    firsts = [lengths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first
    assert batches[0] == [1]  # 40 tokens exceed the cap: alone


@pytest.mark.parametrize("name,task", [("minilm", "imdb"), ("minilm-longformer", "squad"),
                                       ("minilm-linformer", "imdb")])
def test_predict_by_length_equals_each_row_run_alone(tmp_path, name, task):
    import datasets
    import torch
    from transformers import DataCollatorWithPadding

    preset = study.PRETRAINED_PRESETS[PRESET]
    source = study.build_tiny_source(tmp_path / "source")
    tokenizer = AutoTokenizer.from_pretrained(source["path"])
    model = study.build_model(preset.models[name], task, source, tokenizer, preset).eval()
    generator = torch.Generator().manual_seed(0)
    words = " ".join(study.TINY_WORDS[:20]).split()
    texts = [" ".join(words[int(i)] for i in torch.randint(0, 20, (int(n),), generator=generator))
             for n in torch.randint(1, 40, (9,), generator=generator)]
    limit = preset.models[name].max_length
    if task == "squad":
        encoded = tokenizer(["who did play ?"] * len(texts), texts, truncation="only_second",
                            max_length=limit)
    else:
        encoded = tokenizer(texts, truncation=True, max_length=limit)
    rows = datasets.Dataset.from_dict({k: encoded[k] for k in study.model_inputs(model)})
    found = study.predict_by_length(model, tokenizer, rows, max_tokens=64)
    collate = DataCollatorWithPadding(tokenizer)
    for i in range(len(rows)):
        with torch.no_grad():
            alone = model(**collate([rows[i]]))
        for output in found:
            expected = alone[output][0].numpy()
            assert found[output][i][:expected.shape[0]] == pytest.approx(expected, abs=1e-5)
            assert (found[output][i][expected.shape[0]:] == -100.0).all()
