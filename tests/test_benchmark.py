"""Tests for the efficiency benchmark: its pure pieces, and scripts/benchmark.py end to end on tiny sizes.
No timing assertions: only that every cell has positive finite numbers or a recorded error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import longctx
from longctx.experiments import benchmark
from longctx.experiments.benchmark import (
    BenchmarkSettings,
    batch_size_for,
    benchmark_table,
    median,
    parse_int_list,
    ratio_table,
    reformer_axial_shape,
    resolve_spec,
    select_models,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- pure pieces


def test_batch_size_from_tokens_per_step():
    assert batch_size_for(1024, tokens_per_step=4096) == 4
    assert batch_size_for(1000, tokens_per_step=4096) == 4  # floor
    assert batch_size_for(4096, tokens_per_step=4096) == 1
    assert batch_size_for(8192, tokens_per_step=4096) == 1  # at least one row
    assert batch_size_for(8192, tokens_per_step=4096, batch_size=3) == 3  # a fixed batch wins
    with pytest.raises(ValueError):
        batch_size_for(1024)
    with pytest.raises(ValueError):
        batch_size_for(1024, batch_size=0)


def test_median():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4, 1, 3, 2]) == 2.5
    assert median([7]) == 7.0
    with pytest.raises(ValueError):
        median([])


def test_parse_int_list():
    assert parse_int_list("1024, 2048,4096") == [1024, 2048, 4096]
    with pytest.raises(ValueError):
        parse_int_list("1024,two")


def cell(model, length, seconds=None, memory=None, error=None):
    return {"model": model, "length": length, "batch_size": 1, "seconds_per_step": seconds,
            "tokens_per_s": None if seconds is None else length / seconds, "peak_memory_mib": memory,
            "error": error, "error_kind": None if error is None else "out_of_memory"}


def test_ratio_table_divides_by_the_baseline_at_the_same_length():
    cells = [cell("base", 1024, 2.0, 100.0), cell("base", 2048, 4.0, 400.0),
             cell("fast", 1024, 1.0, 50.0), cell("fast", 2048, 1.0, 800.0),
             cell("broken", 1024, error="OutOfMemoryError: ..."), cell("lonely", 4096, 1.0, 1.0)]
    table = ratio_table(cells, "base")
    assert table[("base", 1024)] == {"time": 1.0, "memory": 1.0}
    assert table[("fast", 1024)] == {"time": 0.5, "memory": 0.5}
    assert table[("fast", 2048)] == {"time": 0.25, "memory": 2.0}
    assert table[("broken", 1024)] == {"time": None, "memory": None}
    assert table[("lonely", 4096)] == {"time": None, "memory": None}  # no baseline cell at that length
    assert all(value == {"time": None, "memory": None} for value in ratio_table(cells, None).values())
    # time per token: half the new tokens in the same step time (a model with memory) costs twice as much
    half = dict(cell("memory", 1024, 2.0, 100.0), tokens_per_s=256.0)
    assert ratio_table(cells + [half], "base")[("memory", 1024)] == {"time": 2.0, "memory": 1.0}
    # a failed baseline gives no ratios at its length
    assert ratio_table([cell("base", 1024, error="x"), cell("fast", 1024, 1.0, 1.0)], "base")[("fast", 1024)] == \
        {"time": None, "memory": None}


def test_benchmark_table_shows_numbers_ratios_and_failures():
    cells = [cell("base", 1024, 2.0, 100.0), cell("fast", 1024, 0.5, 25.0),
             cell("broken", 1024, error="OutOfMemoryError: CUDA out of memory")]
    text = benchmark_table(cells, "base")
    lines = text.splitlines()
    assert "time/base" in lines[0] and "mem/base" in lines[0]
    assert "0.25x" in lines[3] and "500.0" in lines[3]  # time and memory ratios, ms/step
    assert "FAILED (out_of_memory)" in lines[4] and "CUDA out of memory" in lines[4]


def test_registry_rejects_unknown_names_listing_known_ones():
    with pytest.raises(ValueError) as error:
        select_models("dense,not-a-model")
    message = str(error.value)
    assert "not-a-model" in message
    for known in ("dense", "hf-longformer", "longctx-longformer", "hf-reformer", *longctx.ARCHITECTURES):
        assert known in message
    with pytest.raises(ValueError, match="known: dense"):
        resolve_spec("nope")
    assert select_models("dense, hf-longformer,dense") == ["dense", "hf-longformer"]


def test_every_registered_longctx_type_can_be_named():
    for model_type in longctx.ARCHITECTURES:
        assert select_models(model_type) == [model_type]
        assert callable(resolve_spec(model_type).build)


def test_settings_check_names_the_problem():
    good = dict(models=["dense"], lengths=[64], baseline="dense", hidden_size=32, num_heads=2)
    BenchmarkSettings(**good).check()
    for bad, match in ((dict(dtype="bf16"), "bf16"), (dict(lengths=[10**6]), "limit"),
                       (dict(window=33), "even"), (dict(baseline="hf-longformer"), "baseline"),
                       (dict(hidden_size=30, num_heads=4), "divisible"),
                       (dict(compile="fast"), "compile='fast'"), (dict(compile="default", warmup_steps=1), "warm-up")):
        with pytest.raises(ValueError, match=match):
            BenchmarkSettings(**{**good, **bad}).check()


def test_reformer_axial_shape_multiplies_to_the_length():
    assert reformer_axial_shape(4096) == (64, 64)
    assert reformer_axial_shape(2048) == (32, 64)
    assert reformer_axial_shape(192) == (12, 16)


TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, window=32)


def test_reformer_rejects_lengths_off_its_chunks():
    settings = BenchmarkSettings(models=["hf-reformer"], lengths=[100], baseline=None, **TINY)
    result = benchmark.measure("hf-reformer", settings, 100)
    assert result["error_kind"] == "unsupported" and "64" in result["error"]


def test_longctx_longformer_has_hf_longformers_weights():
    """The two Longformers are timed on the same weights: same outputs for the same input."""
    settings = BenchmarkSettings(models=["hf-longformer", "longctx-longformer"], lengths=[64], baseline=None, **TINY)
    torch.manual_seed(0)
    theirs = benchmark.build_hf_longformer(settings, 64).model.eval()
    torch.manual_seed(0)
    built = benchmark.build_longctx_longformer(settings, 64)
    assert built.weights.startswith("converted from hf-longformer")
    ids = torch.randint(5, settings.vocab_size, (2, 64))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = theirs(ids, attention_mask=mask).last_hidden_state
        got = built.model.eval()(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reference,ours", [("hf-reformer", "longctx-reformer")])
def test_converted_longctx_models_have_the_references_weights(reference, ours):
    settings = BenchmarkSettings(models=[reference, ours], lengths=[128], baseline=None,
                                 **{**TINY, "num_layers": 2})  # local and LSH layers
    torch.manual_seed(0)
    theirs = resolve_spec(reference).build(settings, 128).model.eval()
    torch.manual_seed(0)
    built = resolve_spec(ours).build(settings, 128)
    assert built.weights == f"converted from {reference} (same weights)"
    torch.manual_seed(1)  # the LSH rotations are drawn per forward: the same draws for both
    ids = torch.randint(5, settings.vocab_size, (2, 128))
    with torch.no_grad():
        want = theirs(ids).last_hidden_state
        torch.manual_seed(1)
        got = built.model.eval()(ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_inference_mode_times_a_forward_and_model_config_reaches_only_models_that_have_the_field():
    settings = BenchmarkSettings(models=["longctx-linformer", "dense"], lengths=[64], baseline=None, inference=True,
                                 model_config={"projection_dim": 16}, **TINY)
    linformer = resolve_spec("longctx-linformer").build(settings, 64).model
    assert linformer.config.projection_dim == 16
    assert resolve_spec("dense").build(settings, 64).model.config.to_dict().get("projection_dim") is None
    cell = benchmark.measure("longctx-linformer", settings, 64)
    assert cell["error"] is None and cell["seconds_per_step"] > 0
    assert any("inference" in line for line in benchmark.notes(settings, [cell]))
    assert any("projection_dim" in line for line in benchmark.notes(settings, [cell]))


def test_transformer_xl_with_memory_times_half_new_tokens_after_a_full_memory(monkeypatch):
    """Span L = L/2 memory states + L/2 new tokens; tokens/s counts the new tokens only."""
    settings = BenchmarkSettings(models=["longctx-transfo-xl-memory"], lengths=[64], baseline=None,
                                 tokens_per_step=256, steps=1, **TINY)
    seen = []
    model_class = type(resolve_spec("longctx-transfo-xl-memory").build(settings, 64).model)
    original = model_class.forward
    monkeypatch.setattr(model_class, "forward", lambda self, *a, **kw: seen.append(
        (kw["input_ids"].shape, [tuple(m.shape) for m in kw["mems"]], self.config.mem_len)) or original(self, *a, **kw))
    cell = benchmark.measure("longctx-transfo-xl-memory", settings, 64)
    assert cell["error"] is None, cell.get("traceback")
    assert cell["batch_size"] == 4 and cell["tokens_per_step"] == 4 * 32
    assert cell["tokens_per_s"] == pytest.approx(cell["tokens_per_step"] / cell["seconds_per_step"])
    assert seen and all(ids == (4, 32) and mems == [(4, 32, 32)] and mem_len == 32 for ids, mems, mem_len in seen)
    assert benchmark.measure("longctx-transfo-xl-memory", settings, 63)["error_kind"] == "unsupported"


# --------------------------------------------------------------------------- end to end


def test_benchmark_script_end_to_end(tmp_path):
    output = tmp_path / "out" / "benchmark.json"
    models = ["dense", "hf-longformer", "longctx-longformer", "hf-reformer", "hf-t5"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--device", "cpu",
         "--models", ",".join(models), "--lengths", "64,128,96", "--hidden_size", "32", "--num_layers", "1",
         "--num_heads", "2", "--intermediate_size", "64", "--window", "32", "--tokens_per_step", "1024",
         "--warmup_steps", "1", "--steps", "1", "--output", str(output), "--no_progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(output.read_text(encoding="utf-8"))
    assert results["settings"]["lengths"] == [64, 96, 128]
    # the command that wrote the file, for the report to list under its table
    assert results["command"].startswith("python ") and "--lengths 64,128,96" in results["command"]
    from longctx.experiments.report import build_report

    report = build_report([output.parent], tmp_path / "REPORT.md")
    assert f"- command: `{results['command']}`" in report
    assert {"device_name", "torch", "transformers", "torch_threads"} <= set(results["environment"])
    cells = {(c["model"], c["length"]): c for c in results["results"]}
    assert set(cells) == {(model, length) for model in models for length in (64, 96, 128)}
    for key, result in cells.items():
        if result["error"] is not None:
            assert result["error_kind"] in ("unsupported", "out_of_memory"), (key, result["error"])
            continue
        for name in ("seconds_per_step", "tokens_per_s", "peak_memory_mib"):
            assert math.isfinite(result[name]) and result[name] > 0, (key, name, result[name])
        assert result["batch_size"] == max(1, 1024 // key[1])
    assert cells[("hf-reformer", 96)]["error_kind"] == "unsupported"  # not a multiple of its chunk length
    assert cells[("hf-longformer", 64)]["time_vs_baseline"] == 1.0
    assert "dropout 0" in completed.stdout and "plots" in completed.stdout
    assert "time/hf-longformer" in completed.stdout
    assert (output.parent / "benchmark_vs_length.png").read_bytes()[:4] == b"\x89PNG"


def test_compile_setting_compiles_the_model_and_says_so():
    torch._dynamo.reset()
    settings = BenchmarkSettings(models=["dense"], lengths=[32], baseline=None, compile="default", warmup_steps=2,
                                 steps=1, **TINY)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    cell = benchmark.measure("dense", settings, 32)
    assert cell["error"] is None and cell["seconds_per_step"] > 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before
    assert any("torch.compile(mode='default')" in line for line in benchmark.notes(settings, [cell]))


def test_cpu_notes_say_which_allocator_regime_was_measured():
    """glibc's defaults page-fault large buffers in again every step; tuned settings or a
    preloaded allocator keep them: the note tells the two apart."""
    from longctx.experiments.benchmark import allocator_note
    assert "glibc malloc defaults" in allocator_note({})
    tuned = allocator_note({"MALLOC_MMAP_THRESHOLD_": "4294967296"})
    assert "MALLOC_MMAP_THRESHOLD_=4294967296" in tuned and "defaults" not in tuned
    assert "jemalloc" in allocator_note({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})


# --------------------------------------------------------------------------- T5 (issue 23)


def test_t5_rows_are_transformers_t5_at_the_shared_size():
    settings = BenchmarkSettings(models=["hf-t5"], lengths=[64], baseline=None, **TINY)
    encoder = resolve_spec("hf-t5").build(settings, 64).model
    whole = resolve_spec("hf-t5-encoder-decoder").build(settings, 64).model
    assert type(encoder) is transformers.T5EncoderModel and type(whole) is transformers.T5Model
    config = whole.config
    assert (config.d_model, config.num_layers, config.num_decoder_layers, config.num_heads,
            config.d_ff, config.d_kv) == (32, 1, 1, 2, 64, 16)
    assert (config.dropout_rate, config.use_cache) == (0.0, False)
    # the encoder-decoder is the encoder plus a decoder stack (self + cross attention, FFN)
    assert (sum(p.numel() for p in whole.decoder.parameters())
            > sum(p.numel() for p in whole.encoder.parameters()))


def test_t5_encoder_decoder_row_feeds_the_decoder_the_inputs_shifted_right(monkeypatch):
    settings = BenchmarkSettings(models=["hf-t5-encoder-decoder"], lengths=[32], baseline=None,
                                 tokens_per_step=64, steps=1, **TINY)
    seen = []
    original = transformers.T5Model.forward

    def spy(self, input_ids=None, decoder_input_ids=None, **kwargs):
        seen.append((input_ids.clone(), decoder_input_ids.clone()))
        return original(self, input_ids=input_ids, decoder_input_ids=decoder_input_ids, **kwargs)

    monkeypatch.setattr(transformers.T5Model, "forward", spy)
    cell = benchmark.measure("hf-t5-encoder-decoder", settings, 32)
    assert cell["error"] is None and cell["tokens_per_step"] == 64  # input tokens: 2 x 32
    ids, decoder_ids = seen[0]
    assert ids.shape == decoder_ids.shape == (2, 32)
    assert (decoder_ids[:, 0] == 0).all() and torch.equal(decoder_ids[:, 1:], ids[:, :-1])
    assert math.isfinite(cell["loss"]) and cell["tokens_per_s"] > 0


def test_plot_is_one_png_of_tokens_per_second_and_memory(tmp_path, monkeypatch):
    cells = [{"model": m, "length": n, "batch_size": max(1, 4096 // n), "tokens_per_s": t,
              "peak_memory_mib": mem}
             for m, n, t, mem in (("a", 1024, 4000.0, 10.0), ("a", 4096, 2000.0, 40.0),
                                  ("b", 1024, 3000.0, 5.0), ("b", 4096, None, None))]
    assert benchmark.plot_series(cells, "tokens_per_s") == {"a": [(1024, 4000.0), (4096, 2000.0)],
                                                            "b": [(1024, 3000.0)]}
    drawn = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.set

    def record(self, **kwargs):
        drawn.append(kwargs.get("ylabel"))
        return original(self, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set", record)
    paths = benchmark.write_plots(cells, tmp_path / "bench.json", "title")
    assert paths == [str(tmp_path / "bench_vs_length.png")]
    assert Path(paths[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == ["training tokens per second", "peak memory (MiB)"]
