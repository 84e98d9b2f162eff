"""The efficiency benchmark: one training step of every chosen model at every sequence length.

For each (model, length) cell it builds the model at the one size every model shares, feeds
random token ids of shape (batch, length) and times a training step -- forward, backward and
(unless switched off) an AdamW step -- reporting

- seconds per step: the median of `steps` timed steps after `warmup_steps` untimed ones
  (`torch.cuda.synchronize()` around each on CUDA);
- tokens per second: batch x length / seconds per step;
- peak memory: on CUDA `torch.cuda.max_memory_allocated` over the timed steps (after
  `reset_peak_memory_stats`: weights, gradients, optimizer state and activations); on CPU the
  peak growth of the process's resident set over one extra step
  (`longctx.experiments.measure.PeakRSS`: activations and gradients -- weights and optimizer
  state exist before it).

Every model is a backbone (`AutoModel`-like, no task head) and the loss is the mean square of
its last hidden state, so the step costs the same outside the backbones. Dropout is 0 in every
model: with dropout, PyTorch's CPU SDPA falls back to its slow math kernel, which would distort
the comparison. Ratios against a baseline model are computed within one run only.

The models are a registry, `MODELS` (name -> `ModelSpec`): a future architecture plugs in with
one entry, and any model type of `longctx.ARCHITECTURES` can be named directly.

This module is a user of the models; modeling files never import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoConfig, AutoModel

import longctx
from longctx.convert import convert_transformers_model

from .measure import MIB, RSS_GROWTH, PeakRSS, device_name, environment, format_table
from .plots import MATPLOTLIB_MISSING, decimal_log_axis, plain_log_axis, pyplot, save
from .run_common import command_line

MAX_LENGTH = {"cuda": 65536, "cpu": 16384}
VOCAB_SIZE = 261  # the byte tokenizer's; ids are drawn from [FIRST_TOKEN_ID, VOCAB_SIZE)
FIRST_TOKEN_ID = 5  # after the special tokens: no padding, no separators in the inputs
REFORMER_CHUNK_LENGTH = 64
STEAL_WARNING = 0.05  # flag cells whose timed steps lost more CPU time than this to the hypervisor
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Per-device defaults of the settings that differ between a 2-core CPU and a GPU.
DEVICE_DEFAULTS = {
    "cpu": dict(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=1024,
                lengths=(1024, 2048, 4096), tokens_per_step=4096),
    # the GPU configuration
    "cuda": dict(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048,
                 lengths=(1024, 2048, 4096, 8192, 16384), tokens_per_step=16384),
}

DROPOUT_NOTE = ("dropout 0 in every model: with dropout, PyTorch's CPU SDPA falls back to its slow "
                "math kernel, which would distort the comparison")
LOSS_NOTE = ("loss = mean square of the backbone's last hidden state (no task head: the same cost "
             "for every model)")
T5_NOTE = ("T5 (transformers' classes): d_model = hidden, d_ff = intermediate, d_kv = hidden / "
           "heads, relu feed-forward, 32 relative position buckets; hf-t5 is T5EncoderModel, the "
           "part comparable with the other encoders; hf-t5-encoder-decoder is T5Model, whose "
           "decoder (as many layers, over L target tokens: causal self-attention + "
           "cross-attention) costs on top of that encoder: what a seq2seq or LM task with T5 pays")
CPU_NOISE_NOTE = ("CPU timings are noisy (shared cores, frequency scaling): compare ratios within "
                  "one run only, never across runs or machines")


# --------------------------------------------------------------------------- settings


def check_shared_settings(settings, lengths_field: str, max_length: dict, positive=()):
    """The checks of the settings both benchmarks have (device, lengths, sizes), raising
    ValueError naming the setting and the fix; `positive` names more fields that must be > 0."""
    if settings.device not in max_length:
        raise ValueError(f"device={settings.device!r}: use 'cpu' or 'cuda'")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False; use --device cpu")
    lengths = getattr(settings, lengths_field)
    if not lengths or any(not isinstance(n, int) or n <= 0 for n in lengths):
        raise ValueError(f"{lengths_field}={lengths}: give positive integers, e.g. 1024,4096")
    if max(lengths) > max_length[settings.device]:
        raise ValueError(f"length {max(lengths)} is over the {settings.device} limit of "
                         f"{max_length[settings.device]} tokens")
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "window",
                 *positive):
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name}={getattr(settings, name)} must be positive")
    if settings.hidden_size % settings.num_heads:
        raise ValueError(f"hidden_size={settings.hidden_size} must be divisible by "
                         f"num_heads={settings.num_heads}")


@dataclass
class BenchmarkSettings:
    models: list[str]
    lengths: list[int]
    device: str = "cpu"
    dtype: str = "fp32"  # "bf16": torch.autocast(bfloat16) over fp32 weights, CUDA only
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    window: int = 512  # Longformer attention_window (the whole window, as in transformers)
    global_tokens: int = 0  # first N tokens of each row global (Longformers only)
    tokens_per_step: int | None = 4096
    batch_size: int | None = None  # fixed batch, overriding tokens_per_step
    warmup_steps: int = 1
    steps: int = 5
    optimizer_step: bool = True
    # torch.compile every model with this mode ("default", "reduce-overhead": CUDA graphs, ...);
    # None: eager. Compiling happens in the warm-up steps.
    compile: str | None = None
    # time a forward pass under torch.inference_mode() instead of a training step
    inference: bool = False
    # Config fields for the longctx models built from their own config (e.g.
    # {"projection_dim": 128}); a field a model's config does not have is left out for that
    # model, and the notes say which.
    model_config: dict = field(default_factory=dict)
    baseline: str | None = "hf-longformer"
    seed: int = 0
    vocab_size: int = VOCAB_SIZE

    @property
    def max_length(self) -> int:
        return max(self.lengths)

    def check(self):
        """Raises ValueError naming the setting and the fix."""
        check_shared_settings(self, "lengths", MAX_LENGTH, ("steps",))
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype={self.dtype!r}: use 'fp32' or 'bf16'")
        if self.dtype == "bf16" and self.device != "cuda":
            raise ValueError("dtype='bf16' is for CUDA (autocast); the CPU benchmark runs in fp32")
        if self.window % 2:
            raise ValueError(f"window={self.window} must be even (half of it on each side of a "
                             "token)")
        if self.warmup_steps < 0 or self.global_tokens < 0:
            raise ValueError("warmup_steps and global_tokens must be >= 0")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile={self.compile!r}: use one of {COMPILE_MODES} (or None for "
                             "eager)")
        if self.compile and self.warmup_steps < 2:
            raise ValueError(f"compile={self.compile!r} with warmup_steps={self.warmup_steps}: "
                             "compiling (and a recompile after the first step) would be timed; "
                             "use at least 2 warm-up steps")
        if self.global_tokens > min(self.lengths):
            raise ValueError(f"global_tokens={self.global_tokens} is more than the shortest length "
                             f"{min(self.lengths)}")
        if self.batch_size is None and not (self.tokens_per_step and self.tokens_per_step > 0):
            raise ValueError("give a positive tokens_per_step or a batch_size")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"batch_size={self.batch_size} must be positive")
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} is not among the models {self.models}; "
                             f"add it to the models or choose another baseline")


def batch_size_for(length: int, tokens_per_step: int | None = None,
                   batch_size: int | None = None) -> int:
    """The fixed `batch_size` if given, else `tokens_per_step // length`, at least 1."""
    if batch_size is not None:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        return batch_size
    if not tokens_per_step or tokens_per_step <= 0:
        raise ValueError("give a positive tokens_per_step or a batch_size")
    return max(1, tokens_per_step // length)


def median(values) -> float:
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("median of no values")
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated integers, e.g. "
                         "1024,2048,4096") from None
    if not values:
        raise ValueError(f"{text!r}: expected at least one integer")
    return values


# --------------------------------------------------------------------------- models


class UnsupportedLength(ValueError):
    """A model cannot run at this length by construction (recorded, not a failure of the run)."""


@dataclass
class Built:
    model: torch.nn.Module
    weights: str = "random init"
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[BenchmarkSettings, int], Built]  # (settings, length) -> model
    description: str
    global_attention: bool = False  # takes `global_attention_mask`
    # Transformer-XL as it trains: each length L is a span of L/2 new tokens after a memory of L/2
    # hidden states per layer (no gradient); tokens per step count the new tokens only.
    memory: bool = False
    # An encoder-decoder (T5Model): also takes `decoder_input_ids`, as many as the input ids (the
    # inputs shifted right, as T5 builds them from labels); tokens per step count the input ids.
    decoder_inputs: bool = False


def common_fields(settings: BenchmarkSettings) -> dict:
    """The size and dropout fields every longctx config takes (configuration_common.py)."""
    return dict(vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
                num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
                intermediate_size=settings.intermediate_size,
                max_position_embeddings=settings.max_length, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, classifier_dropout=0.0, is_decoder=False)


def build_longctx(model_type: str, settings: BenchmarkSettings, **extra) -> Built:
    """An encoder backbone of any registered longctx model type, at the shared size."""
    config_class = longctx.ARCHITECTURES[model_type].config
    fields = common_fields(settings)
    if hasattr(config_class, "attention_window"):
        fields["attention_window"] = settings.window
    fields.update(config_overrides_for(model_type, settings))
    config = AutoConfig.for_model(model_type, **{**fields, **extra})
    return Built(AutoModel.from_config(config))


def config_overrides_for(model_type: str, settings: BenchmarkSettings) -> dict:
    """The `model_config` fields this model type's config has."""
    known = longctx.ARCHITECTURES[model_type].config.__dataclass_fields__
    return {name: value for name, value in settings.model_config.items() if name in known}


