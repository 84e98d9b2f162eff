"""Language-modelling data and evaluation shared by the study and `scripts/run_lm.py`: text cut
into blocks, and a causal LM scored over a long text -- perplexity, bits per byte and per
character, and the loss by position in the block (how much a longer context helps).

This module is a user of the models; modeling files never import it.
"""

import math
import time

import torch
from torch.nn import functional as F
from transformers import Trainer, TrainerCallback


def lm_blocks(ids: list[int], block_size: int):
    """Non-overlapping `block_size` blocks (the remainder is dropped) with labels = inputs."""
    import datasets

    if block_size < 2:
        raise ValueError(f"block_size={block_size}: a block needs at least 2 tokens (one "
                         "predicted)")
    blocks = [ids[start:start + block_size]
              for start in range(0, len(ids) - block_size + 1, block_size)]
    return datasets.Dataset.from_dict({"input_ids": blocks,
                                       "attention_mask": [[1] * block_size] * len(blocks),
                                       "labels": blocks})


# --------------------------------------------------------------------------- training with memory


def trains_with_memory(model) -> bool:
    """A Transformer-XL causal LM with a memory: it trains on segments in stream order, carrying
    the memory from each batch to the next (Dai et al.; transformers' LMOrderedIterator)."""
    return getattr(model.config, "mem_len", 0) > 0 and bool(model.config.is_decoder)


def stream_segments(ids: list[int], batch_size: int, segment_length: int):
    """The text cut into `batch_size` contiguous streams, each into `segment_length` segments
    (remainders dropped), ordered so that row r of batch k is stream r's k-th segment: the memory
    batch k leaves in row r is the text just before row r of batch k + 1."""
    import datasets

    per_stream = len(ids) // batch_size
    count = per_stream // segment_length
    if segment_length < 2 or count == 0:
        raise ValueError(f"{len(ids)} training tokens cannot fill {batch_size} streams (the batch "
                         f"size) of at least one segment of {segment_length} tokens (>= 2); use "
                         "more text, a smaller --per_device_train_batch_size or a shorter "
                         "--max_seq_length")
    segments = [ids[row * per_stream + k * segment_length:
                    row * per_stream + (k + 1) * segment_length]
                for k in range(count) for row in range(batch_size)]
    return datasets.Dataset.from_dict({"input_ids": segments,
                                       "attention_mask": [[1] * segment_length] * len(segments),
                                       "labels": segments})


