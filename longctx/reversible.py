"""Reversible residual layers (Gomez et al. 2017, "The Reversible Residual Network"), as Reformer
stacks them: two streams, Y1 = X1 + f(X2), Y2 = X2 + g(Y1). The inputs follow from the outputs,
X2 = Y2 - g(Y1), X1 = Y1 - f(X2), so the backward pass recomputes each layer's activations from
the stack's output instead of keeping them: activation memory is that of one layer, whatever
the depth.

`reversible_stack(x1, x2, blocks)` runs the stack under that backward. Each block gives f and g
(tensor -> tensor) and the parameters they use; f and g must compute the same function when
called again in the backward pass, so anything random they draw is replayed: `RandomReplay`
for dropout (the RNG state of the first call is restored for the second), and whatever else a
block must remember (e.g. LSH buckets) it keeps itself.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class ReversibleBlock:
    f: Callable[[torch.Tensor], torch.Tensor]  # the first residual branch, applied to X2
    g: Callable[[torch.Tensor], torch.Tensor]  # the second, applied to Y1
    f_parameters: list
    g_parameters: list


class RandomReplay:
    """The random number generator state at the first run of each named scope, restored (without
    disturbing the global state) when the scope runs again: dropout masks are drawn identically in
    the forward pass and in its recomputation. Disabled (a no-op) when nothing random is drawn."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = torch.device(device)
        self.states = {}

    @contextlib.contextmanager
    def scope(self, name: str):
        if not self.enabled:
            yield
            return
        if name not in self.states:
            self.states[name] = self._capture()
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._restore(self.states[name])
            yield

    def _capture(self):
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _restore(self, state):
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)


def reversible_stack(x1: torch.Tensor, x2: torch.Tensor, blocks: list[ReversibleBlock]):
    """(Y1, Y2) of the stack; its backward recomputes each block from the outputs (see module doc).
    Gradients reach the parameters through autograd (they are inputs of the function), so
    `torch.autograd.grad`, hooks and gradient scaling see them as usual."""
    parameters = [p for block in blocks for p in (*block.f_parameters, *block.g_parameters)]
    return _ReversibleStack.apply(x1, x2, blocks, *parameters)


class _ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, blocks, *parameters):
        # The recomputation must run under the forward's autocast (e.g. bf16 on CUDA), which the
        # backward pass does not inherit.
        device_type = x1.device.type
        ctx.autocast = dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                            dtype=torch.get_autocast_dtype(device_type))
        for block in blocks:
            x1 = x1 + block.f(x2)
            x2 = x2 + block.g(x1)
        ctx.blocks = blocks
        ctx.parameter_index = {id(p): i for i, p in enumerate(parameters)}
        ctx.parameter_count = len(parameters)
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, grad_y1, grad_y2):
        y1, y2 = ctx.saved_tensors
        grads = [None] * ctx.parameter_count
        with torch.autocast(**ctx.autocast):
            grad_x1, grad_x2 = _backward_blocks(ctx, y1, y2, grad_y1, grad_y2, grads)
        ctx.blocks = None  # free the closures (and the tensors they hold) once used
        return grad_x1, grad_x2, None, *grads


def _backward_blocks(ctx, y1, y2, grad_y1, grad_y2, grads):
    """Walks the blocks from the last: recovers each block's inputs, accumulates the parameter
    gradients into `grads`, returns the gradients of the stack's inputs."""
    for block in reversed(ctx.blocks):
        # g: recompute g(Y1), backpropagate dY2 through it; then X2 = Y2 - g(Y1).
        g_out, (grad_from_g, *g_grads) = _branch_gradients(block.g, y1, block.g_parameters, grad_y2)
        _accumulate(grads, ctx.parameter_index, block.g_parameters, g_grads)
        grad_y1 = grad_y1 + grad_from_g
        x2 = y2 - g_out
        # f: recompute f(X2), backpropagate dY1 (which Y2 = X2 + g(Y1) also fed) through it.
        f_out, (grad_from_f, *f_grads) = _branch_gradients(block.f, x2, block.f_parameters, grad_y1)
        _accumulate(grads, ctx.parameter_index, block.f_parameters, f_grads)
        y1, y2 = y1 - f_out, x2
        grad_y2 = grad_y2 + grad_from_f  # dX2; dX1 is dY1 (the identity path)
    return grad_y1, grad_y2


def _branch_gradients(branch, x, parameters, grad_out):
    """branch(x) recomputed with autograd, and the gradients of <branch(x), grad_out> with respect
    to x and to each parameter (zeros where unused). Returns (branch(x) detached, gradients)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        out = branch(x)
        trainable = [p for p in parameters if p.requires_grad]
        found = torch.autograd.grad(out, [x, *trainable], grad_out, allow_unused=True)
    by_parameter = iter(found[1:])
    grads = [next(by_parameter) if p.requires_grad else None for p in parameters]
    grad_x = found[0] if found[0] is not None else torch.zeros_like(x)
    return out.detach(), [grad_x, *grads]


def _accumulate(grads: list, index: dict, parameters, new_grads):
    for parameter, grad in zip(parameters, new_grads):
        if grad is None:
            continue
        i = index[id(parameter)]
        grads[i] = grad if grads[i] is None else grads[i] + grad