def build_dense(settings: BenchmarkSettings, length: int) -> Built:
    return build_longctx("longctx-transformer", settings)


def build_hf_longformer(settings: BenchmarkSettings, length: int) -> Built:
    config = transformers.LongformerConfig(
        vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        intermediate_size=settings.intermediate_size,
        attention_window=settings.window, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # RoBERTa positions start after the padding id: a length-L row needs L + pad + 1 of them
        pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=2,
        max_position_embeddings=settings.max_length + 2)
    return Built(transformers.LongformerModel(config, add_pooling_layer=False))


def converted_from(build_reference, reference_name: str, settings: BenchmarkSettings,
                   length: int) -> Built:
    """The longctx model converted from a transformers model (same seed, so the same weights as
    the reference's cells): the performance bars compare the two implementations on the same
    weights."""
    reference = build_reference(settings, length)
    model = convert_transformers_model(reference.model)
    del reference
    config = model.config
    dropout = {name: value for name, value in config.to_dict().items()
               if name.endswith("dropout_prob") and value}
    if dropout:
        raise ValueError(f"the converted model has dropout {dropout}; the benchmark needs 0")
    return Built(model, weights=f"converted from {reference_name} (same weights)",
                 notes={"converted_class": type(model).__name__})


def build_longctx_longformer(settings: BenchmarkSettings, length: int) -> Built:
    return converted_from(build_hf_longformer, "hf-longformer", settings, length)


