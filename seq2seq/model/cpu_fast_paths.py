"""CPU-only speed paths, kept out of the model's reading order. Each gives the same result as the plain PyTorch
call it replaces (up to float rounding) and is used only where it was measured faster (docs/results.md,
bench/bench_train.py and bench/bench_generate.py)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def dropout_add(x: Tensor, update: Tensor, dropout: nn.Dropout) -> Tensor:
    """x + dropout(update). Why: on CPU PyTorch's dropout draws with `bernoulli_` at half the speed of
    `rand_like` and makes two more passes; one multiply-add by a scaled mask does it in one."""
    p = dropout.p
    if not dropout.training or p == 0 or x.device.type != "cpu" or update.dtype != x.dtype:
        return x + dropout(update)
    keep = torch.rand_like(update).ge_(p).mul_(1 / (1 - p))  # 1/(1-p) with probability 1-p, else 0
    return torch.addcmul(x, update, keep)


def attention_kernel(q: Tensor) -> AbstractContextManager:
    """The SDPA kernel choice. Why: on a CPU without AMX the flash kernel is slower in bf16/fp16 than the
    matmul-based one (forward and backward); in fp32 and on GPUs SDPA's own choice is best."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


class DecodingProjection:
    """hidden @ weight.T for decoding. Why: without gradients MKL multiplies a few rows by a contiguous (D, V)
    copy of the weight about 3x faster than by the (V, D) weight itself; the copy is redone when the weight
    changes or moves."""

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.transposed: Tensor | None = None

    def __call__(self, hidden: Tensor, weight: Tensor) -> Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return torch.nn.functional.linear(hidden, weight)
        key = (weight.data_ptr(), weight._version)
        if self.key != key:
            self.transposed, self.key = weight.detach().t().contiguous(), key
        return hidden @ self.transposed
