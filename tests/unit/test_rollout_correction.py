"""Rollout correction, the new GRPO knobs and the released recipe, against hand-computed values.

- every ``grpo.rollout_correction`` mode on a small batch whose ratios are written out by hand
  (truncation, mask bounds, sequence ratios as geometric mean and product, padding);
- the k3 mismatch estimate, the dual-clip ratio cap, the weighted loss;
- ``grpo.std`` (population / unbiased / none) by hand;
- ``examples/grpo_7b_official.yaml``'s advantage and loss on a fixed batch equal a line-by-line
  transcription of the released code's formulas;
- the config validator refuses the combinations whose weights would not be an importance ratio;
- the simulated rollout precision rounds exactly what it says.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from srpo_mcore.config import ConfigError, RunConfig, load_config
from srpo_mcore.rl.advantages import group_advantages
from srpo_mcore.rl.loss import policy_loss
from srpo_mcore.rl.rollout_correction import (
    correction_weights,
    mismatch_k3,
    sequence_log_ratio,
    sequence_sums,
)
from srpo_mcore.rollout.simulated_precision import fake_quant_fp4, simulate_precision

ROOT = Path(__file__).resolve().parents[2]

# Two sequences: ratios (pi_trainer / pi_rollout) 0.4, 1.5, 3.0 | 2.0, 8.0 (third token padding).
RATIOS = torch.tensor([[0.4, 1.5, 3.0], [2.0, 8.0, 1.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LOG_R = torch.log(RATIOS) * MASK


def _weights(mode: str, **kw) -> tuple[list, list]:
    seq = None
    if mode.startswith("seq_"):
        seq = sequence_log_ratio(*sequence_sums(LOG_R, MASK), kw.pop("how", "geometric_mean"))
    w, changed = correction_weights(LOG_R, MASK, mode, seq_log_ratio_B=seq, **kw)
    return [[round(v, 9) for v in row] for row in w.tolist()], changed.tolist()


def test_tis_truncates_each_token() -> None:
    w, changed = _weights("tis", cap=2.0)
    assert w == [[0.4, 1.5, 2.0], [2.0, 2.0, 0.0]]  # ratio 2.0 itself is not truncated; padding weighs 0
    assert changed == [[False, False, True], [False, True, False]]


def test_mask_bounds_default_and_explicit() -> None:
    w, changed = _weights("mask", cap=2.0)  # band [0.5, 2]
    assert w == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert changed == [[True, False, True], [False, True, False]]
    w, _ = _weights("mask", cap=4.0, low=0.3)  # band [0.3, 4]
    assert w == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_sequence_modes_geometric_mean_and_product() -> None:
    # sequence 0: geometric mean (0.4 * 1.5 * 3)^(1/3) = 1.8^(1/3) = 1.21644; product 1.8
    # sequence 1: geometric mean sqrt(16) = 4; product 16
    g0 = 1.8 ** (1 / 3)
    w, changed = _weights("seq_tis", cap=2.0)
    assert w == [[round(g0, 9)] * 3, [2.0, 2.0, 0.0]]
    assert changed == [[False] * 3, [True, True, False]]
    w, _ = _weights("seq_tis", cap=3.0, how="product")
    assert w == [[1.8] * 3, [3.0, 3.0, 0.0]]
    w, changed = _weights("seq_mask", cap=2.0)
    assert w == [[1.0] * 3, [0.0, 0.0, 0.0]]
    assert changed == [[False] * 3, [True, True, False]]
    with pytest.raises(ValueError, match="needs the sequences' log ratios"):
        correction_weights(LOG_R, MASK, "seq_tis", cap=2.0)
    with pytest.raises(ValueError, match="geometric_mean or product"):
        sequence_log_ratio(torch.zeros(1), torch.ones(1), "mean")


def test_none_is_identity_and_unknown_mode_refused() -> None:
    w, changed = _weights("none", cap=2.0)
    assert w == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]] and not any(any(r) for r in changed)
    with pytest.raises(ValueError, match="must be one of none, tis"):
        correction_weights(LOG_R, MASK, "clip", cap=2.0)


def test_mismatch_k3_by_hand() -> None:
    trainer, rollout = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    # k3 of KL(rollout || trainer) with r = pi_trainer / pi_rollout = e^0.5: r - 1 - log r
    assert mismatch_k3(trainer, rollout).tolist()[0] == pytest.approx([math.exp(0.5) - 1 - 0.5, 0.0])


def test_weighted_loss_and_ratio_cap_by_hand() -> None:
    # token 0: ratio 1, A=+1, weight 0.5 -> -0.5; token 1: ratio e^2 = 7.39, A=-1
    lp = torch.tensor([[0.0, 2.0]], requires_grad=True)
    old = torch.zeros(1, 2)
    w = torch.tensor([[0.5, 1.0]])
    adv = torch.tensor([1.0])
    loss, _ = policy_loss(lp, old, adv, torch.ones(1, 2), is_weight_BT=w)
    assert loss.item() == pytest.approx((-0.5 - 1.2) / 2)  # positive A: clipped at 1.2
    neg = torch.tensor([-1.0])
    uncapped, _ = policy_loss(lp, old, neg, torch.ones(1, 2))
    assert uncapped.item() == pytest.approx((1.0 + math.exp(2.0)) / 2)  # -min(r*A, 1.2*A) = r for A=-1
    capped, _ = policy_loss(lp, old, neg, torch.ones(1, 2), ratio_cap=3.0)
    assert capped.item() == pytest.approx((1.0 + 3.0) / 2)
    capped.backward()
    assert lp.grad.tolist()[0] == pytest.approx([0.5, 0.0])  # no gradient through a capped ratio


def test_std_modes_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert group_advantages(r, std="population", eps=1e-12).tolist()[0] == pytest.approx([1, -1, -1, 1])
    s = math.sqrt(1 / 3)  # sum of squares 4 * 0.25 = 1, over N - 1 = 3
    assert group_advantages(r, std="unbiased", eps=1e-12).tolist()[0] == pytest.approx(
        [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]
    )
    assert group_advantages(r, std="none").tolist()[0] == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages(torch.tensor([[2.0] * 4]), std="unbiased", eps=1e-9).tolist()[0] == [0.0] * 4
    with pytest.raises(ValueError, match=r"grpo\.std"):
        group_advantages(r, std="sample")


def _released_update(rewards_GN, logp, old_logp, action_mask):
    """The released code's formulas, transcribed (group_norm advantages, dual-clip PolicyLoss)."""
    mean = rewards_GN.mean(dim=-1, keepdim=True)
    std = rewards_GN.std(dim=-1, keepdim=True)
    advantages = ((rewards_GN - mean) / (std + 1e-9)).flatten()
    ratio = (logp - old_logp).exp()
    ratio = ratio.clamp(max=3)
    adv = advantages[:, None]
    surr1 = ratio * adv
    surr2 = ratio.clamp(1 - 0.2, 1 + 0.2) * adv
    loss = -torch.min(surr1, surr2)
    loss = ((loss * action_mask).sum(dim=-1) / action_mask.sum(dim=-1)).mean()
    return advantages, loss


