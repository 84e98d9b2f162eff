"""A run never clobbers a finished one, its results files hold only its own metrics, and the
report credits a metric only to the run that produced it (issue 19)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from longctx.experiments.report import build_report

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "longctx" / "experiments" / "samples"
TINY = ("hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,"
        "max_position_embeddings=256")
MODEL = ["--model_type", "longctx-transformer", "--config_overrides", TINY]
CLASSIFICATION = [*MODEL, "--train_file", str(SAMPLES / "imdb_train.jsonl"),
                  "--validation_file", str(SAMPLES / "imdb_test.jsonl"), "--max_seq_length", "64",
                  "--max_train_samples", "8", "--max_eval_samples", "8", "--max_steps", "1",
                  "--report_to", "none", "--disable_tqdm", "true"]
SCRIPT_DATA = {  # the least each script parses, with data that exists
    "run_classification.py": ["--train_file", str(SAMPLES / "imdb_train.jsonl"), "--do_train"],
    "run_qa.py": ["--squad_file", str(SAMPLES / "squad_sample.json"), "--do_train"],
    "run_lm.py": ["--train_file", str(SAMPLES / "book_train.txt"), "--do_train"],
    "run_generation.py": ["--validation_file", str(SAMPLES / "book_valid.txt")],
}


def run_script(name: str, argv: list[str], monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(REPO_ROOT / "scripts" / name), run_name="__main__")


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("script", sorted(SCRIPT_DATA))
@pytest.mark.parametrize("left_behind", ["run_info.json", "all_results.json", "config.json"])
def test_every_script_refuses_a_folder_holding_a_finished_run(tmp_path, monkeypatch, script,
                                                              left_behind):
    (tmp_path / left_behind).write_text('{"kept": true}')
    with pytest.raises(ValueError, match=f"{left_behind}.*--overwrite_output_dir"):
        run_script(script, [*MODEL, *SCRIPT_DATA[script], "--output_dir", str(tmp_path)],
                   monkeypatch)
    assert read(tmp_path / left_behind) == {"kept": True}


def test_a_rerun_without_eval_keeps_no_eval_metric_of_the_earlier_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_script("run_classification.py", [*CLASSIFICATION, "--output_dir", str(out), "--do_train",
                                         "--do_eval"], monkeypatch)
    first = read(out / "all_results.json")
    assert "eval_accuracy" in first
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        run_script("run_classification.py", [*CLASSIFICATION, "--output_dir", str(out),
                                             "--do_train"], monkeypatch)
    assert read(out / "all_results.json") == first
    run_script("run_classification.py", [*CLASSIFICATION, "--output_dir", str(out), "--do_train",
                                         "--overwrite_output_dir"], monkeypatch)
    second = read(out / "all_results.json")
    assert not [key for key in second if key.startswith("eval_")]
    assert not (out / "eval_results.json").exists()
    assert second["run_id"] == read(out / "run_info.json")["run_id"] != first["run_id"]
    assert read(out / "train_results.json")["run_id"] == second["run_id"]


def write_run(folder: Path, run_id, results_run_id, accuracy: float, command="python x"):
    folder.mkdir(parents=True)
    info = {"task": "classification", "model_type": "longctx-transformer", "command": command,
            "parameters": 1}
    results = {"eval_accuracy": accuracy, "train_loss": 0.5}
    if run_id is not None:
        info["run_id"], results["run_id"] = run_id, results_run_id
    (folder / "run_info.json").write_text(json.dumps(info))
    (folder / "all_results.json").write_text(json.dumps(results))


def test_the_report_credits_a_metric_only_to_the_run_that_produced_it(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "same", "a", "a", 0.625)
    write_run(runs / "stale", "b", "c", 0.875)  # an earlier run's numbers
    # from before run ids: the metrics of the splits its command ran
    write_run(runs / "old-eval", None, None, 0.8125, "python run.py --do_train --do_eval true")
    write_run(runs / "old-train", None, None, 0.9375, "python run.py --do_train")
    report = build_report([runs], tmp_path / "REPORT.md")
    assert "0.625" in report and "0.8125" in report
    assert "0.875" not in report and "0.9375" not in report
    assert "`stale`: not shown, as not written by the run in its run_info.json (an earlier " \
           "run's): eval_accuracy, train_loss" in report
    assert "`old-train`: not shown" in report and report.count("not shown") == 2
