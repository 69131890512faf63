"""Cross-entropy of a linear layer's logits, computed in row chunks so that the (rows, vocabulary) logits are
never held whole.

At small d_model the pre-softmax projection and its softmax are the largest part of a training step: with
4,096 target tokens and a vocabulary of 8,192 the logits are 134 MB in fp32, and an unfused step allocates four
such tensors (logits, log-probabilities, the gradient of the loss and of the logits). Fresh allocations that large
come from the OS page by page, so on a CPU the step spends as long faulting and zeroing pages as multiplying.
Here each chunk of rows makes its logits, its losses and, when gradients are wanted, its gradients at once (the
softmax minus the smoothed one-hot target, times the weight), while the chunk is still in cache; the backward
pass only scales the gradients kept from the forward pass. The same idea as Liger Kernel's fused linear
cross-entropy (Hsu et al., 2024), written in plain PyTorch so it runs on every device.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

CHUNK_ROWS = 256  # 8 MB of fp32 logits at a vocabulary of 8,192; of 128-1024, the fastest in bench_train's step


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    label_smoothing: float = 0.0,
    reduction: Literal["mean", "sum"] = "mean",
    chunk_rows: int = CHUNK_ROWS,
    weights: Tensor | None = None,
) -> Tensor:
    """`F.cross_entropy(F.linear(hidden, weight).float(), targets, label_smoothing=..., reduction=...)` for
    hidden (n, D), weight (V, D) and targets (n,) of class indices, with the same value and gradients. Matrix
    products run in the autocast dtype when autocast is on, the softmax in fp32 (fp64 for fp64 inputs). Not twice
    differentiable. With `weights` (n,), row i's loss counts weights[i] times, and "mean" divides by their sum
    (as `F.cross_entropy` does with class weights); the weights get no gradient."""
    if hidden.dim() != 2 or weight.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy takes hidden (n, D), weight (V, D) and targets (n,); got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)} and {tuple(targets.shape)}")
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"weights must be shaped like targets {tuple(targets.shape)}, got {tuple(weights.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, label_smoothing, reduction, chunk_rows, weights)
    return _chunked(hidden, weight, targets, label_smoothing, reduction, chunk_rows, weights, with_grads=False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing, reduction, chunk_rows, weights):
        loss, grad_hidden, grad_weight = _chunked(hidden, weight, targets, label_smoothing, reduction, chunk_rows,
                                                  weights, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss, None, None, None, None, None


def _chunked(hidden: Tensor, weight: Tensor, targets: Tensor, label_smoothing: float, reduction: str,
             chunk_rows: int, weights: Tensor | None, with_grads: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    softmax_dtype = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    n, vocab = hidden.shape[0], weight.shape[0]
    if reduction == "sum":
        scale = 1.0
    elif weights is None:
        scale = 1.0 / n if n else float("nan")
    else:
        scale = 1.0 / float(weights.sum()) if n else float("nan")
    smooth = label_smoothing
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight, dtype=softmax_dtype) if with_grads else None
    total = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        w = weight.detach().to(dtype)
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows].detach().to(dtype)
            y = targets[start:start + chunk_rows]
            logits = (h @ w.t()).to(softmax_dtype)  # (c, V)
            rows = torch.arange(len(y), device=y.device)
            target_logit = logits[rows, y]
            mean_logit = logits.mean(1) if smooth else None
            peak = logits.amax(1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # in place: the logits are not needed again
            norm = probs.sum(1, keepdim=True)
            log_norm = (peak + norm.log()).squeeze(1)  # log-sum-exp of each row
            losses = log_norm - target_logit
            if smooth:
                losses = (1 - smooth) * losses + smooth * (log_norm - mean_logit)
            row_weights = None if weights is None else weights[start:start + chunk_rows].to(softmax_dtype)
            total += losses.sum() if row_weights is None else losses @ row_weights
            if not with_grads:
                continue
            grad_logits = probs.div_(norm)  # d loss / d logits = softmax - (1 - s) one_hot - s / V
            if smooth:
                grad_logits.sub_(smooth / vocab)
            grad_logits[rows, y] -= 1 - smooth
            if row_weights is not None:
                grad_logits.mul_(row_weights[:, None])
            grad_logits = grad_logits.to(dtype)
            grad_hidden[start:start + chunk_rows] = grad_logits @ w
            if dtype == softmax_dtype:
                grad_weight.addmm_(grad_logits.t(), h)
            else:  # accumulate the low-precision products in fp32
                grad_weight += grad_logits.t() @ h
    if with_grads:
        grad_hidden.mul_(scale)
        grad_weight = grad_weight.mul_(scale).to(weight.dtype)
    return total * scale, grad_hidden, grad_weight