def test_official_recipe_equals_released_formulas() -> None:
    cfg = load_config(ROOT / "examples/grpo_7b_official.yaml")
    cfg.validate()
    g = cfg.grpo
    gen = torch.Generator().manual_seed(0)
    rewards = torch.tensor([[1.75, 0.5, 0.0, 1.5, 0.5, 0.0, 1.0, 0.25], [0.0, 1.5, 1.5, 0.5, 0.0, 0.0, 1.0, 0.5]])
    B, T = 16, 9
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -torch.rand(B, T, generator=gen) * 3
    logp = old + torch.randn(B, T, generator=gen) * 0.8  # ratios from ~0.1 to ~10: clip and cap both bite
    adv_ref, loss_ref = _released_update(rewards, logp, old, mask)
    adv = group_advantages(rewards.double(), std=g.std, eps=g.eps).flatten().float()
    assert torch.allclose(adv, adv_ref, atol=1e-6), (adv, adv_ref)
    loss, _ = policy_loss(
        logp, old, adv, mask, clip_low=g.clip_low, clip_high=g.clip_high, aggregation=g.aggregation,
        ratio_cap=g.ratio_cap, kl_coef=g.kl_coef,
    )  # fmt: skip
    assert loss.item() == pytest.approx(loss_ref.item(), abs=1e-6)
    r = torch.exp(logp - old)
    assert bool(((r > 3) & (adv[:, None] < 0) & (mask > 0)).any()), "the batch must exercise the ratio cap"
    default, _ = policy_loss(logp, old, adv, mask)  # our defaults (token mean, no cap) differ
    assert abs(default.item() - loss_ref.item()) > 1e-3


