"""The device-side non-finite check (cxrdet.models.nonfinite) on a small model: caught at its
step, gradients included, applied by the fused optimiser without the host waiting, read later."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from cxrdet.models.nonfinite import NonFiniteGuard, handles_found_inf, zero_momentum
from cxrdet.models.rcnn.syncs import count_waits


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.fc(x))


def _setup(fused: bool = True):
    torch.manual_seed(0)
    net = _Net().train()
    optimizer = torch.optim.SGD(
        net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=fused
    )
    zero_momentum(optimizer)
    return net, optimizer


def _step(guard, net, optimizer, step, x, grad_nan=False):
    """One training step as the module runs it."""
    optimizer.zero_grad(set_to_none=True)
    guard.before_forward(net)
    out = net(x)
    loss = out.pow(2).mean()
    guard.record(loss, {"loss_a": loss}, [f"img{step}"])
    loss.backward()
    if grad_nan:  # a finite loss whose gradient is not (e.g. an overflow in backward)
        net.fc.weight.grad[0, 0] = float("nan")
    guard.after_backward(step, net, optimizer, check_gradients=True)
    optimizer.step()
    guard.clear_optimizer(optimizer)


def _state(net, optimizer):
    params = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    return params, momentum


def test_a_nonfinite_gradient_with_a_finite_loss_is_never_applied_and_is_named():
    """Fails if only the loss is checked (today's check), if the flag does not reach the fused
    optimiser, or if BatchNorm's statistics keep the skipped step's update."""
    net, optimizer = _setup()
    guard = NonFiniteGuard("stop")
    x = torch.randn(8, 4)
    _step(guard, net, optimizer, 0, x)
    before = _state(net, optimizer)
    _step(guard, net, optimizer, 1, x * 3, grad_nan=True)
    after = _state(net, optimizer)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k  # weights and BN statistics
    assert all(torch.equal(a, b) for a, b in zip(before[1], after[1]))  # momentum
    _step(guard, net, optimizer, 2, x)  # a good step moves again
    assert not torch.equal(net.fc.weight, before[0]["fc.weight"])
    with pytest.raises(FloatingPointError, match=r"non-finite gradient \(the loss is finite\) "
                       r"at step 1 \(loss_a=.*images img1\)"):  # fmt: skip
        guard.review()
    guard.review()  # read once: nothing pending


def test_the_check_makes_no_host_wait_with_a_fused_optimiser():
    """The flag stays on the device (fails if it is read with .item()/bool() each step)."""
    net, optimizer = _setup()
    assert handles_found_inf(optimizer)
    guard = NonFiniteGuard("skip")
    x = torch.randn(8, 4)

    def step():
        _step(guard, net, optimizer, 0, x, grad_nan=True)

    assert count_waits(step)["waits"] == 0
    plain_net, plain = _setup(fused=False)
    assert not handles_found_inf(plain)  # the fallback reads the flag at once
    assert count_waits(lambda: _step(guard, plain_net, plain, 0, x, grad_nan=True))["waits"] >= 1


def test_a_skipped_first_step_leaves_the_momentum_at_zero_not_uninitialised():
    """torch's fused SGD makes its momentum buffers with empty_like at the first step; skipped
    there, they would hold garbage (fails without zero_momentum)."""
    net, optimizer = _setup()
    guard = NonFiniteGuard("skip")
    x = torch.randn(8, 4)
    _step(guard, net, optimizer, 0, x, grad_nan=True)
    assert all(torch.count_nonzero(optimizer.state[p]["momentum_buffer"]) == 0
               for p in net.parameters())  # fmt: skip
    fresh, fresh_opt = _setup()
    _step(guard, net, optimizer, 1, x)
    _step(NonFiniteGuard("skip"), fresh, fresh_opt, 0, x)
    for a, b in zip(net.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b)  # as if the skipped step had never happened


def test_skip_logs_each_bad_step_when_read_and_carries_on(caplog):
    net, optimizer = _setup()
    guard = NonFiniteGuard("skip")
    x = torch.randn(8, 4)
    for step in range(4):
        _step(guard, net, optimizer, step, x, grad_nan=step in (1, 3))
    with caplog.at_level(logging.WARNING, logger="cxrdet.models.nonfinite"):
        guard.review()
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2 and "at step 1" in skipped[0] and "at step 3" in skipped[1]
    assert all(m.endswith("batch skipped") for m in skipped)
