"""The generation benchmark: `generate()` of every longctx decoder against the prompt length.

For each prompt length it builds every chosen model as a causal LM at one shared size (dropout
0, eval mode, fp32), gives it the same random prompt (batch 1) and times greedy `generate()`
with exactly N new tokens (`max_new_tokens = min_new_tokens = N`), reporting

- tokens/s = N / (seconds of that generate() call): prompt processing included;
- the prefill: generate() with one new token, which is the prompt's forward pass (it builds the
  cache and picks the first token) plus generate()'s own setup;
- decode time = generate(N) time - prefill time: the N - 1 single-token steps that follow;
  decode tokens/s = (N - 1) / decode time, and the time per decoded token;
- peak memory: the growth over one more generate(N) call, after the timed ones: on CPU of the
  process's resident set (`measure.PeakRSS`), on CUDA of the allocated memory
  (`measure.PeakCudaMemory`): cache and activations; the weights exist before and are given as
  their own column, since every model of a length is resident at once.

Times are the median of `repeats` calls after `warmup` untimed ones; the models of a length run
interleaved within each repeat (in a rotating order), so the machine's noise falls on all of
them alike, and ratios against the baseline (transformers' GPT-2 of the same size) are taken at
the same prompt length within one run.

A model that cannot take a length by construction is either built for it (GPT-2's
`n_positions`, the Reformers' axial position shape: sized to prompt + new tokens) or its cell
says why it did not run; nothing is left out silently.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

import longctx  # noqa: F401  (registers the longctx model types with the Auto classes)

from .benchmark import (
    CPU_NOISE_NOTE,
    DROPOUT_NOTE,
    FIRST_TOKEN_ID,
    REFORMER_CHUNK_LENGTH,
    STEAL_WARNING,
    VOCAB_SIZE,
    UnsupportedLength,
    allocator_note,
    check_shared_settings,
    hf_reformer_config,
    cpu_ticks,
    median,
    record_error,
    reformer_buckets,
    shorten,
    steal_fraction,
    synchronize,
    t5_config,
)
from .measure import (
    MIB,
    RSS_GROWTH,
    PeakCudaMemory,
    PeakRSS,
    device_name,
    environment,
    format_table,
)
from .plots import MATPLOTLIB_MISSING, lines_against_length
from .run_common import command_line, write_json

MAX_PROMPT_LENGTH = {"cuda": 131072, "cpu": 65536}
BASELINE = "hf-gpt2"

# Per-device defaults (the CPU ones fit a 2-core machine; the CUDA size is the training
# benchmark's GPU size).
DEVICE_DEFAULTS = {
    "cpu": dict(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024,
                prompt_lengths=(1024, 2048, 4096, 8192, 16384)),
    "cuda": dict(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048,
                 prompt_lengths=(1024, 2048, 4096, 8192, 16384, 32768)),
}
# --quick: a run of seconds, to check that everything works (explicit flags still win)
QUICK = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
             prompt_lengths=(128, 256), new_tokens=8, repeats=1, warmup=1, window=64,
             xl_memory=64)

DEFINITIONS = {
    "tokens_per_s": "new_tokens / generate_seconds (prompt processing included)",
    "generate_seconds": "median over the repeats of one greedy generate() call with "
                        "max_new_tokens = min_new_tokens = new_tokens, batch 1",
    "prefill_seconds": "median over the repeats of generate() with one new token: the prompt's "
                       "forward pass (builds the cache, picks the first token) plus generate()'s "
                       "setup, measured separately in the same repeat",
    "decode_seconds": "generate_seconds - prefill_seconds: the new_tokens - 1 single-token steps "
                      "after the prefill",
    "decode_tokens_per_s": "(new_tokens - 1) / decode_seconds",
    "decode_ms_per_token": "1000 * decode_seconds / (new_tokens - 1)",
    "peak_memory_mib": "growth over one more generate(new_tokens) call after the timed ones "
                       "(cache and activations; the weights are weights_mib)",
    "vs_baseline": "this model's value / the baseline's at the same prompt length, this run only",
}


# --------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    models: list[str]
    prompt_lengths: list[int]
    new_tokens: int = 128
    device: str = "cpu"
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    window: int = 512  # longctx-longformer attention_window (the whole window; causal: half back)
    xl_memory: int = 512  # longctx-transfo-xl mem_len
    repeats: int = 3
    warmup: int = 1
    # GPT-2 built with this n_positions (like the released GPT-2's 1024) instead of for each
    # length: longer prompts are then reported as unsupported. None: built for each length.
    gpt2_positions: int | None = None
    # A model whose generate() took longer than this at one prompt length is skipped (with the
    # reason) at the longer ones. None: never skipped.
    max_seconds_per_generate: float | None = None
    baseline: str | None = BASELINE
    seed: int = 0
    vocab_size: int = VOCAB_SIZE
    # torch.set_num_threads for the run (None: torch's default). On a machine shared with other
    # jobs one thread avoids intra-op barriers that wait for a descheduled thread: those stalls
    # can exceed a whole decode step.
    threads: int | None = None

    def check(self):
        """Raises ValueError naming the setting and the fix."""
        check_shared_settings(self, "prompt_lengths", MAX_PROMPT_LENGTH, ("xl_memory", "repeats"))
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens={self.new_tokens}: use at least 2 (decode time is that "
                             "of the tokens after the first, which the prefill picks)")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"threads={self.threads} must be positive (or None: torch's default)")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if self.window % 2:
            raise ValueError(f"window={self.window} must be even (a causal token sees window / 2 "
                             "tokens back)")
        if self.gpt2_positions is not None and self.gpt2_positions <= 0:
            raise ValueError(f"gpt2_positions={self.gpt2_positions} must be positive (or None: "
                             "built for each length)")
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} is not among the models {self.models}; "
                             "add it to the models or choose another baseline")


# --------------------------------------------------------------------------- models


@dataclass
class BuiltDecoder:
    model: torch.nn.Module
    notes: dict = field(default_factory=dict)  # how it was sized for this length


@dataclass(frozen=True)
class DecoderSpec:
    build: Callable[[GenerationSettings, int], BuiltDecoder]  # (settings, prompt length)
    description: str


def total_length(settings: GenerationSettings, prompt_length: int) -> int:
    return prompt_length + settings.new_tokens


def build_hf_gpt2(settings: GenerationSettings, prompt_length: int) -> BuiltDecoder:
    """transformers' GPT2LMHeadModel; learned positions, so n_positions must hold prompt + new
    tokens: built for the length unless `gpt2_positions` fixes it."""
    needed = total_length(settings, prompt_length)
    positions = settings.gpt2_positions or needed
    if positions < needed:
        raise UnsupportedLength(f"hf-gpt2 has n_positions={positions} (--gpt2_positions) but "
                                f"prompt + new tokens = {needed}; its learned position table "
                                "has no row for the later positions")
    config = transformers.GPT2Config(
        vocab_size=settings.vocab_size, n_embd=settings.hidden_size, n_layer=settings.num_layers,
        n_head=settings.num_heads, n_inner=settings.intermediate_size, n_positions=positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    return BuiltDecoder(model, {"n_positions": positions,
                                "attn_implementation": model.config._attn_implementation})


def reformer_capacity(settings: GenerationSettings, prompt_length: int) -> int:
    """Positions the axial embeddings must hold: prompt + new tokens, rounded up to the chunk
    length (transformers' Reformer pads a prompt to a multiple of it)."""
    chunk = REFORMER_CHUNK_LENGTH
    return -(-total_length(settings, prompt_length) // chunk) * chunk


def build_hf_reformer(settings: GenerationSettings, prompt_length: int) -> BuiltDecoder:
    """transformers' ReformerModelWithLMHead: local and LSH layers alternating, one hash, chunks
    of 64, its own generation cache (buckets and states). Evaluation needs the axial position
    shape to hold every position: built for the length."""
    if settings.hidden_size % 2:
        raise UnsupportedLength("hf-reformer's axial position embeddings split hidden_size in "
                                f"two halves; hidden_size={settings.hidden_size} is odd")
    config = hf_reformer_config(settings, reformer_capacity(settings, prompt_length),
                                hash_seed=0, is_decoder=True)
    return BuiltDecoder(transformers.ReformerModelWithLMHead(config),
                        {"axial_pos_shape": list(config.axial_pos_shape),
                         "num_buckets": config.num_buckets})


def longctx_decoder(model_type: str, settings: GenerationSettings, prompt_length: int,
                    **extra) -> torch.nn.Module:
    """A longctx causal LM at the shared size, with positions for prompt + new tokens."""
    fields = dict(vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
                  num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
                  intermediate_size=settings.intermediate_size,
                  max_position_embeddings=total_length(settings, prompt_length),
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, is_decoder=True,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = AutoConfig.for_model(model_type, **{**fields, **extra})
    return AutoModelForCausalLM.from_config(config)


def build_longctx_transformer(settings, prompt_length) -> BuiltDecoder:
    model = longctx_decoder("longctx-transformer", settings, prompt_length)
    return BuiltDecoder(model, {"max_position_embeddings": model.config.max_position_embeddings})


def build_longctx_longformer(settings, prompt_length) -> BuiltDecoder:
    model = longctx_decoder("longctx-longformer", settings, prompt_length,
                            attention_window=settings.window)
    return BuiltDecoder(model, {"attention_window": settings.window,
                                "cache_keeps": model.config.sliding_window})


def transfo_xl_builder(mem_len: int | None) -> Callable:
    """longctx-transfo-xl with `mem_len` (None: the settings' xl_memory); relative positions, so
    no length limit."""
    def build(settings, prompt_length) -> BuiltDecoder:
        memory = settings.xl_memory if mem_len is None else mem_len
        model = longctx_decoder("longctx-transfo-xl", settings, prompt_length, mem_len=memory)
        return BuiltDecoder(model, {"mem_len": memory})
    return build


def build_longctx_reformer(settings, prompt_length) -> BuiltDecoder:
    """Sized as hf-reformer (alternating local / LSH, chunks of 64, one hash, the same buckets);
    its own axial shape holds max_position_embeddings."""
    capacity = reformer_capacity(settings, prompt_length)
    model = longctx_decoder("longctx-reformer", settings, prompt_length, hidden_act="gelu",
                            num_hashes=1, lsh_attn_chunk_length=REFORMER_CHUNK_LENGTH,
                            local_attn_chunk_length=REFORMER_CHUNK_LENGTH,
                            num_buckets=reformer_buckets(capacity), hash_seed=0,
                            max_position_embeddings=capacity)
    return BuiltDecoder(model, {"axial_pos_shape": list(model.config.axial_pos_shape),
                                "num_buckets": model.config.num_buckets})


def build_hf_t5(settings, prompt_length) -> BuiltDecoder:
    """transformers' T5ForConditionalGeneration at the shared size (as many decoder layers as
    encoder layers): the encoder reads the prompt once (bidirectional, the prefill), the decoder
    writes the new tokens with a self-attention cache and cross-attention over the prompt's
    encoder states. Relative position buckets: no length limit."""
    config = t5_config(settings)
    config.use_cache = True
    model = transformers.T5ForConditionalGeneration(config)
    return BuiltDecoder(model, {"decoder_layers": config.num_decoder_layers,
                                "attn_implementation": model.config._attn_implementation})


MODELS: dict[str, DecoderSpec] = {
    "hf-gpt2": DecoderSpec(build_hf_gpt2, "transformers GPT2LMHeadModel (SDPA, KV cache)"),
    "hf-reformer": DecoderSpec(build_hf_reformer, "transformers ReformerModelWithLMHead (local/LSH "
                               "alternating, 1 hash, its bucket cache)"),
    "longctx-transformer": DecoderSpec(build_longctx_transformer, "dense SDPA, KV cache"),
    "longctx-longformer": DecoderSpec(build_longctx_longformer, "sliding window, cache of the "
                                      "last window / 2 + 1 keys"),
    "longctx-transfo-xl": DecoderSpec(transfo_xl_builder(None), "relative attention, memory of "
                                      "xl_memory states"),
    "longctx-transfo-xl-mem1024": DecoderSpec(transfo_xl_builder(1024), "relative attention, "
                                              "memory of 1024 states"),
    "longctx-reformer": DecoderSpec(build_longctx_reformer, "local/LSH alternating, recomputing "
                                    "cache"),
    "hf-t5": DecoderSpec(build_hf_t5, "transformers T5ForConditionalGeneration: the encoder reads "
                         "the prompt, the decoder writes (self-attention cache, cross-attention "
                         "over the prompt)"),
}
DEFAULT_MODELS = ("hf-gpt2", "hf-reformer", "longctx-transformer", "longctx-longformer",
                  "longctx-transfo-xl", "longctx-reformer")


def select_models(names: str | list[str]) -> list[str]:
    """Comma-separated (or listed) names, each checked against `MODELS`."""
    chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    chosen = list(dict.fromkeys(n for n in chosen if n))
    unknown = [name for name in chosen if name not in MODELS]
    if not chosen or unknown:
        raise ValueError(f"unknown or no model(s) {unknown or chosen}; known: "
                         f"{', '.join(MODELS)}")
    return chosen


# --------------------------------------------------------------------------- timing


def make_prompt(settings: GenerationSettings, prompt_length: int) -> torch.Tensor:
    """(1, prompt_length) random ids after the special tokens; the same for every model."""
    generator = torch.Generator().manual_seed(settings.seed + prompt_length)
    return torch.randint(FIRST_TOKEN_ID, settings.vocab_size, (1, prompt_length),
                         generator=generator).to(settings.device)


def generate(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generate() of exactly `new_tokens` tokens; returns the new tokens (1, n). A
    decoder returns the prompt and its continuation; an encoder-decoder (T5) returns its
    decoder's start token and the new tokens."""
    with torch.inference_mode():
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=0, use_cache=True)
    first_new = 1 if model.config.is_encoder_decoder else prompt.shape[1]
    return output[:, first_new:]


def timed_generate(model, prompt, new_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    synchronize(device)
    started = time.perf_counter()
    new = generate(model, prompt, new_tokens)
    synchronize(device)
    return time.perf_counter() - started, new


def weights_mib(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / MIB


def memory_growth(model, prompt, new_tokens: int, device: str) -> float:
    """Peak growth in MiB over one generate() call (see DEFINITIONS)."""
    meter = PeakCudaMemory() if device == "cuda" else PeakRSS()
    with meter:
        generate(model, prompt, new_tokens)
    return meter.growth_mib


def empty_cell(name: str, settings: GenerationSettings, prompt_length: int) -> dict:
    return {"model": name, "prompt_length": prompt_length, "new_tokens": settings.new_tokens,
            "description": MODELS[name].description, "parameters": None, "weights_mib": None,
            "built_for": {}, "generate_seconds_runs": [], "prefill_seconds_runs": [],
            "generated_new_tokens": None, "generate_seconds": None, "prefill_seconds": None,
            "decode_seconds": None, "tokens_per_s": None, "decode_tokens_per_s": None,
            "decode_ms_per_token": None, "peak_memory_mib": None, "error": None,
            "error_kind": None}


def check_new_tokens(cell: dict, new: torch.Tensor, wanted: int):
    """Every call must give exactly `wanted` tokens (a short one would inflate tokens/s)."""
    cell["generated_new_tokens"] = int(new.shape[1])
    if new.shape[1] != wanted:
        raise RuntimeError(f"generate() gave {new.shape[1]} new tokens, not {wanted}")


def summarize(cell: dict):
    """The medians and the rates derived from them (DEFINITIONS)."""
    n = cell["new_tokens"]
    cell["generate_seconds"] = median(cell["generate_seconds_runs"])
    cell["prefill_seconds"] = median(cell["prefill_seconds_runs"])
    cell["tokens_per_s"] = n / cell["generate_seconds"]
    decode = cell["generate_seconds"] - cell["prefill_seconds"]
    cell["decode_seconds"] = cell["decode_tokens_per_s"] = cell["decode_ms_per_token"] = None
    if decode <= 0:  # noise larger than the decode steps (tiny models): no rate to give
        cell["decode_note"] = "generate time not above the prefill time: no decode rate"
        return
    cell["decode_seconds"] = decode
    cell["decode_tokens_per_s"] = (n - 1) / decode
    cell["decode_ms_per_token"] = 1000 * decode / (n - 1)


# --------------------------------------------------------------------------- one prompt length


def build_all(settings: GenerationSettings, prompt_length: int, skipped: dict) -> tuple:
    """(cells, models): one cell per model; models holds those built (the others' cells say
    why not)."""
    cells, models = {}, {}
    for name in settings.models:
        cell = cells[name] = empty_cell(name, settings, prompt_length)
        if name in skipped:
            cell.update(error_kind="skipped", error=skipped[name])
            continue
        try:
            torch.manual_seed(settings.seed)
            built = MODELS[name].build(settings, prompt_length)
            model = built.model.to(settings.device).eval()
            cell.update(built_for=built.notes, weights_mib=weights_mib(model),
                        parameters=sum(p.numel() for p in model.parameters()))
            models[name] = model
        except Exception as error:  # recorded; the other models go on
            record_error(cell, error)
    return cells, models


def run_or_record(cell: dict, models: dict, name: str, action: Callable):
    """Runs `action()`; on an error records it in the cell and drops the model from this
    length."""
    try:
        return action()
    except Exception as error:
        record_error(cell, error)
        models.pop(name, None)
        gc.collect()
        return None


def measure_length(settings: GenerationSettings, prompt_length: int, skipped: dict) -> list[dict]:
    """Every model at one prompt length: warm-up, interleaved timed repeats, then memory."""
    cells, models = build_all(settings, prompt_length, skipped)
    prompt, n, device = make_prompt(settings, prompt_length), settings.new_tokens, settings.device

    def warm(name):  # the prefill and a decode step: every code path, without the whole cost
        for _ in range(settings.warmup):
            generate(models[name], prompt, 2)

    def timed(name):
        cell = cells[name]
        seconds, _ = timed_generate(models[name], prompt, 1, device)
        cell["prefill_seconds_runs"].append(seconds)
        seconds, new = timed_generate(models[name], prompt, n, device)
        check_new_tokens(cell, new, n)
        cell["generate_seconds_runs"].append(seconds)

    for name in list(models):
        run_or_record(cells[name], models, name, lambda: warm(name))
    ticks = cpu_ticks()
    for repeat in range(settings.repeats):
        order = list(models)
        order = order[repeat % len(order):] + order[:repeat % len(order)] if order else order
        for name in order:
            run_or_record(cells[name], models, name, lambda: timed(name))
    steal = steal_fraction(ticks, cpu_ticks())
    for name in list(models):  # after the timed calls: the sampling thread stays out of them
        growth = run_or_record(cells[name], models, name,
                               lambda: memory_growth(models[name], prompt, n, device))
        if name in models:
            cells[name]["peak_memory_mib"] = growth
            cells[name]["cpu_steal_fraction"] = steal
            summarize(cells[name])
    models.clear()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return [cells[name] for name in settings.models]


def too_slow(cell: dict, limit: float | None) -> str | None:
    """The skip reason for longer prompts when this cell's generate() took over `limit` s."""
    seconds = cell.get("generate_seconds")
    if limit is None or seconds is None or seconds <= limit:
        return None
    return (f"skipped: generate() took {seconds:.1f} s at prompt {cell['prompt_length']}, over "
            f"--max_seconds_per_generate {limit:g}")


# --------------------------------------------------------------------------- report


def add_ratios(cells: list[dict], baseline: str | None):
    """`*_vs_baseline` on every cell: its value / the baseline's at the same prompt length (None
    where either is missing)."""
    by_key = {(c["model"], c["prompt_length"]): c for c in cells}
    for cell in cells:
        base = by_key.get((baseline, cell["prompt_length"]), {}) if baseline else {}
        for key in ("tokens_per_s", "decode_tokens_per_s", "peak_memory_mib"):
            mine, theirs = cell.get(key), base.get(key)
            ok = mine is not None and theirs is not None and theirs > 0
            cell[f"{key}_vs_baseline"] = mine / theirs if ok else None


def generation_table(cells: list[dict], baseline: str | None) -> str:
    base = baseline or "-"
    header = ["model", "prompt", "new", "prefill ms", "tok/s", "decode tok/s", "ms/token",
              "peak MiB", f"decode/{base}", f"tok/s/{base}", f"mem/{base}"]
    fmt = lambda value, pattern: "n/a" if value is None else format(value, pattern)  # noqa: E731
    lines = []
    for cell in cells:
        if cell["error"] is not None:
            lines.append([cell["model"], str(cell["prompt_length"]), str(cell["new_tokens"]),
                          f"{cell['error_kind'].upper()}: {shorten(cell['error'], 110)}"])
            continue
        ratio = lambda key: fmt(cell[f"{key}_vs_baseline"], ".2f") + (  # noqa: E731
            "" if cell[f"{key}_vs_baseline"] is None else "x")
        lines.append([cell["model"], str(cell["prompt_length"]), str(cell["new_tokens"]),
                      fmt(cell["prefill_seconds"] * 1000, ",.1f"),
                      fmt(cell["tokens_per_s"], ",.1f"),
                      fmt(cell["decode_tokens_per_s"], ",.1f"),
                      fmt(cell["decode_ms_per_token"], ",.2f"),
                      fmt(cell["peak_memory_mib"], ",.1f"), ratio("decode_tokens_per_s"),
                      ratio("tokens_per_s"), ratio("peak_memory_mib")])
    return format_table(header, lines)


def memory_measurement(device: str) -> str:
    if device == "cuda":
        return ("growth of torch.cuda.max_memory_allocated over one generate() call after the "
                "timed ones (PeakCudaMemory): cache and activations; weights not counted (every "
                "model of a length is resident at once), given as weights_mib")
    return (f"{RSS_GROWTH} over one generate() call after the timed ones: cache, activations and "
            "allocator overhead; weights exist before it and are not counted (weights_mib)")


def notes(settings: GenerationSettings, cells: list[dict]) -> list[str]:
    n = settings.new_tokens
    lines = [
        f"greedy generate(), batch 1, exactly {n} new tokens (max_new_tokens = min_new_tokens), "
        "random prompt ids, eval mode, torch.inference_mode(), fp32",
        f"tok/s = {n} / generate() seconds; prefill = generate() with 1 new token (the prompt's "
        f"forward + setup); decode = generate - prefill, the {n - 1} steps after it; decode tok/s "
        f"= {n - 1} / decode seconds; ms/token = decode ms / {n - 1}",
        f"times: median of {settings.repeats} repeat(s) after {settings.warmup} warm-up "
        "generate() call(s) of 2 new tokens (prefill and one decode step) per model; the models "
        "of a length interleaved in each repeat (rotating order)"
        + ("; torch.cuda.synchronize() around each call" if settings.device == "cuda" else ""),
        "peak MiB: " + memory_measurement(settings.device),
        DROPOUT_NOTE,
        f"size of every model: hidden {settings.hidden_size}, {settings.num_layers} layers, "
        f"{settings.num_heads} heads, intermediate {settings.intermediate_size}, vocab "
        f"{settings.vocab_size}",
        f"longctx-longformer: attention_window {settings.window} (a token sees "
        f"{settings.window // 2} back); longctx-transfo-xl: mem_len {settings.xl_memory}",
        ("hf-gpt2: n_positions = prompt + new tokens (built per length)"
         if settings.gpt2_positions is None
         else f"hf-gpt2: n_positions fixed at {settings.gpt2_positions} (--gpt2_positions)"),
        "Reformers: axial position shape built to hold prompt + new tokens rounded up to the chunk "
        f"length {REFORMER_CHUNK_LENGTH}; hf-reformer pads the prompt to that multiple itself",
    ]
    if "hf-t5" in settings.models:
        lines.append(T5_GENERATION_NOTE)
    if settings.baseline:
        lines.append(f"x/{settings.baseline}: this model's decode tok/s, tok/s or peak MiB over "
                     f"{settings.baseline}'s at the same prompt length, this run only (> 1 faster "
                     "/ more memory)")
    disturbed = sorted({c["prompt_length"] for c in cells
                        if (c.get("cpu_steal_fraction") or 0) > STEAL_WARNING})
    if disturbed:
        lines.append(f"CPU steal time over {STEAL_WARNING:.0%} at prompt(s) "
                     f"{', '.join(map(str, disturbed))} (the machine was shared; timings suspect)")
    no_decode = [f"{c['model']} @ {c['prompt_length']}" for c in cells if c.get("decode_note")]
    if no_decode:
        lines.append("no decode rate (generate time not above the prefill's, noise): "
                     + ", ".join(no_decode))
    if settings.device == "cpu":
        lines.append(f"{CPU_NOISE_NOTE}; {torch.get_num_threads()} threads")
        lines.append(allocator_note())
    return lines


T5_GENERATION_NOTE = (
    "hf-t5: an encoder-decoder, so its prompt goes to the encoder and the new tokens come from "
    "the decoder (the same prompt and count as the decoders; its prefill is the encoder's pass "
    "plus the first decoder step); as many decoder layers (with cross-attention) as encoder "
    "layers, so more weights than a decoder of the same size (parameters in the JSON); d_kv = "
    "hidden / heads, relu feed-forward, 32 relative position buckets")


PLOTS = (("decode_tokens_per_s", "decode tokens/s", "decode"),
         ("peak_memory_mib", "peak memory growth (MiB)", "memory"))


def plot_paths(output: Path) -> list[Path]:
    """The PNGs beside the JSON `output`, named after it."""
    return [output.with_name(f"{output.stem}_{suffix}.png") for _, _, suffix in PLOTS]


def plot_title(settings: dict, environment: dict) -> str:
    """What a run measured (the JSON's sections): the device, the model size, the new tokens."""
    return (f"{environment.get('device_name', environment.get('device', '?'))}: "
            f"{settings['num_layers']}×{settings['hidden_size']}, {settings['new_tokens']} new "
            "tokens")


def write_plots(cells: list[dict], output: Path, title: str) -> list[str] | str:
    written = []
    for (key, label, _), path in zip(PLOTS, plot_paths(output)):
        series = {}
        for cell in cells:
            series.setdefault(cell["model"], []).append((cell["prompt_length"], cell.get(key)))
        result = lines_against_length(series, path, xlabel="prompt length (tokens)",
                                      ylabel=label, title=title)
        if result == MATPLOTLIB_MISSING:
            return result
        written.append(result)
    return written


def refuse_overwrite(output: Path, overwrite: bool):
    """Never replace earlier results silently: the JSON or its plots existing stop the run before
    it starts, unless `overwrite` (then the old files go first, so none is read as this run's)."""
    existing = [path for path in [output, *plot_paths(output)] if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"--output {output}: {', '.join(map(str, existing))} already exist(s); "
                         "choose another --output, or pass --overwrite to replace them")
    for path in existing:
        path.unlink()


# --------------------------------------------------------------------------- the run


def run_generation_benchmark(settings: GenerationSettings, output, overwrite: bool = False) -> dict:
    """Every (model, prompt length) cell; prints the table and notes, writes JSON and plots."""
    settings.models = select_models(settings.models)
    settings.prompt_lengths = sorted(set(settings.prompt_lengths))
    settings.check()
    output = Path(output)
    refuse_overwrite(output, overwrite)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    print(f"longctx generation benchmark on {settings.device} ({device_name(settings.device)}, "
          f"{torch.get_num_threads()} threads): {', '.join(settings.models)}; prompts "
          f"{', '.join(map(str, settings.prompt_lengths))}, {settings.new_tokens} new tokens",
          flush=True)
    cells, skipped = [], {}
    for prompt_length in settings.prompt_lengths:
        if cells:  # what is measured so far survives a run stopped later (e.g. by a timeout)
            write_json(output, {"settings": dataclasses.asdict(settings), "complete": False,
                                "definitions": DEFINITIONS, "results": cells},
                       indent=2, sort_keys=False)
        for cell in measure_length(settings, prompt_length, skipped):
            cells.append(cell)
            print("  " + progress_line(cell), flush=True)
            reason = too_slow(cell, settings.max_seconds_per_generate)
            if reason is not None:
                skipped[cell["model"]] = reason
            elif cell["error_kind"] == "out_of_memory":  # longer prompts only need more
                skipped[cell["model"]] = f"skipped: out of memory at prompt {prompt_length}"
    add_ratios(cells, settings.baseline)
    settings_record, environment_record = dataclasses.asdict(settings), environment(settings.device)
    plots = write_plots(cells, output, plot_title(settings_record, environment_record))
    table_notes = notes(settings, cells)
    results = {"command": command_line(), "settings": settings_record, "complete": True,
               "environment": environment_record,
               "definitions": DEFINITIONS,
               "memory_measurement": memory_measurement(settings.device),
               "notes": table_notes, "plots": plots,
               "wall_seconds": time.perf_counter() - started, "results": cells}
    write_json(output, results, indent=2, sort_keys=False)
    print()
    print(generation_table(cells, settings.baseline))
    for note in table_notes:
        print("  " + note)
    print(f"  {plots}" if isinstance(plots, str) else f"  plots: {', '.join(plots)}")
    print(f"results: {output} ({results['wall_seconds']:.0f} s)", flush=True)
    return results


def progress_line(cell: dict) -> str:
    head = f"{cell['model']} @ {cell['prompt_length']}"
    if cell["error"] is not None:
        return f"{head}: {cell['error_kind'].upper()} ({cell['error']})"
    decode = cell["decode_tokens_per_s"]
    return (f"{head}: {cell['tokens_per_s']:,.1f} tok/s, decode "
            + ("n/a" if decode is None else f"{decode:,.1f} tok/s") + ", "
            f"{cell['peak_memory_mib']:,.1f} MiB")


def exit_code(results: dict) -> int:
    """1 when a cell failed for another reason than memory, a length or a skip."""
    return int(any(cell["error_kind"] == "error" for cell in results["results"]))

