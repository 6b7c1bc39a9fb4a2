"""GRPO advantages, the accuracy filter, the clipped loss and k3 KL against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from srpo_mcore.rl.advantages import accuracy_filter, group_advantages
from srpo_mcore.rl.loss import k3_kl, policy_loss


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = group_advantages(r, eps=0.0 + 1e-12)
    # group 0: mean 0.5, population std 0.5 -> +-1; group 1: all equal -> 0
    assert adv[0].tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(r, std="none")[0].tolist() == [0.5, -0.5, -0.5, 0.5]
    adv_eps = group_advantages(torch.tensor([[1.0, 0.0]]), eps=0.5)  # std 0.5 -> (0.5) / (1.0)
    assert adv_eps.tolist() == [[0.5, -0.5]]


def test_accuracy_filter_bounds_inclusive() -> None:
    correct = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0], [0] * 10, [1] + [0] * 9, [1] * 10])
    assert accuracy_filter(correct, 0.1, 0.9).tolist() == [True, False, True, False]


def test_clipped_loss_by_hand() -> None:
    # one sequence, two tokens; advantage +1. ratios: e^0.5 = 1.6487 (clipped to 1.2), e^-0.1 = 0.9048
    lp = torch.tensor([[0.5, -0.1]], requires_grad=True)
    old = torch.zeros(1, 2)
    loss, m = policy_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 2))
    expected = -(1.2 + math.exp(-0.1)) / 2
    assert loss.item() == pytest.approx(expected)
    assert m["clip_fraction"] == 0.5
    loss.backward()
    assert lp.grad.tolist()[0] == pytest.approx([0.0, -math.exp(-0.1) / 2])  # clipped token has no gradient
    # negative advantage: min picks the clipped side when the ratio is below 1 - clip
    lp2 = torch.tensor([[-0.5]])
    loss2, m2 = policy_loss(lp2, torch.zeros(1, 1), torch.tensor([-2.0]), torch.ones(1, 1))
    assert loss2.item() == pytest.approx(-(-2.0 * 0.8))  # max(r*A, 0.8*A) with A<0 -> 0.8*A = -1.6
    assert m2["clip_fraction"] == 1.0


def test_aggregation_and_mask() -> None:
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, 4.0])
    tok, _ = policy_loss(lp, lp, adv, mask, aggregation="token_mean")
    seq, _ = policy_loss(lp, lp, adv, mask, aggregation="seq_mean")
    assert tok.item() == pytest.approx(-(3 * 1.0 + 4.0) / 4)
    assert seq.item() == pytest.approx(-(1.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="token_mean or seq_mean"):
        policy_loss(lp, lp, adv, mask, aggregation="sum")


def test_k3_kl_by_hand_and_in_loss() -> None:
    lp, ref = torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]])
    assert k3_kl(lp, ref).tolist()[0] == pytest.approx([math.exp(-1) + 1 - 1, 0.0])
    loss0, _ = policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 2))
    loss1, m = policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 2), kl_coef=0.5, ref_logprobs_BT=ref)
    assert loss1.item() - loss0.item() == pytest.approx(0.5 * math.exp(-1) / 2)
    assert m["kl_ref"] == pytest.approx(math.exp(-1) / 2)
    with pytest.raises(ValueError, match="needs reference-model logprobs"):
        policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 2), kl_coef=0.1)
