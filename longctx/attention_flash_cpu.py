"""PyTorch's CPU FlashAttention kernel, called directly rather than through SDPA.

Two kernels are built from it: `attention_band_cpu` (sliding windows as several calls merged
exactly) and `attention_relative_blocks` (Transformer-XL, a hand-written backward). Both need the
log-sum-exp of each query's scores, which SDPA does not return and these ATen ops do. The ops are
private to ATen and may be missing from a build: the names are then None, and each caller takes
its other path (tests set them to None to run that path).
"""

import torch

# (q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None) -> (out, logsumexp)
# q, out: (batch, heads, queries, dim); k, v: (batch, heads, keys, dim); logsumexp: (batch, heads,
# queries); attn_mask: additive, broadcast to (batch, heads, queries, keys)
flash_forward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
# (grad_out, q, k, v, out, logsumexp, dropout_p, is_causal, *, attn_mask=None, scale=None)
#   -> (grad_q, grad_k, grad_v)
flash_backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward",
                         None)
