"""REPORT.md from the results the scripts wrote: every run folder holding run_info.json (the
run_*.py scripts), every benchmark JSON (scripts/benchmark.py) and every study_results.json
(scripts/run_study.py), found under the given roots.

Each table row names what produced it: the model (type, parameters, size), the data, the
training steps, the device and the command. Rows are grouped by task; benchmark runs get their
table and, where the benchmark wrote them, its plots.

This module is a user of the models; modeling files never import it.
"""

import json
import os
import shlex
from pathlib import Path

from . import benchmark_generation
from . import benchmark as training_benchmark
from .measure import machine_summary
from .pretrained_study import entries_by_model
from .study_plots import write_study_plots
from .run_common import RUN_INFO
from .study import TABLE_COLUMNS, table_cells

# The metrics each task's table shows (keys of all_results.json), with their column titles.
TASK_COLUMNS = {
    "classification": [("eval_accuracy", "accuracy"), ("eval_precision", "precision"),
                       ("eval_recall", "recall"), ("eval_f1", "F1")],
    "question_answering": [("eval_exact_match", "EM"), ("eval_f1", "F1"),
                           ("eval_samples", "questions")],
    "language_modeling": [("eval_perplexity", "perplexity"),
                          ("eval_bits_per_character", "bits/char"),
                          ("eval_bits_per_byte", "bits/byte"), ("eval_block_size", "eval block")],
    "generation": [("eval_reference_perplexity", "ref. perplexity"), ("eval_bleu", "BLEU"),
                   ("eval_rouge1", "ROUGE-1"), ("eval_rougeL", "ROUGE-L"),
                   ("eval_passages", "passages")],
}
TASK_TITLES = {"classification": "Classification",
               "question_answering": "Question answering (SQuAD v1.1)",
               "language_modeling": "Language modelling", "generation": "Generation"}


def find_runs(roots) -> list[dict]:
    """{"info", "results", "folder", "uncredited"} of every folder under `roots` with
    run_info.json and all_results.json; "results" holds only the metrics `credited_metrics`
    gives the run, "uncredited" names the others."""
    runs = []
    for root in roots:
        for info_path in sorted(Path(root).rglob(RUN_INFO)):
            results_path = info_path.parent / "all_results.json"
            if not results_path.exists():
                continue
            info = json.loads(info_path.read_text(encoding="utf-8"))
            results = json.loads(results_path.read_text(encoding="utf-8"))
            credited = credited_metrics(info, results)
            runs.append({"info": info, "results": credited, "folder": info_path.parent,
                         "uncredited": sorted(set(results) - set(credited) - {"run_id"})})
    return runs


def credited_metrics(info: dict, results: dict) -> dict:
    """The metrics of all_results.json that the run of run_info.json produced. A run writes its
    `run_id` into both: they must match. Folders from before run ids carry none; there
    transformers' save_metrics had merged into an earlier all_results.json, so only the keys
    of the splits the command ran are the run's (eval_* with --do_eval, the others with
    --do_train; run_generation always evaluates)."""
    if "run_id" in info or "run_id" in results:
        return results if info.get("run_id") == results.get("run_id") else {}
    ran_eval = info.get("task") == "generation" or _flag_on(info.get("command", ""), "--do_eval")
    ran_train = _flag_on(info.get("command", ""), "--do_train")
    return {key: value for key, value in results.items()
            if (ran_eval if key.startswith("eval_") else ran_train)}


