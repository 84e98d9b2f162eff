"""Reformer decoding with a cache: one new query per row against the keys and values kept from
the earlier tokens, for both of Reformer's layer types. Pure tensor code (no config); the model
(`modeling_reformer.py`) decides which keys are visible and keeps the buffers.

`decode_attention` is the step of both kernels. LSH layers pass the length-normalised shared
keys (`length_normalised_keys`, as the full kernel does), one visibility mask per hash round (the
earlier keys in the query's bucket of that round) and the query's own column, which scores -1e5
(transformers' self rule: attended only when nothing else is visible); the rounds are combined
with weights softmax_r(logsumexp of the round's scores), as in `lsh_attention` (rounded
correctly where all rounds see only the query itself; see `decode_attention`). Local layers pass
keys divided by sqrt(head_dim), one "round" (the keys of the chunks the query looks back on) and
no self rule.

`ColumnBuffer` holds a cache tensor (batch, heads, capacity, width) written one column per row per
step at row-dependent columns (rows are right-aligned: row b's real tokens are columns 0 .. n_b -
1), grown by doubling and, for local layers, dropped from the front when no row looks back that
far any more.
"""

import torch

from .attention_lsh import _mask_values, lsh_hash

__all__ = ["decode_attention", "ColumnBuffer", "bucket_columns"]


def decode_attention(query, keys, values, visible, self_column=None):
    """query (batch, heads, 1, dim); keys, values (batch, heads, columns, dim); visible (batch,
    heads or 1, rounds, columns) bool: which keys each round shows the query; self_column (batch,
    1, 1, columns) bool or None: the query's own key, scored at the self mask value (-1e5 in
    float32) in every round. Hidden keys score the mask value (-1e9), as in the full kernels.
    Returns (batch, heads, 1, dim)."""
    mask_value, self_value = _mask_values(query.dtype)
    dots = query @ keys.transpose(-1, -2)  # (batch, heads, 1, columns)
    scores = dots.masked_fill(~visible, mask_value)  # (batch, heads, rounds, columns)
    if self_column is not None:
        scores = scores.masked_fill(self_column, self_value)
    if scores.shape[2] == 1:
        return torch.softmax(scores, dim=-1) @ values
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (batch, heads, rounds, 1)
    per_round = torch.exp(scores - lse) @ values  # (batch, heads, rounds, dim)
    # A softmax, not lsh_attention's exp(lse - logsumexp(lse)) (transformers' rounding): where
    # every round sees only the query itself (lse = -1e5, float32 ulp ~0.008) that rounding
    # scales the output by ~0.998; nothing here needs to reproduce it.
    weights = torch.softmax(lse, dim=2)  # (batch, heads, rounds, 1)
    return (per_round * weights).sum(dim=2, keepdim=True)


def bucket_columns(keys, num_buckets, rotations):
    """Per-round bucket ids of keys (batch, heads, columns, dim) -> (batch, heads, columns, rounds)
    with `lsh_hash` and fixed rotations (round offsets included: ids of different rounds never
    meet). The hash is an argmax of a linear map, so length-normalised keys hash as the raw
    vectors do."""
    batch, heads, columns, _ = keys.shape
    rounds = rotations.shape[2]
    ids = lsh_hash(keys, num_buckets, rounds, rotations=rotations)  # (batch, heads, rounds*columns)
    return ids.view(batch, heads, rounds, columns).transpose(2, 3)


class ColumnBuffer:
    """A cache tensor (batch, heads, capacity, width) whose column c holds token c - `first` of each
    (right-aligned) row. Columns before `first` were dropped; unwritten ones hold zeros (finite, so
    that a masked key times a zero weight stays zero)."""

    def __init__(self, data: torch.Tensor, first: int = 0):
        self.data = data
        self.first = first

    @classmethod
    def holding(cls, values: torch.Tensor, spare: int):
        """A buffer holding values (batch, heads, columns, width) with `spare` free columns."""
        batch, heads, columns, width = values.shape
        data = values.new_zeros(batch, heads, columns + spare, width)
        data[:, :, :columns] = values
        return cls(data)

    def upto(self, end: int) -> torch.Tensor:
        """Columns first .. end - 1: (batch, heads, end - first, width), a view."""
        return self.data[:, :, :end - self.first]

    def write(self, values, columns, last: int):
        """values (batch, heads, 1, width) into column columns[b] of row b; `last` = max(columns)
        (a Python int, so that growing needs no device sync)."""
        if last - self.first >= self.data.shape[2]:
            self._grow(last - self.first + 1)
        index = (columns - self.first).view(-1, 1, 1, 1).expand(values.shape)
        self.data.scatter_(2, index, values)

    def _grow(self, needed: int):
        bigger = self.data.new_zeros(*self.data.shape[:2], max(2 * needed, 16),
                                     self.data.shape[3])
        bigger[:, :, :self.data.shape[2]] = self.data
        self.data = bigger

    def drop_before(self, column: int):
        """Forget columns below `column` (no row will look at them again)."""
        if column > self.first:
            self.data = self.data[:, :, column - self.first:]
            self.first = column

    def reorder(self, rows: torch.Tensor):
        self.data = self.data.index_select(0, rows)

