"""The check every kernel test runs: a fast kernel against its reference, outputs and gradients."""

import torch


def assert_outputs_and_gradients_match(fast, slow, inputs, tolerance: float, grad_tolerance: float):
    """`fast` and `slow` are outputs computed from the same `inputs` (tensors requiring grad)."""
    torch.testing.assert_close(fast, slow, rtol=tolerance, atol=tolerance)
    weight = torch.randn_like(fast)  # a random upstream gradient, so every output element counts
    fast_grads = torch.autograd.grad((fast * weight).sum(), inputs)
    slow_grads = torch.autograd.grad((slow * weight).sum(), inputs)
    for g_fast, g_slow in zip(fast_grads, slow_grads):
        torch.testing.assert_close(g_fast, g_slow, rtol=grad_tolerance, atol=grad_tolerance)