def reformer_axial_shape(length: int) -> tuple[int, int]:
    """Two factors of `length`, as close to its square root as they come."""
    first = max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)
    return first, length // first


def reformer_buckets(capacity: int) -> int:
    """transformers' own choice for a length (2 * chunks, rounded down to a power of 2), >= 2."""
    return max(2, 2 ** ((2 * (capacity // REFORMER_CHUNK_LENGTH)).bit_length() - 1))


def hf_reformer_config(settings, capacity: int, **extra) -> transformers.ReformerConfig:
    """transformers' Reformer at the shared size (both benchmarks): local and LSH layers
    alternating, one hash, chunks of 64, axial positions shaped for `capacity` tokens, the
    bucket count transformers would choose for it, no dropout; `extra`: more config fields."""
    half = settings.hidden_size // 2
    return transformers.ReformerConfig(
        vocab_size=settings.vocab_size, hidden_size=settings.hidden_size,
        num_attention_heads=settings.num_heads,
        attention_head_size=settings.hidden_size // settings.num_heads,
        feed_forward_size=settings.intermediate_size, hidden_act="gelu",
        attn_layers=[("local", "lsh")[i % 2] for i in range(settings.num_layers)],
        num_hashes=1, lsh_attn_chunk_length=REFORMER_CHUNK_LENGTH,
        local_attn_chunk_length=REFORMER_CHUNK_LENGTH, num_buckets=reformer_buckets(capacity),
        axial_pos_embds=True, axial_pos_shape=reformer_axial_shape(capacity),
        axial_pos_embds_dim=(half, settings.hidden_size - half),
        max_position_embeddings=capacity, hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
        axial_pos_embds_init_std=0.02, pad_token_id=0, eos_token_id=2, **extra)


def build_hf_reformer(settings: BenchmarkSettings, length: int) -> Built:
    """transformers' ReformerModel: local and LSH layers alternating, one hash, chunks of 64.
    Training needs the axial position shape to multiply to exactly the length, so it is built
    per length; lengths that are not multiples of the chunk length cannot run."""
    chunk = REFORMER_CHUNK_LENGTH
    if length % chunk:
        raise UnsupportedLength("hf-reformer needs lengths that are multiples of its chunk length "
                                f"{chunk}")
    if settings.hidden_size % 2:
        raise UnsupportedLength("hf-reformer's axial position embeddings need an even hidden_size")
    config = hf_reformer_config(settings, length, is_decoder=False)
    return Built(transformers.ReformerModel(config),
                 notes={"attn_layers": list(config.attn_layers),
                        "axial_pos_shape": list(config.axial_pos_shape),
                        "num_buckets": config.num_buckets})


def build_longctx_reformer(settings: BenchmarkSettings, length: int) -> Built:
    return converted_from(build_hf_reformer, "hf-reformer", settings, length)


def build_transfo_xl_with_memory(settings: BenchmarkSettings, length: int) -> Built:
    if length % 2:
        raise UnsupportedLength(f"length {length} is odd: the span is half memory, half new tokens")
    return build_longctx("longctx-transfo-xl", settings, mem_len=length // 2)


def t5_config(settings: BenchmarkSettings) -> transformers.T5Config:
    """transformers' T5 at the shared size: d_model = hidden, d_ff = intermediate, d_kv = hidden
    / heads, the same number of layers in the encoder and the decoder; relu feed-forward (T5
    v1.0), relative position buckets as the original (32 buckets, distance 128); the byte
    tokenizer's padding (0) and end of sequence (2)."""
    return transformers.T5Config(
        vocab_size=settings.vocab_size, d_model=settings.hidden_size,
        d_kv=settings.hidden_size // settings.num_heads, d_ff=settings.intermediate_size,
        num_layers=settings.num_layers, num_decoder_layers=settings.num_layers,
        num_heads=settings.num_heads, dropout_rate=0.0, classifier_dropout=0.0,
        feed_forward_proj="relu", use_cache=False, pad_token_id=0, eos_token_id=2,
        decoder_start_token_id=0)


def build_hf_t5(settings: BenchmarkSettings, length: int) -> Built:
    """T5's encoder alone (T5EncoderModel): the part comparable with the other encoders."""
    model = transformers.T5EncoderModel(t5_config(settings))
    return Built(model, notes={"attention": model.config._attn_implementation})


def build_hf_t5_encoder_decoder(settings: BenchmarkSettings, length: int) -> Built:
    """The whole T5 (T5Model): encoder over the length-L input, decoder over L target tokens
    (causal self-attention and cross-attention to the encoder); the loss is on the decoder's
    output, so the gradient runs through both."""
    model = transformers.T5Model(t5_config(settings))
    return Built(model, notes={"attention": model.config._attn_implementation})


# One entry per benchmarked model; a longctx architecture without an entry is benchmarked from its
# own config at the shared size (see `resolve_spec`).
MODELS: dict[str, ModelSpec] = {
    "dense": ModelSpec(build_dense, "longctx-transformer encoder, SDPA dense attention"),
    "hf-longformer": ModelSpec(build_hf_longformer, "transformers.LongformerModel, random weights",
                               global_attention=True),
    "longctx-longformer": ModelSpec(build_longctx_longformer, "longctx-longformer encoder, chunked "
                                    "exact sliding window", global_attention=True),
    "hf-reformer": ModelSpec(build_hf_reformer, "transformers.ReformerModel, local/LSH "
                             f"alternating, 1 hash, chunk {REFORMER_CHUNK_LENGTH}"),
    "longctx-reformer": ModelSpec(build_longctx_reformer, "longctx-reformer converted from "
                                  "hf-reformer (same weights, reversible layers)"),
    "longctx-transfo-xl-memory": ModelSpec(build_transfo_xl_with_memory, "longctx-transfo-xl as it "
                                           "trains: L/2 new tokens after a memory of L/2 (span L); "
                                           "tok/s counts new tokens",
                                           memory=True),
    "hf-t5": ModelSpec(build_hf_t5, "transformers.T5EncoderModel (T5's encoder: relative position "
                       "buckets, dense attention), random weights"),
    "hf-t5-encoder-decoder": ModelSpec(build_hf_t5_encoder_decoder, "transformers.T5Model: "
                                       "encoder over L tokens + decoder over L target tokens; "
                                       "tok/s counts the L input tokens",
                                       decoder_inputs=True),
}


def longctx_spec(model_type: str) -> ModelSpec:
    """A registered longctx model type, built from its own config at the shared size."""
    backbone = longctx.ARCHITECTURES[model_type].backbone
    takes_global = "global_attention_mask" in inspect.signature(backbone.forward).parameters
    return ModelSpec(lambda settings, length: build_longctx(model_type, settings),
                     f"{model_type} encoder, its own config", global_attention=takes_global)


def known_models() -> list[str]:
    return list(MODELS) + [name for name in longctx.ARCHITECTURES if name not in MODELS]


def resolve_spec(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    if name in longctx.ARCHITECTURES:
        return longctx_spec(name)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(known_models())}")


def select_models(names: str | list[str]) -> list[str]:
    """Comma-separated (or listed) names, each checked against the registry and longctx's types."""
    chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    chosen = list(dict.fromkeys(n for n in chosen if n))
    if not chosen:
        raise ValueError(f"no models given; known: {', '.join(known_models())}")
    unknown = [name for name in chosen if name not in MODELS and name not in longctx.ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(known_models())}")
    return chosen


# --------------------------------------------------------------------------- one cell


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def make_inputs(spec: ModelSpec, settings: BenchmarkSettings, batch: int, length: int) -> dict:
    generator = torch.Generator().manual_seed(settings.seed + length)
    new_tokens = length // 2 if spec.memory else length
    inputs = {"input_ids": torch.randint(FIRST_TOKEN_ID, settings.vocab_size, (batch, new_tokens),
                                         generator=generator).to(settings.device)}
    if spec.memory:  # a full memory, as after the first segment of a stream
        inputs["mems"] = [torch.randn(batch, length - new_tokens, settings.hidden_size,
                                      generator=generator).to(settings.device)
                          for _ in range(settings.num_layers)]
    if spec.decoder_inputs:  # T5's _shift_right: the start token (padding, 0) first
        ids = inputs["input_ids"]
        inputs["decoder_input_ids"] = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-1]], 1)
    if spec.global_attention and settings.global_tokens:
        mask = torch.zeros(batch, length, dtype=torch.long)
        mask[:, :settings.global_tokens] = 1
        inputs["global_attention_mask"] = mask.to(settings.device)
    return inputs


def autocast_for(settings: BenchmarkSettings):
    return (torch.autocast("cuda", dtype=torch.bfloat16) if settings.dtype == "bf16"
            else contextlib.nullcontext())


def backbone_loss(output) -> torch.Tensor:
    """LOSS_NOTE's loss: the mean square of the backbone's last hidden state."""
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
    return hidden.float().square().mean()


def training_step(model, inputs: dict, optimizer, settings: BenchmarkSettings) -> float:
    """Forward, backward and (optionally) an optimizer step; returns the loss."""
    with autocast_for(settings):
        output = model(**inputs)
    loss = backbone_loss(output)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss.detach()


def inference_step(model, inputs: dict, optimizer, settings: BenchmarkSettings) -> float:
    """A forward pass under torch.inference_mode(); returns the same scalar as a training
    step's loss."""
    with torch.inference_mode(), autocast_for(settings):
        return backbone_loss(model(**inputs))


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat; None where there is none. Steal is time
    the hypervisor gave this machine's CPUs to someone else: a sign of a disturbed timing."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (values[7] if len(values) > 7 else 0), sum(values[:8])


def steal_fraction(before, after) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def is_out_of_memory(error: BaseException) -> bool:
    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or "out of memory" in str(error).lower())


def record_error(cell: dict, error: BaseException, kind: str | None = None):
    """A cell's failure, kept in the results (the run goes on): its kind (`kind`, or out of
    memory / a length the model cannot take / an error), the first line of the message, and the
    traceback of a real error (call it in the `except` block)."""
    cell["error_kind"] = kind or ("out_of_memory" if is_out_of_memory(error)
                                  else "unsupported" if isinstance(error, UnsupportedLength)
                                  else "error")
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cell["error"] = f"{type(error).__name__}: {message[:400]}"
    if cell["error_kind"] == "error":
        cell["traceback"] = traceback.format_exc()


def measure(name: str, settings: BenchmarkSettings, length: int) -> dict:
    """One (model, length) cell: timings and peak memory, or the error that stopped it."""
    spec = resolve_spec(name)
    batch = batch_size_for(length, settings.tokens_per_step, settings.batch_size)
    cell = {"model": name, "length": length, "batch_size": batch, "tokens_per_step": batch * length,
            "seconds_per_step": None, "tokens_per_s": None, "peak_memory_mib": None,
            "step_seconds": [], "parameters": None, "weights": None, "error": None,
            "error_kind": None}
    model = optimizer = inputs = None
    try:
        torch.manual_seed(settings.seed)
        built = spec.build(settings, length)
        model = built.model.to(settings.device).train(not settings.inference)
        cell.update(weights=built.weights, parameters=sum(p.numel() for p in model.parameters()),
                    **built.notes)
        training = settings.optimizer_step and not settings.inference
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if training else None
        step = inference_step if settings.inference else training_step
        if settings.compile:
            model = torch.compile(model, mode=settings.compile)
        inputs = make_inputs(spec, settings, batch, length)
        # new tokens (fewer than batch x length with memory)
        cell["tokens_per_step"] = inputs["input_ids"].numel()
        if settings.device == "cuda" and settings.compile:  # see memory_measurement
            torch.cuda.reset_peak_memory_stats()
        for _ in range(settings.warmup_steps):
            step(model, inputs, optimizer, settings)
        synchronize(settings.device)
        if settings.device == "cuda" and not settings.compile:
            torch.cuda.reset_peak_memory_stats()
        ticks, cpu_seconds = cpu_ticks(), []
        for _ in range(settings.steps):
            started, cpu_started = time.perf_counter(), time.process_time()
            loss = step(model, inputs, optimizer, settings)
            synchronize(settings.device)
            cell["step_seconds"].append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
        cell["cpu_seconds_per_step"] = median(cpu_seconds)  # all threads of this process
        cell["cpu_steal_fraction"] = steal_fraction(ticks, cpu_ticks())
        if settings.device == "cuda":
            cell["peak_memory_mib"] = torch.cuda.max_memory_allocated() / MIB
            cell["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        else:  # one more step, sampled: the sampling thread stays out of the timed steps
            with PeakRSS() as memory:
                loss = step(model, inputs, optimizer, settings)
            cell["peak_memory_mib"] = memory.growth_mib
        loss = float(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss}")
        cell["loss"] = loss
        cell["seconds_per_step"] = median(cell["step_seconds"])
        cell["tokens_per_s"] = cell["tokens_per_step"] / cell["seconds_per_step"]
    except Exception as error:  # recorded; the run goes on with the next cell
        record_error(cell, error)
        cell["seconds_per_step"] = cell["tokens_per_s"] = cell["peak_memory_mib"] = None
    finally:
        del model, optimizer, inputs
        gc.collect()
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    return cell


# --------------------------------------------------------------------------- report


def ratio_table(cells: list[dict], baseline: str | None) -> dict[tuple[str, int], dict]:
    """(model, length) -> {"time": time per token / baseline's, "memory": peak / baseline's peak}
    at the same length, None where either cell has no number (failed, or a non-positive peak).
    Time per token, not per step: a model with memory processes fewer new tokens per step."""
    by_key = {(cell["model"], cell["length"]): cell for cell in cells}

    def ratio(numerator, denominator):
        if numerator is None or denominator is None or denominator <= 0:
            return None
        return numerator / denominator

    table = {}
    for (model, length), cell in by_key.items():
        base = by_key.get((baseline, length)) if baseline is not None else None
        base = base or {}
        table[(model, length)] = {
            "time": ratio(base.get("tokens_per_s"), cell.get("tokens_per_s")),
            "memory": ratio(cell.get("peak_memory_mib"), base.get("peak_memory_mib"))}
    return table


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def benchmark_table(cells: list[dict], baseline: str | None) -> str:
    """One line per cell: its numbers and ratios, or the reason it failed."""
    ratios = ratio_table(cells, baseline)
    base = baseline or "-"
    header = ["model", "length", "batch", "ms/step", "tokens/s", "peak MiB", f"time/{base}",
              f"mem/{base}"]
    fmt_ratio = lambda value: "n/a" if value is None else f"{value:.2f}x"  # noqa: E731
    lines = []
    for cell in cells:
        if cell["error"] is not None:  # a short line: its message spans the numeric columns
            lines.append([cell["model"], str(cell["length"]), str(cell["batch_size"]),
                          f"FAILED ({cell['error_kind']}): {shorten(cell['error'], 100)}"])
            continue
        ratio = ratios[(cell["model"], cell["length"])]
        lines.append([cell["model"], str(cell["length"]), str(cell["batch_size"]),
                      f"{cell['seconds_per_step'] * 1000:,.1f}", f"{cell['tokens_per_s']:,.0f}",
                      f"{cell['peak_memory_mib']:,.1f}", fmt_ratio(ratio["time"]),
                      fmt_ratio(ratio["memory"])])
    return format_table(header, lines)


def memory_measurement(settings: BenchmarkSettings) -> str:
    if settings.device == "cuda":
        # CUDA graphs allocate their memory pool while warming up; replays allocate nothing more.
        span = "the warm-up and timed steps" if settings.compile else "the timed steps"
        return (f"torch.cuda.max_memory_allocated over {span}, after reset_peak_memory_stats: "
                "weights, gradients, optimizer state and activations")
    return (f"{RSS_GROWTH} over one extra step after the timed ones, over the RSS just before it: "
            "activations, gradients and allocator overhead; weights and optimizer state exist "
            "before it and are not counted")


def notes(settings: BenchmarkSettings, cells: list[dict]) -> list[str]:
    step = "forward + backward" + (" + AdamW step" if settings.optimizer_step
                                   else " (no optimizer step)")
    if settings.inference:
        step = "inference: a forward pass under torch.inference_mode(), eval mode"
    if settings.compile:
        step += (f"; every model under torch.compile(mode={settings.compile!r}), compiled during "
                 "the warm-up steps")
    lines = [
        f"step = {step}; {LOSS_NOTE}",
        f"ms/step: median of {settings.steps} timed step(s) after {settings.warmup_steps} warm-up "
        "step(s)" + ("; torch.cuda.synchronize() around each" if settings.device == "cuda" else ""),
        "tokens/s = batch x length / step time; "
        + (f"batch = {settings.batch_size} (fixed)" if settings.batch_size is not None
           else f"batch = max(1, {settings.tokens_per_step} tokens per step // length)"),
        "peak MiB: " + memory_measurement(settings),
        DROPOUT_NOTE,
        f"size of every model: hidden {settings.hidden_size}, {settings.num_layers} layers, "
        f"{settings.num_heads} heads, intermediate {settings.intermediate_size}; "
        + ("fp32" if settings.dtype == "fp32" else "bf16 autocast over fp32 weights"),
        f"Longformers: attention_window {settings.window}; "
        + (f"the first {settings.global_tokens} token(s) of each row global"
           if settings.global_tokens else "no global attention tokens"),
    ]
    disturbed = [f"{c['model']} @ {c['length']} ({c['cpu_steal_fraction']:.0%})" for c in cells
                 if (c.get("cpu_steal_fraction") or 0) > STEAL_WARNING]
    if disturbed:
        lines.append("CPU steal time over " + f"{STEAL_WARNING:.0%} (the machine was shared; "
                     "timings suspect): " + ", ".join(disturbed))
    padded = [n for n in settings.lengths if n % settings.window]
    if padded and "hf-longformer" in settings.models:
        lines.append(f"hf-longformer pads each row to a multiple of the window ({settings.window}) "
                     f"at length(s) {', '.join(map(str, padded))}; the padding is part of its "
                     "step time")
    if settings.model_config:
        for name in settings.models:
            if name in longctx.ARCHITECTURES and name not in MODELS:
                taken = config_overrides_for(name, settings)
                lines.append(f"{name} config: {taken or 'none of'} "
                             + ("" if taken
                                else f"{settings.model_config} (not fields of its config)"))
    weights = {cell["model"]: cell["weights"] for cell in cells if cell.get("weights")}
    if "longctx-longformer" in weights:
        lines.append(f"longctx-longformer weights: {weights['longctx-longformer']}")
    if "hf-reformer" in weights:
        lines.append("hf-reformer: last hidden state is 2 x hidden wide (the reversible streams, "
                     f"concatenated); lengths must be multiples of {REFORMER_CHUNK_LENGTH}")
    if {"hf-t5", "hf-t5-encoder-decoder"} & set(weights):
        lines.append(T5_NOTE)
    if settings.baseline:
        lines.append(f"time/{settings.baseline}, mem/{settings.baseline}: this model's time per "
                     f"token (1 / tokens/s) and peak MiB over {settings.baseline}'s at the same "
                     "length, in this run only (< 1: faster / smaller)")
    if settings.device == "cpu":
        lines.append(f"{CPU_NOISE_NOTE}; {torch.get_num_threads()} threads")
        lines.append(allocator_note())
    return lines


def allocator_note(environ=os.environ) -> str:
    """CPU step times depend on the allocator: glibc's malloc hands large freed buffers back to
    the OS and page-faults them in again on the next step, which costs most to models with large
    temporaries (transformers' Longformer: about half its CPU step time, measured with the
    settings below). The note says which regime a run measured."""
    tuned = {name: environ[name] for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
             if name in environ}
    preloaded = environ.get("LD_PRELOAD", "")
    if tuned or "malloc" in preloaded:
        chosen = ", ".join(f"{k}={v}" for k, v in tuned.items()) or f"LD_PRELOAD={preloaded}"
        return f"allocator: {chosen} (large buffers kept between steps)"
    return ("allocator: glibc malloc defaults (large freed buffers return to the OS and are "
            "page-faulted in again each step; MALLOC_MMAP_THRESHOLD_=4294967296 "
            "MALLOC_TRIM_THRESHOLD_=68719476736 keep them)")


# What the plot shows against length, one panel each. Tokens per second, not seconds per step:
# the batch shrinks as the length grows (tokens_per_step // length), so a step's time would fall
# and rise with the batch, not with the model.
PLOT_PANELS = (("tokens_per_s", "training tokens per second"),
               ("peak_memory_mib", "peak memory (MiB)"))


def plot_paths(output: Path) -> list[Path]:
    """Where the plot of the benchmark JSON `output` goes: beside it, named after it (two runs in
    one folder keep their own)."""
    return [output.with_name(f"{output.stem}_vs_length.png")]


def plot_title(settings: dict, environment: dict) -> str:
    """What the plots of a run measured: the device and the model size (the JSON's sections)."""
    return (f"{environment.get('device_name', environment.get('device', '?'))}: "
            f"{settings['num_layers']}×{settings['hidden_size']}, {settings['dtype']}")


def plot_series(cells: list[dict], key: str) -> dict[str, list[tuple[int, float]]]:
    """model -> [(length, value)] of the cells with a positive `key`, models in run order."""
    series = {}
    for cell in cells:
        value = cell.get(key)
        series.setdefault(cell["model"], [])
        if value is not None and value > 0:
            series[cell["model"]].append((cell["length"], value))
    return series


def write_plots(cells: list[dict], output: Path, title: str) -> list[str] | str:
    """One figure, `plot_paths(output)`: tokens/s and peak memory against length, one line per
    model, log axes labelled in plain numbers (1K, 4K); a reason instead when matplotlib is not
    importable."""
    plt = pyplot()
    if plt is None:
        return MATPLOTLIB_MISSING
    figure, panels = plt.subplots(1, len(PLOT_PANELS), figsize=(11, 4.2))
    lengths = sorted({cell["length"] for cell in cells})
    for axes, (key, label) in zip(panels, PLOT_PANELS):
        for model, points in plot_series(cells, key).items():
            if points:
                axes.plot(*zip(*sorted(points)), marker="o", label=model)
        axes.set(xlabel="sequence length (tokens)", ylabel=label)
        plain_log_axis(axes, "x", lengths or None)
        decimal_log_axis(axes)
    handles, names = panels[0].get_legend_handles_labels()
    if handles:
        panels[0].legend(handles, names, fontsize="small")
    figure.suptitle(title)
    return [save(figure, path) for path in plot_paths(output)]


# --------------------------------------------------------------------------- the run


def run_benchmark(settings: BenchmarkSettings,
                  output: str | os.PathLike = "runs/benchmark/benchmark.json",
                  progress: bool = True) -> dict:
    """Every (model, length) cell; prints the table and notes, writes the JSON (and plots)."""
    from tqdm.auto import tqdm

    settings.models = select_models(settings.models)
    settings.lengths = sorted(set(settings.lengths))
    settings.check()
    started = time.perf_counter()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"longctx benchmark on {settings.device} ({device_name(settings.device)}, "
          f"{torch.get_num_threads()} threads): {', '.join(settings.models)} at lengths "
          f"{', '.join(map(str, settings.lengths))}; {DROPOUT_NOTE}", flush=True)
    cells = []
    bar = tqdm(total=len(settings.models) * len(settings.lengths), unit="cell",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for name in settings.models:
        out_of_memory_at = None
        for length in settings.lengths:
            bar.set_description(f"{name} @ {length}")
            if out_of_memory_at is not None:  # longer rows only need more
                batch = batch_size_for(length, settings.tokens_per_step, settings.batch_size)
                cell = {"model": name, "length": length, "batch_size": batch,
                        "tokens_per_step": batch * length, "seconds_per_step": None,
                        "tokens_per_s": None, "peak_memory_mib": None, "step_seconds": [],
                        "parameters": None, "weights": None, "error_kind": "out_of_memory",
                        "error": f"skipped: out of memory at length {out_of_memory_at}"}
            else:
                cell = measure(name, settings, length)
                if cell["error_kind"] == "out_of_memory" and (settings.batch_size is not None
                                                               or cell["batch_size"] == 1):
                    out_of_memory_at = length  # the same rows, only longer: they need more
            cells.append(cell)
            summary = (f"FAILED ({cell['error']})" if cell["error"] else
                       f"{cell['seconds_per_step'] * 1000:,.1f} ms/step, "
                       f"{cell['tokens_per_s']:,.0f} tokens/s, {cell['peak_memory_mib']:,.1f} MiB")
            bar.write(f"  {name} @ {length} (batch {cell['batch_size']}): {summary}",
                      file=sys.stdout)
            bar.update()
    bar.close()
    ratios = ratio_table(cells, settings.baseline)
    for cell in cells:
        ratio = ratios[(cell["model"], cell["length"])]
        cell["time_vs_baseline"], cell["memory_vs_baseline"] = ratio["time"], ratio["memory"]
    table, table_notes = benchmark_table(cells, settings.baseline), notes(settings, cells)
    settings_record, environment_record = dataclasses.asdict(settings), environment(settings.device)
    plots = write_plots(cells, output, plot_title(settings_record, environment_record))
    results = {
        "command": command_line(), "settings": settings_record, "environment": environment_record,
        "memory_measurement": memory_measurement(settings), "loss": LOSS_NOTE, "notes": table_notes,
        "plots": plots, "wall_seconds": time.perf_counter() - started, "results": cells,
    }
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print(table)
    for note in table_notes:
        print("  " + note)
    print(f"  {plots}" if isinstance(plots, str) else f"  plots: {', '.join(plots)}")
    print(f"results: {output} ({results['wall_seconds']:.0f} s)", flush=True)
    return results