class SegmentMemoryTrainer(Trainer):
    """The stock Trainer with Transformer-XL's recurrence: the train set from `stream_segments`
    read in order (no shuffling), each training step given the memory (`mems`, no gradient) the
    previous one returned; the memory restarts empty at each epoch. Evaluation steps neither read
    nor change it. One process: under several, the batches of a stream would go to different
    processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise ValueError(f"SegmentMemoryTrainer (Transformer-XL training with memory, mem_len="
                             f"{self.model.config.mem_len}) runs in one process; this run has "
                             f"world_size={self.args.world_size}. Train in one process, or with "
                             "mem_len=0.")
        self.memory = None
        self.add_callback(_ForgetMemoryEachEpoch(self))

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(
            train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, dict(inputs, mems=self.memory), True,
                                             num_items_in_batch)
        self.memory = outputs.mems
        return (loss, outputs) if return_outputs else loss


class _ForgetMemoryEachEpoch(TrainerCallback):
    def __init__(self, trainer: SegmentMemoryTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.memory = None


def lm_scores(nll_sum_nats: float, num_predicted: int) -> dict:
    """Perplexity and bits per token (= per byte for the byte tokenizer) from the summed negative
    log-likelihood."""
    mean = nll_sum_nats / num_predicted
    return {"loss": mean, "perplexity": math.exp(mean), "bits_per_byte": mean / math.log(2),
            "predicted_bytes": num_predicted}


def position_buckets(block_size: int) -> list[tuple[int, int]]:
    """[start, end) position ranges growing 4x: (1, 128), (128, 512), (512, 2048), ... up to the
    block size. Position 0 is never predicted."""
    edges, edge = [1], 128
    while edge < block_size:
        edges.append(edge)
        edge *= 4
    edges.append(block_size)
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def evaluate_lm(model, ids: list[int], block_size: int, batch_size: int,
                num_characters: int | None = None) -> dict:
    """Scores every token of `ids` but the first of each block: non-overlapping blocks, each
    evaluated on its own (no state carried between blocks), the last one right-padded.

    Returns `lm_scores`, plus "bits_per_character" when `num_characters` (of the text `ids`
    encode) is given, and "by_position": the loss and perplexity of the tokens at each range of
    positions in their block (`position_buckets`)."""
    model.eval()
    device = next(model.parameters()).device
    blocks = [block for block in (ids[s:s + block_size] for s in range(0, len(ids), block_size))
              if len(block) > 1]
    nll_by_position = torch.zeros(block_size, dtype=torch.float64)
    count_by_position = torch.zeros(block_size, dtype=torch.long)
    for first in range(0, len(blocks), batch_size):
        nll, counted = _block_losses(model, blocks[first:first + batch_size], block_size, device)
        nll_by_position += nll
        count_by_position += counted
    total_nll, total = float(nll_by_position.sum()), int(count_by_position.sum())
    if total == 0:
        raise ValueError(f"nothing to score: the text has {len(ids)} token(s); it needs at least 2")
    scores = lm_scores(total_nll, total)
    if num_characters:
        scores["bits_per_character"] = total_nll / math.log(2) / (num_characters * total / len(ids))
    scores["by_position"] = [_bucket(nll_by_position, count_by_position, start, end)
                             for start, end in position_buckets(block_size)]
    return scores


def _block_losses(model, batch: list[list[int]], block_size: int, device):
    """Summed NLL and token counts per target position (1..block_size-1) for one batch."""
    input_ids = torch.zeros(len(batch), block_size, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, block in enumerate(batch):
        input_ids[row, :len(block)] = torch.tensor(block)
        mask[row, :len(block)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask[:, 1:]
    nll = torch.zeros(block_size, dtype=torch.float64)
    nll[1:] = losses.double().sum(0).cpu()
    counted = torch.zeros(block_size, dtype=torch.long)
    counted[1:] = mask[:, 1:].sum(0).cpu()
    return nll, counted


def _bucket(nll, count, start: int, end: int) -> dict:
    tokens = int(count[start:end].sum())
    loss = float(nll[start:end].sum()) / tokens if tokens else None
    return {"positions": [start, end], "tokens": tokens, "loss": loss,
            "perplexity": math.exp(loss) if loss is not None else None}


# --------------------------------------------------------------------------- long documents


@torch.no_grad()
def evaluate_with_memory(model, ids: list[int], segment_length: int) -> dict:
    """Transformer-XL's evaluation: consecutive segments of `segment_length` tokens, each model
    call carrying the memory (`mems`) the previous one returned. Scores every token but the
    first of each segment (the same tokens as `evaluate_fixed_context` with `segment_starts`),
    with "by_position" as `evaluate_lm`'s."""
    model.eval()
    device = next(model.parameters()).device
    memory = None
    # summed NLL and counts by target position in the segment: with a memory, the first
    # positions have context too (what `by_position` shows against the blocks scored alone)
    nll_by_position = torch.zeros(segment_length, dtype=torch.float64)
    count_by_position = torch.zeros(segment_length, dtype=torch.long)
    started = time.perf_counter()
    for start in range(0, len(ids) - 1, segment_length):
        segment = torch.tensor([ids[start:start + segment_length]], device=device)
        if segment.shape[1] < 2:
            break
        output = model(input_ids=segment, labels=segment, mems=memory)
        memory = output.mems
        predicted = segment.shape[1] - 1
        nll_by_position[1:1 + predicted] += output.losses.double().reshape(-1).cpu()
        count_by_position[1:1 + predicted] += 1
    scores = _timed_scores(float(nll_by_position.sum()), int(count_by_position.sum()),
                           time.perf_counter() - started)
    scores["by_position"] = [_bucket(nll_by_position, count_by_position, start, end)
                             for start, end in position_buckets(segment_length)]
    return scores


@torch.no_grad()
def evaluate_fixed_context(model, ids: list[int], context_length: int, segment_length: int) -> dict:
    """The vanilla Transformer's evaluation (Al-Rfou et al., as Dai et al. compare): every scored
    token is predicted from a fresh forward over the `context_length` tokens before it -- one
    model call per token. Scores the tokens `evaluate_with_memory` scores."""
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    started = time.perf_counter()
    for position in range(1, len(ids)):
        if position % segment_length == 0:  # a segment's first token: not scored there either
            continue
        window = torch.tensor([ids[max(0, position - context_length):position + 1]], device=device)
        logits = model(input_ids=window[:, :-1]).logits[0, -1].float()
        nll += float(F.cross_entropy(logits, window[0, -1], reduction="sum"))
        count += 1
    return _timed_scores(nll, count, time.perf_counter() - started)


def memory_versus_recompute(model, ids: list[int], segment_length: int,
                            context_length: int) -> dict:
    """Both evaluations on the same tokens: their perplexities and how many times slower per
    token the fixed-context recomputation is."""
    with_memory = evaluate_with_memory(model, ids, segment_length)
    recomputed = evaluate_fixed_context(model, ids, context_length, segment_length)
    return {"with_memory": with_memory, "fixed_context": recomputed,
            "slowdown": recomputed["seconds_per_token"] / with_memory["seconds_per_token"],
            "segment_length": segment_length, "context_length": context_length}


def _timed_scores(nll: float, count: int, seconds: float) -> dict:
    if count == 0:
        raise ValueError("nothing to score: the text needs at least 2 tokens per segment")
    return {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens": count,
            "seconds": seconds, "seconds_per_token": seconds / count}
