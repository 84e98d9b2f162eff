"""Tests for the generation benchmark: its pure pieces, the models it builds, and
scripts/benchmark_generation.py end to end on tiny sizes. No timing assertions: only that every
number is consistent with its definition, or the cell says why there is none."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longctx.experiments import benchmark_generation as bench
from longctx.experiments.benchmark_generation import GenerationSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, window=16,
            xl_memory=16, repeats=1, warmup=0)


def tiny_settings(**changes) -> GenerationSettings:
    fields = dict(models=list(bench.MODELS), prompt_lengths=[40], new_tokens=5, **TINY)
    return GenerationSettings(**{**fields, **changes})


# --------------------------------------------------------------------------- pure pieces


def test_summarize_derives_rates_from_the_medians():
    cell = {"new_tokens": 11, "generate_seconds_runs": [4.0, 2.0, 3.0],
            "prefill_seconds_runs": [1.0, 2.0, 1.0]}
    bench.summarize(cell)
    assert cell["generate_seconds"] == 3.0 and cell["prefill_seconds"] == 1.0
    assert cell["decode_seconds"] == 2.0
    assert cell["tokens_per_s"] == pytest.approx(11 / 3)
    assert cell["decode_tokens_per_s"] == pytest.approx(10 / 2)  # the 10 steps after the prefill
    assert cell["decode_ms_per_token"] == pytest.approx(200.0)


def test_summarize_gives_no_decode_rate_when_noise_beats_the_decode_steps():
    cell = {"new_tokens": 3, "generate_seconds_runs": [1.0], "prefill_seconds_runs": [1.5]}
    bench.summarize(cell)
    assert cell["tokens_per_s"] == pytest.approx(3.0)
    assert cell["decode_tokens_per_s"] is None and cell["decode_seconds"] is None
    assert "prefill" in cell["decode_note"]


def test_ratios_divide_by_the_baseline_at_the_same_prompt_length():
    def cell(model, length, rate, memory):
        return {"model": model, "prompt_length": length, "tokens_per_s": rate,
                "decode_tokens_per_s": rate, "peak_memory_mib": memory}

    cells = [cell("base", 8, 10.0, 4.0), cell("fast", 8, 25.0, 2.0), cell("base", 16, None, 0.0),
             cell("fast", 16, 5.0, 1.0), cell("alone", 32, 1.0, 1.0)]
    bench.add_ratios(cells, "base")
    assert cells[0]["decode_tokens_per_s_vs_baseline"] == 1.0
    assert cells[1]["decode_tokens_per_s_vs_baseline"] == 2.5
    assert cells[1]["peak_memory_mib_vs_baseline"] == 0.5
    # the baseline failed (no rate) and has no memory growth: no ratio, not a division by zero
    assert cells[3]["tokens_per_s_vs_baseline"] is None
    assert cells[3]["peak_memory_mib_vs_baseline"] is None
    assert cells[4]["tokens_per_s_vs_baseline"] is None  # no baseline at that length


def test_a_model_over_the_time_limit_is_skipped_with_the_reason():
    cell = {"prompt_length": 1024, "generate_seconds": 12.5}
    assert bench.too_slow(cell, None) is None
    assert bench.too_slow(cell, 20.0) is None
    reason = bench.too_slow(cell, 10.0)
    assert "12.5 s" in reason and "1024" in reason and "--max_seconds_per_generate" in reason


@pytest.mark.parametrize("changes, field", [
    (dict(new_tokens=1), "new_tokens"), (dict(window=15), "window"),
    (dict(prompt_lengths=[0]), "prompt_lengths"), (dict(models=["hf-gpt2"], baseline="x"), "x"),
    (dict(threads=0), "threads"), (dict(gpt2_positions=0), "gpt2_positions")])
def test_settings_check_names_the_problem(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny_settings(**{"baseline": None, **changes}).check()


def test_unknown_models_are_refused_listing_the_known_ones():
    with pytest.raises(ValueError, match="hf-gpt2"):
        bench.select_models("hf-gpt2,gpt5")
    assert bench.select_models(" hf-gpt2, longctx-reformer,hf-gpt2") == ["hf-gpt2",
                                                                          "longctx-reformer"]


def test_existing_results_are_refused_unless_overwrite(tmp_path):
    output = tmp_path / "gen.json"
    bench.refuse_overwrite(output, overwrite=False)  # nothing there: fine
    plot = bench.plot_paths(output)[0]
    plot.write_text("an earlier plot")
    with pytest.raises(ValueError, match="--overwrite"):  # a plot alone is an earlier result too
        bench.refuse_overwrite(output, overwrite=False)
    assert plot.read_text() == "an earlier plot"
    bench.refuse_overwrite(output, overwrite=True)
    assert not plot.exists()


# --------------------------------------------------------------------------- the models


def test_models_are_built_for_the_length():
    settings = tiny_settings(prompt_lengths=[100], new_tokens=7)
    cells, models = bench.build_all(settings, 100, skipped={})
    assert set(models) == set(bench.MODELS), {k: c["error"] for k, c in cells.items()}
    assert models["hf-gpt2"].config.n_positions == 107
    for name in ("hf-reformer", "longctx-reformer"):
        rows, columns = cells[name]["built_for"]["axial_pos_shape"]
        assert rows * columns >= 128  # 107 rounded up to the chunk length (64), as hf pads
    assert models["longctx-transformer"].config.max_position_embeddings == 107
    assert models["longctx-longformer"].config.attention_window == 16
    assert models["longctx-transfo-xl"].config.mem_len == 16
    assert models["longctx-transfo-xl-mem1024"].config.mem_len == 1024
    for name, model in models.items():
        dropout = {k: v for k, v in model.config.to_dict().items()
                   if ("dropout" in k or k.endswith("pdrop")) and isinstance(v, float) and v}
        assert not dropout, (name, dropout)


def test_unbuildable_lengths_are_reported_with_the_reason():
    settings = tiny_settings(models=["hf-gpt2", "hf-reformer"], gpt2_positions=44,
                             hidden_size=33, num_heads=3)
    cells, models = bench.build_all(settings, 40, skipped={"hf-reformer": "skipped: a reason"})
    assert cells["hf-gpt2"]["error_kind"] == "unsupported"
    assert "n_positions=44" in cells["hf-gpt2"]["error"] and "45" in cells["hf-gpt2"]["error"]
    assert cells["hf-reformer"]["error"] == "skipped: a reason" and not models
    cells, _ = bench.build_all(settings, 30, skipped={})  # 35 positions fit; hidden 33 does not
    assert cells["hf-gpt2"]["error"] is None
    assert cells["hf-reformer"]["error_kind"] == "unsupported"
    assert "hidden_size=33" in cells["hf-reformer"]["error"]


@pytest.mark.parametrize("name", ["hf-gpt2", "longctx-transformer", "longctx-longformer"])
def test_exactly_n_tokens_even_when_the_model_wants_to_stop(name):
    """The eos embedding is made to win every greedy choice (tied LM heads): without
    min_new_tokens generation would stop after one token."""
    settings = tiny_settings(models=[name])
    model = bench.MODELS[name].build(settings, 40).model.eval()
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[eos] *= 1000
    prompt = bench.make_prompt(settings, 40)
    with torch.inference_mode():
        stopping = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                  max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert stopping.shape[1] < 40 + 5 and int(stopping[0, -1]) == eos  # the test's premise
    new = bench.generate(model, prompt, 5)
    assert new.shape == (1, 5)


def test_t5_new_tokens_are_its_greedy_decoder_output_without_the_start_token():
    """The reference: the encoder reads the prompt once, then the decoder is rerun on its whole
    prefix (no cache) and the arg max appended, from the decoder start token."""
    settings = tiny_settings(models=["hf-t5"])
    model = bench.MODELS["hf-t5"].build(settings, 40).model.eval()
    prompt = bench.make_prompt(settings, 40)
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=prompt).last_hidden_state
        written = torch.tensor([[model.config.decoder_start_token_id]])
        for _ in range(6):
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=written,
                           use_cache=False).logits
            written = torch.cat([written, logits[:, -1:].argmax(-1)], dim=1)
    new = bench.generate(model, prompt, 6)
    assert new.shape == (1, 6)
    assert torch.equal(new, written[:, 1:])


def test_a_short_generation_is_an_error_not_a_rate():
    cell = {}
    with pytest.raises(RuntimeError, match="3 new tokens, not 5"):
        bench.check_new_tokens(cell, torch.zeros(1, 3, dtype=torch.long), 5)
    assert cell["generated_new_tokens"] == 3


def test_too_slow_models_are_skipped_at_longer_prompts(tmp_path):
    settings = tiny_settings(models=["hf-gpt2", "longctx-transformer"], prompt_lengths=[24, 16],
                             new_tokens=3, max_seconds_per_generate=0.0)
    results = bench.run_generation_benchmark(settings, tmp_path / "gen.json")
    cells = {(c["model"], c["prompt_length"]): c for c in results["results"]}
    assert all(cells[(m, 16)]["error"] is None for m in settings.models)
    for model in settings.models:
        assert cells[(model, 24)]["error_kind"] == "skipped"
        assert "at prompt 16" in cells[(model, 24)]["error"]
    assert bench.exit_code(results) == 0


# --------------------------------------------------------------------------- end to end


def run_script(tmp_path, *arguments):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark_generation.py"),
                           *arguments], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def check_cell_numbers(cell: dict, new_tokens: int, repeats: int):
    assert cell["generated_new_tokens"] == new_tokens
    assert len(cell["generate_seconds_runs"]) == len(cell["prefill_seconds_runs"]) == repeats
    assert cell["generate_seconds"] == pytest.approx(sorted(cell["generate_seconds_runs"])[1])
    assert cell["prefill_seconds"] == pytest.approx(sorted(cell["prefill_seconds_runs"])[1])
    assert cell["tokens_per_s"] == pytest.approx(new_tokens / cell["generate_seconds"])
    if cell["decode_tokens_per_s"] is not None:
        decode = cell["generate_seconds"] - cell["prefill_seconds"]
        assert cell["decode_seconds"] == pytest.approx(decode)
        assert cell["decode_tokens_per_s"] == pytest.approx((new_tokens - 1) / decode)
        assert cell["decode_ms_per_token"] == pytest.approx(1000 * decode / (new_tokens - 1))
    else:
        assert cell["generate_seconds"] <= cell["prefill_seconds"]
    assert math.isfinite(cell["peak_memory_mib"]) and cell["weights_mib"] > 0


def test_script_end_to_end_and_refusing_to_overwrite(tmp_path):
    output = tmp_path / "out" / "gen.json"
    arguments = ["--device", "cpu", "--models", ",".join(bench.MODELS), "--prompt_lengths",
                 "70,40", "--new_tokens", "5", "--repeats", "3", "--warmup", "1",
                 "--hidden_size", "32", "--num_layers", "2", "--num_heads", "2",
                 "--intermediate_size", "64", "--window", "16", "--xl_memory", "16",
                 "--gpt2_positions", "64", "--output", str(output)]
    completed = run_script(tmp_path, *arguments)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(output.read_text(encoding="utf-8"))
    assert results["settings"]["prompt_lengths"] == [40, 70]
    assert results["command"].startswith("python ") and "--prompt_lengths 70,40" in results["command"]
    assert set(bench.DEFINITIONS) <= set(results["definitions"])
    cells = {(c["model"], c["prompt_length"]): c for c in results["results"]}
    assert set(cells) == {(m, n) for m in bench.MODELS for n in (40, 70)}
    unsupported = cells[("hf-gpt2", 70)]
    assert unsupported["error_kind"] == "unsupported" and "n_positions=64" in unsupported["error"]
    assert "UNSUPPORTED" in completed.stdout and "n_positions=64" in completed.stdout
    for key, cell in cells.items():
        if key == ("hf-gpt2", 70):
            continue
        assert cell["error"] is None, (key, cell["error"], cell.get("traceback"))
        check_cell_numbers(cell, 5, 3)
    for (model, length), cell in cells.items():
        base = cells[("hf-gpt2", length)]
        expected = (None if base["tokens_per_s"] is None or cell["tokens_per_s"] is None
                    else cell["tokens_per_s"] / base["tokens_per_s"])
        assert cell["tokens_per_s_vs_baseline"] == pytest.approx(expected)
    if results["plots"] != bench.MATPLOTLIB_MISSING:
        assert [Path(p).name for p in results["plots"]] == ["gen_decode.png", "gen_memory.png"]
        assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in results["plots"])

    before = output.read_bytes()
    refused = run_script(tmp_path, *arguments)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert output.read_bytes() == before
    quick = run_script(tmp_path, "--device", "cpu", "--quick", "--models", "hf-gpt2",
                       "--prompt_lengths", "16", "--output", str(output), "--overwrite")
    assert quick.returncode == 0, quick.stdout + quick.stderr
    replaced = json.loads(output.read_text(encoding="utf-8"))
    assert [c["model"] for c in replaced["results"]] == ["hf-gpt2"]
    assert replaced["settings"]["hidden_size"] == bench.QUICK["hidden_size"]


def test_a_run_stopped_midway_keeps_the_lengths_it_measured(tmp_path, monkeypatch):
    measure_length = bench.measure_length

    def stopped_at_the_second_length(settings, prompt_length, skipped):
        if prompt_length == 24:
            raise KeyboardInterrupt  # as a timeout's signal would stop it
        return measure_length(settings, prompt_length, skipped)

    monkeypatch.setattr(bench, "measure_length", stopped_at_the_second_length)
    settings = tiny_settings(models=["hf-gpt2"], prompt_lengths=[16, 24], new_tokens=3)
    with pytest.raises(KeyboardInterrupt):
        bench.run_generation_benchmark(settings, tmp_path / "gen.json")
    partial = json.loads((tmp_path / "gen.json").read_text(encoding="utf-8"))
    assert partial["complete"] is False
    assert [(c["model"], c["prompt_length"]) for c in partial["results"]] == [("hf-gpt2", 16)]
    assert partial["results"][0]["generated_new_tokens"] == 3


def test_the_report_shows_a_generation_benchmark_and_written_comparisons(tmp_path):
    from longctx.experiments import report

    cell = {"model": "hf-gpt2", "prompt_length": 1024, "new_tokens": 8, "error": None,
            "error_kind": None, "tokens_per_s": 400.0, "decode_tokens_per_s": 500.0,
            "decode_ms_per_token": 2.0, "peak_memory_mib": 30.0,
            "decode_tokens_per_s_vs_baseline": 1.0, "peak_memory_mib_vs_baseline": 1.0}
    failed = {"model": "longctx-reformer", "prompt_length": 1024, "new_tokens": 8,
              "error": "too slow", "error_kind": "skipped"}
    document = {"settings": {"num_layers": 2, "hidden_size": 32, "new_tokens": 8,
                             "baseline": "hf-gpt2"},
                "environment": {"device_name": "a CPU"}, "definitions": {}, "complete": True,
                "notes": ["a note"], "results": [cell, failed]}
    folder = tmp_path / "results" / "gen"
    folder.mkdir(parents=True)
    (folder / "gen.json").write_text(json.dumps(document), encoding="utf-8")
    (folder / "comparison.md").write_text("Decoder A is **2x** decoder B.\n", encoding="utf-8")
    text = report.build_report([tmp_path / "results"], tmp_path / "REPORT.md")
    assert "### `results/gen/comparison.md`\n\nDecoder A is **2x** decoder B.\n" in text
    assert "## Generation speed (scripts/benchmark_generation.py)" in text
    assert "## Efficiency" not in text  # not taken for a training benchmark
    assert "| hf-gpt2 | 1024 | 400 | 500 | 2 | 30 | 1.00x | 1.00x |" in text
    assert "| longctx-reformer | 1024 | skipped: too slow |" in text
    assert "- a note" in text
    assert "- command: not recorded in the file" in text  # this document has none
    for path in bench.plot_paths(folder / "gen.json"):  # drawn from the JSON and linked
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert f"](results/gen/{path.name})" in text