def _flag_on(command: str, flag: str) -> bool:
    """Whether a command line turns a boolean flag on: `--flag`, `--flag true`, `--flag=true`."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word == flag:
            value = words[index + 1] if index + 1 < len(words) else ""
            return value.startswith("--") or value.lower() not in ("false", "0", "no")
        if word.startswith(flag + "="):
            return word.partition("=")[2].lower() in ("true", "1", "yes")
    return False


def find_documents(roots, keys: set, pattern: str = "*.json") -> list[dict]:
    """{"path", **document} of every JSON object under `roots` that has all of `keys`."""
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob(pattern)):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(document, dict) and keys <= set(document):
                found.append({"path": path, **document})
    return found


GENERATION_KEYS = {"settings", "environment", "definitions", "results"}


def find_benchmarks(roots) -> list[dict]:
    """Training benchmarks (scripts/benchmark.py): their JSONs, not the generation benchmark's,
    which alone define their measures in the file ("definitions")."""
    return [document for document in find_documents(roots, {"settings", "environment", "results"})
            if "definitions" not in document]


def find_generation_benchmarks(roots) -> list[dict]:
    return find_documents(roots, GENERATION_KEYS)


COMPARISON_FILE = "comparison.md"  # a written reading of a results folder's numbers


def find_comparisons(roots) -> list[Path]:
    return [path for root in roots for path in sorted(Path(root).rglob(COMPARISON_FILE))]


def comparison_section(path: Path, relative_to: Path) -> list[str]:
    """A comparison written beside the results it reads, as it is, headed by its path."""
    return [f"### `{os.path.relpath(path, relative_to)}`", "",
            path.read_text(encoding="utf-8").strip(), ""]


def find_studies(roots) -> list[dict]:
    return find_documents(roots, {"preset", "seed", "results"}, pattern="study_results.json")


def find_pretrained_studies(roots) -> list[dict]:
    return find_documents(roots, {"preset", "source", "results"},
                          pattern="pretrained_results.json")


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _size(info: dict) -> str:
    size = info.get("size", {})
    layers, extras = size.get("num_hidden_layers", "?"), []
    if "num_decoder_layers" in size:  # an encoder-decoder (T5): both stacks count
        layers = f"{layers}+{size['num_decoder_layers']}"
        extras.append("encoder + decoder")
    text = f"{layers}×{size.get('hidden_size', '?')}"
    if "attention_window" in size:
        extras.append(f"window {size['attention_window']}")
    if "projection_dim" in size:
        extras.append(f"k {size['projection_dim']}")
    if "mem_len" in size:  # Transformer-XL
        extras.append(f"memory {size['mem_len']}")
    if size.get("attn_type") == 2:
        extras.append("absolute positions")
    return text + (f" ({', '.join(extras)})" if extras else "")


def _data(info: dict) -> str:
    data = info.get("data", {})
    names = [Path(str(data[key])).name
             for key in ("dataset_name", "squad_file", "train_file", "validation_file")
             if key in data]
    limits = [f"{key.replace('max_', '').replace('_samples', '')} ≤ {data[key]}"
              for key in ("max_train_samples", "max_eval_samples") if key in data]
    if "max_seq_length" in data:
        limits.insert(0, f"{data['max_seq_length']} tokens")
    return ", ".join(dict.fromkeys(names)) + (f" ({', '.join(limits)})" if limits else "")


def task_table(task: str, runs: list[dict], relative_to: Path) -> list[str]:
    columns = TASK_COLUMNS.get(task, [])
    header = ["model", "parameters", "size", *[title for _, title in columns], "data", "steps",
              "device", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        info, results = run["info"], run["results"]
        steps = info.get("steps", {}).get("global_step", "–")
        folder = os.path.relpath(run["folder"], relative_to)
        row = [info["model_type"], _number(info.get("parameters")), _size(info),
               *[_number(results.get(key)) for key, _ in columns], _data(info), _number(steps),
               info.get("device", "?"), f"[{Path(folder).name}]({folder})"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- `{Path(run['folder']).name}`: `{run['info'].get('command', '?')}`"
              for run in runs]
    lines += [f"- `{Path(run['folder']).name}`: not shown, as not written by the run in its "
              f"run_info.json (an earlier run's): {', '.join(run['uncredited'])}"
              for run in runs if run["uncredited"]]
    return lines


def benchmark_section(benchmark: dict, relative_to: Path) -> list[str]:
    title = training_benchmark.plot_title(benchmark["settings"], benchmark["environment"])
    lines = [f"### {title}, "
             f"`{os.path.relpath(benchmark['path'], relative_to)}`", "",
             "| model | length | batch | ms/step | tokens/s | peak MiB |",
             "|---|---|---|---|---|---|"]
    for cell in benchmark["results"]:
        if cell.get("error"):
            lines.append(f"| {cell['model']} | {cell['length']} | {cell['batch_size']} | failed: "
                         f"{cell['error_kind']} | | |")
            continue
        lines.append(f"| {cell['model']} | {cell['length']} | {cell['batch_size']} | "
                     f"{cell['seconds_per_step'] * 1000:,.1f} | {cell['tokens_per_s']:,.0f} | "
                     f"{cell['peak_memory_mib']:,.0f} |")
    lines += [""] + benchmark_notes(benchmark)
    return with_plots(lines, benchmark_plots(benchmark, training_benchmark), relative_to)


def benchmark_notes(benchmark: dict) -> list[str]:
    """The command that wrote a benchmark JSON, then its notes. Files from before the benchmarks
    recorded their command say so (the folder's README may hold it)."""
    command = (f"- command: `{benchmark['command']}`" if benchmark.get("command") else
               "- command: not recorded in the file (written before the benchmarks recorded it)")
    return [command] + [f"- {note}" for note in benchmark.get("notes", [])]


def benchmark_plots(benchmark: dict, module) -> list[Path] | str:
    """The plots beside a benchmark's JSON, drawn from its cells where they are missing (a run
    without matplotlib, or one whose plots stayed on the machine that ran it) by `module`, the
    benchmark that wrote it (its plot_paths, plot_title, write_plots); a reason when they
    cannot be drawn."""
    paths = module.plot_paths(Path(benchmark["path"]))
    if not all(path.exists() for path in paths):
        drawn = module.write_plots(
            [cell for cell in benchmark["results"] if not cell.get("error")],
            Path(benchmark["path"]), module.plot_title(benchmark["settings"],
                                                       benchmark["environment"]))
        if isinstance(drawn, str):
            return drawn
    return paths


def with_plots(lines: list[str], plots: list[Path] | str, relative_to: Path) -> list[str]:
    """A section's lines followed by links to its plots, or by the reason there are none."""
    if isinstance(plots, str):
        return lines + ["", f"({plots})", ""]
    return lines + [""] + [f"![{p.stem}]({os.path.relpath(p, relative_to)})" for p in plots] + [""]


def generation_section(benchmark: dict, relative_to: Path) -> list[str]:
    """One generation benchmark JSON (scripts/benchmark_generation.py): its cells, notes and
    plots (those missing drawn from the cells)."""
    settings = benchmark["settings"]
    baseline = settings.get("baseline") or "baseline"
    lines = [f"### {benchmark_generation.plot_title(settings, benchmark['environment'])}, fp32, "
             f"`{os.path.relpath(benchmark['path'], relative_to)}`", "",
             f"| model | prompt | tokens/s | decode tokens/s | ms/token | peak MiB | "
             f"decode / {baseline} | memory / {baseline} |", "|---|---|---|---|---|---|---|---|"]
    for cell in benchmark["results"]:
        if cell.get("error"):
            lines.append(f"| {cell['model']} | {cell['prompt_length']} | "
                         f"{cell['error_kind']}: {cell['error']} | | | | | |")
            continue
        values = [cell.get(key) for key in ("tokens_per_s", "decode_tokens_per_s",
                                            "decode_ms_per_token", "peak_memory_mib")]
        ratios = [cell.get(key) for key in ("decode_tokens_per_s_vs_baseline",
                                            "peak_memory_mib_vs_baseline")]
        lines.append(f"| {cell['model']} | {cell['prompt_length']} | "
                     + " | ".join(map(_number, values)) + " | "
                     + " | ".join("–" if r is None else f"{r:.2f}x" for r in ratios) + " |")
    if not benchmark.get("complete", True):
        lines += ["", "- incomplete: the run stopped before its last prompt length"]
    lines += [""] + benchmark_notes(benchmark)
    return with_plots(lines, benchmark_plots(benchmark, benchmark_generation), relative_to)


def study_section(study: dict, relative_to: Path) -> list[str]:
    """One study_results.json: its table (the columns run_study prints), the machine of each row,
    and the commands that made the rows (a resumed study has several)."""
    preset = study["preset"]
    model = preset.get("model", {})
    budgets = [f"{budget['steps']} {task} steps of {budget['batch_size']} × {budget['max_length']}"
               for task, budget in (("classification", preset.get("classification")),
                                    ("LM", preset.get("language_modeling"))) if budget]
    lines = [f"### Preset `{preset['name']}` — "
             f"{model.get('num_hidden_layers', '?')}×{model.get('hidden_size', '?')}, "
             f"{', '.join(budgets)}, {study.get('precision', '?')}, "
             f"`{os.path.relpath(study['path'], relative_to)}`", "",
             "| " + " | ".join([header for header, *_ in TABLE_COLUMNS] + ["machine"]) + " |",
             "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for row in study["results"]:
        machine = machine_summary(row.get("environment", study.get("environment", {})))
        lines.append("| " + " | ".join(table_cells(row) + [machine]) + " |")
    commands = dict.fromkeys(row.get("command", study.get("command", "?"))
                             for row in study["results"])
    lines += (["", f"- data: {json.dumps(study.get('data', {}))}"]
              + [f"- `{command}`" for command in commands])
    lines += [f"- {row['architecture']}: skipped {skip}" for row in study["results"]
              for skip in row.get("skipped", [])]
    if study.get("note"):
        lines.append(f"- {study['note']}")
    return with_plots(lines, study_plots(study), relative_to)


PRETRAINED_HEADER = ["model", "type", "parameters", "positions", "IMDb accuracy", "precision",
                     "recall", "F1", "long accuracy", "long F1", "long reviews (truncated)",
                     "SQuAD EM", "SQuAD F1", "train min (IMDb / SQuAD)",
                     "eval min (IMDb / SQuAD)", "peak train MiB", "runs"]


def pretrained_section(study: dict, relative_to: Path) -> list[str]:
    """One pretrained_results.json (the pretrained study): a row per model with IMDb on the
    sample and on the long reviews, SQuAD, times, peak memory and its run folders; the source
    checkpoint, budgets and command below."""
    preset, source = study["preset"], study["source"]
    lines = [f"### Preset `{preset['name']}`, source `{source.get('package') or source['path']}`, "
             f"`{os.path.relpath(study['path'], relative_to)}`", "",
             "| " + " | ".join(PRETRAINED_HEADER) + " |", "|" + "---|" * len(PRETRAINED_HEADER)]
    for name, tasks in entries_by_model(study["results"]).items():
        lines.append("| " + " | ".join(pretrained_row(name, tasks, Path(study["path"]).parent,
                                                        relative_to)) + " |")
    lines += ["", f"- {study.get('description', '')}"]
    lines += [f"- `{command}`" for command in pretrained_commands(study)]
    lines += [f"- {entry['model']} {entry['task']}: failed: {entry.get('error')}"
              for entry in study["results"] if entry.get("status") != "done"]
    return lines + [""]


def pretrained_commands(study: dict) -> list[str]:
    """The commands that made the rows (a study resumed model by model has several): each run's
    run_info.json names its own; the results file names the last."""
    folder, commands = Path(study["path"]).parent, []
    for entry in study["results"]:
        info = folder / entry["model"] / entry["task"] / RUN_INFO
        if info.exists():
            commands.append(json.loads(info.read_text(encoding="utf-8")).get("command"))
    return list(dict.fromkeys(c for c in commands + [study.get("command")] if c))


def pretrained_row(name: str, tasks: dict, folder: Path, relative_to: Path) -> list[str]:
    """Its cells; `folder` holds the results file, its runs in <model>/<task>/."""
    done = {task: e for task, e in tasks.items() if e.get("status") == "done"}
    imdb, squad = done.get("imdb"), done.get("squad")
    first = next(iter(tasks.values()))
    cells = [name, first.get("model_type", "?"), _number(first.get("parameters")),
             _number(imdb["max_length"] if imdb else first.get("max_length"))]
    if imdb:
        sample, long = imdb["metrics"]["sample"], imdb["metrics"]["long"]
        truncated = imdb["evaluation"].get("long_rows_truncated")
        cells += [f"{sample[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")]
        cells += [f"{long['accuracy']:.4f}", f"{long['f1']:.4f}",
                  f"{long['reviews']:,} ({_number(truncated)})"]
    else:
        cells += ["–"] * 7
    cells += ([f"{squad['metrics']['exact_match']:.2f}", f"{squad['metrics']['f1']:.2f}"]
              if squad else ["–"] * 2)
    def minutes(part: str) -> str:  # "IMDb / SQuAD"
        return " / ".join(f"{e[part]['seconds'] / 60:.1f}" if e else "–" for e in (imdb, squad))

    peaks = [e["training"]["peak_memory_mib"] for e in (imdb, squad) if e]
    links = [f"[{task}]({os.path.relpath(folder / name / task, relative_to)})"
             for task in tasks]
    return cells + [minutes("training"), minutes("evaluation"),
                    f"{max(peaks):,.0f}" if peaks else "–", ", ".join(links)]


def study_plots(study: dict) -> list[Path] | str:
    """The study's pictures beside its study_results.json (run_study draws them); those missing
    (a study from before them, or whose pictures stayed on the machine that ran it) drawn from
    the JSON, the others left as they are; a reason when matplotlib is missing."""
    return write_study_plots(study["results"], Path(study["path"]).parent, only_missing=True)


PRETRAINED_TITLE = ("Classification and QA from pretrained weights (scripts/run_study.py --preset "
                    "pretrained-cpu)")


def section_lines(title: str, found: list, section, output: Path) -> list[str]:
    """A section titled `title` with `section(item)` for each item found; none if none."""
    if not found:
        return []
    return [f"## {title}", ""] + [line for item in found for line in section(item, output.parent)]


def build_report(roots, output: Path) -> str:
    output = Path(output)
    runs, benchmarks, studies = find_runs(roots), find_benchmarks(roots), find_studies(roots)
    generations, comparisons = find_generation_benchmarks(roots), find_comparisons(roots)
    pretrained = find_pretrained_studies(roots)
    if not runs and not benchmarks and not studies and not generations and not pretrained:
        raise ValueError(f"no results under {', '.join(map(str, roots))}: run scripts/run_*.py, "
                         f"scripts/benchmark.py or scripts/run_study.py with --output_dir / "
                         "--output there first")
    lines = ["# longctx report", "", "Made by `scripts/report.py` from the results it found under "
             + ", ".join(f"`{r}`" for r in roots) + ". Every row names the run that produced it; "
             "its command is listed under the table.", ""]
    for task in dict.fromkeys([*TASK_COLUMNS, *(run["info"]["task"] for run in runs)]):
        chosen = [run for run in runs if run["info"]["task"] == task]
        if chosen:
            lines += ([f"## {TASK_TITLES.get(task, task)}", ""]
                      + task_table(task, chosen, output.parent) + [""])
        if task == "question_answering":  # beside the from-scratch rows
            lines += section_lines(PRETRAINED_TITLE, pretrained, pretrained_section, output)
    sections = [("Efficiency (scripts/benchmark.py)", benchmarks, benchmark_section),
                ("Comparisons in words (comparison.md beside the results they read)",
                 comparisons, comparison_section),
                ("Generation speed (scripts/benchmark_generation.py)", generations,
                 generation_section),
                ("The study (scripts/run_study.py)", studies, study_section)]
    for title, found, section in sections:
        lines += section_lines(title, found, section, output)
    text = "\n".join(lines).rstrip() + "\n"
    output.write_text(text, encoding="utf-8")
    return text