def _validate(**sections) -> None:
    cfg = RunConfig()
    for section, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    cfg.validate()


def test_config_refuses_invalid_correction_combinations() -> None:
    _validate(grpo={"rollout_correction": "tis"})  # T=1, raw logprobs, top_p=1: valid
    _validate(grpo={"rollout_correction": "tis"}, rollout={"temperature": 0.8, "logprobs_mode": "processed_logprobs"})
    cases = [
        ({"rollout": {"temperature": 0.8}}, "set rollout.logprobs_mode=processed_logprobs"),
        ({"rollout": {"top_p": 0.9}}, "rollout.top_p=0.9 samples from a truncated distribution"),
        ({"rollout": {"temperature": 0.0}}, "greedy rollout"),
        ({"grpo": {"old_logprobs": "rollout"}}, "needs grpo.old_logprobs=trainer"),
        ({"grpo": {"correction_cap": 1.0}}, "grpo.correction_cap must be > 1"),
        ({"grpo": {"correction_low": 1.5}}, "grpo.correction_low must be 0"),
    ]
    for sections, message in cases:
        grpo = {"rollout_correction": "mask", **sections.get("grpo", {})}
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            _validate(grpo=grpo, rollout=sections.get("rollout", {}))
    with pytest.raises(ConfigError, match=r"grpo\.ratio_cap \(1\.1\) must be 0 \(off\) or above 1 \+ grpo\.clip_high"):
        _validate(grpo={"ratio_cap": 1.1})
    with pytest.raises(ConfigError, match=r"rollout\.check .* cannot pass"):
        _validate(rollout={"simulate_mismatch": "fp4", "check": True})
    with pytest.raises(ConfigError, match=r"rollout\.precision=fp8 serves quantised weights; rollout\.check"):
        _validate(rollout={"precision": "fp8", "check": True})
    with pytest.raises(ConfigError, match=r"both change the served weights"):
        _validate(rollout={"precision": "fp8", "simulate_mismatch": "bf16"})


def test_simulated_precision_rounds_what_it_says() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=gen)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight",
             "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "visual.blocks.0.mlp.fc1.weight"]  # fmt: skip
    fp4 = dict(simulate_precision(((n, w) for n in names), "fp4"))
    expected = fake_quant_fp4(w)
    assert torch.equal(fp4[names[0]], expected) and torch.equal(fp4[names[1]], expected)
    assert not torch.equal(expected, w) and fp4[names[0]].dtype == torch.float32
    for n in names[2:]:
        assert fp4[n] is w, f"{n} must stay as the trainer has it in fp4 mode"
    bf16 = dict(simulate_precision(((n, w) for n in names), "bf16"))
    for n in names:
        assert torch.equal(bf16[n], w.to(torch.bfloat16).float())
    ids = torch.arange(4)
    assert dict(simulate_precision([("x", ids)], "bf16"))["x"] is ids
    assert dict(simulate_precision([("a", w)], "none"))["a"] is w
    with pytest.raises(ValueError, match=r"rollout\.simulate_mismatch"):
        list(simulate_precision([("a", w)], "fp8"))  # FP8 is rollout.precision (ModelOpt), not a simulation


def test_fp4_blocks_by_hand() -> None:
    # one row, two blocks of 16: block 0 has amax 6 (scale 1), block 1 amax 12 (scale 2)
    b0 = [6.0, 3.0, 1.2, -0.7, 0.2, 2.6, -4.9, 0.0] + [0.0] * 8
    b1 = [12.0, 1.1, -2.0, 7.2] + [0.0] * 12
    q = fake_quant_fp4(torch.tensor([b0 + b1]))
    assert q[0, :8].tolist() == [6.0, 3.0, 1.0, -0.5, 0.0, 3.0, -4.0, 0.0]
    assert q[0, 16:20].tolist() == [12.0, 1.0, -2.0, 8.0]  # 1.1/2 = 0.55 -> 0.5; 7.2/2 = 3.6 -> 4
    with pytest.raises(ValueError, match="divisible by 16"):
        fake_quant_fp4(torch.ones(2, 20))
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    out = dict(simulate_precision([("model.layers.1.mlp.up_proj.weight", w), ("lm_head.weight", w)], "fp4"))
    assert torch.equal(out["model.layers.1.mlp.up_proj.weight"], fake_quant_fp4(w)) and out["lm_head.weight"] is w
