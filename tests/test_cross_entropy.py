import pytest
import torch
import torch.nn.functional as F

from seq2seq.cross_entropy import linear_cross_entropy


def reference(hidden, weight, targets, label_smoothing, reduction):
    logits = F.linear(hidden, weight)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing, reduction=reduction)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_and_gradients_equal_unfused(label_smoothing, reduction):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)  # 37 rows: chunks of 8 leave a remainder
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    grad = torch.tensor(1.7, dtype=torch.float64)  # the loss is scaled downstream (gradient accumulation)
    expected = reference(hidden, weight, targets, label_smoothing, reduction)
    expected_grads = torch.autograd.grad(expected, (hidden, weight), grad)
    fused = linear_cross_entropy(hidden, weight, targets, label_smoothing, reduction, chunk_rows=8)
    fused_grads = torch.autograd.grad(fused, (hidden, weight), grad)
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_row_weights_equal_weighted_unfused(label_smoothing, reduction):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    row_weights = torch.rand(37, dtype=torch.float64) * 3
    losses = reference(hidden, weight, targets, label_smoothing, "none")
    expected = (losses * row_weights).sum() / (row_weights.sum() if reduction == "mean" else 1)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    fused = linear_cross_entropy(hidden, weight, targets, label_smoothing, reduction, chunk_rows=8,
                                 weights=row_weights)
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, label_smoothing, reduction,
                                                        chunk_rows=8, weights=row_weights), expected.detach())
    with pytest.raises(ValueError, match="weights must be shaped like targets"):
        linear_cross_entropy(hidden, weight, targets, weights=row_weights[:5])


def test_gradient_only_where_required_and_no_graph_without_grad():
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 8), torch.randn(12, 8, requires_grad=True)
    targets = torch.randint(0, 12, (10,))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=4)
    loss.backward()
    expected_weight_grad = torch.autograd.grad(reference(hidden, weight, targets, 0.0, "mean"), weight)[0]
    torch.testing.assert_close(weight.grad, expected_weight_grad)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets, chunk_rows=4)
    assert value.grad_fn is None
    torch.testing.assert_close(value, reference(hidden, weight, targets, 0.0, "mean"))


def test_bf16_autocast_close_to_unfused():
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(100, 32, requires_grad=True)
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(hidden, weight, targets, 0.1, "mean")
        fused = linear_cross_entropy(hidden, weight, targets, 0.1, chunk_rows=16)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    assert fused.dtype == torch.float32 and fused_grads[1].dtype == torch.float32
    torch.testing.assert_close(fused, expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-3)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"hidden \(n, D\), weight \(V, D\) and targets \(n,\)"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5, dtype=torch.long))
