"""Group advantages and the GRPO loss against values computed by hand."""

import math

import pytest
import torch

from medr1.rl.advantages import group_advantages, zero_variance_fraction
from medr1.rl.loss import grpo_loss, masked_mean

EPS = 1e-4


# --- advantages -----------------------------------------------------------------------------


def test_group_advantages_two_groups_of_two():
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2)
    # each group [1, 0]: mean 0.5, unbiased std sqrt(0.5)
    a = 0.5 / (math.sqrt(0.5) + EPS)
    assert advantages.tolist() == pytest.approx([a, -a, -a, a], rel=1e-6)


def test_group_advantages_one_group_of_four():
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    assert advantages.tolist() == pytest.approx([a, -a, -a, a], rel=1e-6)


def test_scales_group_batch_none():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # groups [1, 0] and [1, 1]
    group = group_advantages(rewards, 2, scale="group")
    batch = group_advantages(rewards, 2, scale="batch")
    none = group_advantages(rewards, 2, scale="none")
    a_group = 0.5 / (math.sqrt(0.5) + EPS)
    a_batch = 0.5 / (0.5 + EPS)  # batch [1, 0, 1, 1]: mean 0.75, unbiased variance 0.75 / 3 -> std 0.5
    assert group.tolist() == pytest.approx([a_group, -a_group, 0.0, 0.0], rel=1e-6)
    assert batch.tolist() == pytest.approx([a_batch, -a_batch, 0.0, 0.0], rel=1e-6)
    assert none.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_zero_variance_groups_get_exactly_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    for scale in ("group", "batch", "none"):
        advantages = group_advantages(rewards, group_size=3, scale=scale)
        assert torch.isfinite(advantages).all()
        assert advantages[:6].tolist() == [0.0] * 6
        assert advantages[6:].abs().sum() > 0
    assert zero_variance_fraction(rewards, 3) == pytest.approx(2 / 3)


def test_constant_group_with_inexact_float_mean_is_still_zero():
    # in float32 the mean of eight 0.3s is not exactly 0.3; TRL's (r - mean) / 1e-4 would be ~3e-4
    rewards = torch.tensor([0.3] * 8 + [0.0] * 7 + [1.0])
    assert group_advantages(rewards, group_size=8)[:8].tolist() == [0.0] * 8


def test_all_groups_constant_and_group_of_one_give_zero_not_nan():
    assert group_advantages(torch.ones(4), 2).tolist() == [0.0] * 4
    assert group_advantages(torch.tensor([0.0, 1.0, 2.0]), 1).tolist() == [0.0] * 3
    assert group_advantages(torch.tensor([3.0]), 1, scale="batch").tolist() == [0.0]
    assert zero_variance_fraction(torch.ones(4), 2) == 1.0
    assert zero_variance_fraction(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2) == 0.5


def test_advantage_errors():
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="global")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


# --- loss: one update per rollout ------------------------------------------------------------


def test_single_iteration_gradient_is_plain_policy_gradient():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages = torch.tensor([1.0, -2.0])
    out = grpo_loss(logprobs, logprobs.detach(), None, advantages, mask, beta=0.0)
    # per-token loss -A_i; sequence means -1 and 2; mean over sequences 0.5
    assert out.loss.item() == pytest.approx(0.5)
    out.loss.backward()
    # d loss / d logp[i, t] = -A_i / (len_i * N): row 0 -1 / (3 * 2), row 1 2 / (2 * 2), padding 0
    expected = torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [0.5, 0.5, 0.0]])
    assert torch.allclose(logprobs.grad, expected)


def test_kl_gradient_and_value_by_hand():
    logprobs = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    out = grpo_loss(logprobs, logprobs.detach(), ref, torch.tensor([0.0]), torch.ones(1, 1), beta=0.04)
    # ref - logp = log 0.5; k3 = 0.5 - log 0.5 - 1 = log 2 - 0.5
    k3 = math.log(2) - 0.5
    assert out.kl.item() == pytest.approx(k3, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.04 * k3, rel=1e-6)
    out.loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp) = 0.5
    assert logprobs.grad.item() == pytest.approx(0.04 * 0.5, rel=1e-6)


def test_kl_zero_when_reference_equals_policy():
    logprobs = torch.tensor([[-1.0, -2.0]])
    out = grpo_loss(logprobs, logprobs, logprobs.clone(), torch.tensor([1.0]), torch.ones(1, 2))
    assert out.kl.item() == 0.0


def test_kl_metric_over_valid_tokens_only():
    logprobs = torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[math.log(0.5), 5.0]])  # the padded token's KL would be huge
    out = grpo_loss(logprobs, logprobs, ref, torch.tensor([1.0]), torch.tensor([[1, 0]]))
    assert out.kl.item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)


# --- loss: clipping ---------------------------------------------------------------------------


def _single_token_gradient(ratio, advantage, **kwargs):
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    out = grpo_loss(
        logprobs, torch.zeros(1, 1), None, torch.tensor([advantage]), torch.ones(1, 1), beta=0.0, **kwargs
    )
    out.loss.backward()
    return logprobs.grad.item(), out


@pytest.mark.parametrize(
    "ratio, advantage, gradient, clipped_low, clipped_high",
    [
        (1.19, 1.0, -1.19, 0, 0),  # inside: d(-ratio * A)/d logp = -ratio * A
        (1.21, 1.0, 0.0, 0, 1),  # above 1 + eps with A > 0: clipped, no gradient
        (1.21, -1.0, 1.21, 0, 0),  # above 1 + eps with A < 0: the unclipped term is smaller, kept
        (0.81, -1.0, 0.81, 0, 0),  # inside
        (0.79, -1.0, 0.0, 1, 0),  # below 1 - eps with A < 0: clipped
        (0.79, 1.0, -0.79, 0, 0),  # below 1 - eps with A > 0: kept
    ],
)
def test_clipping_engages_exactly_outside_the_trust_region(
    ratio, advantage, gradient, clipped_low, clipped_high
):
    grad, out = _single_token_gradient(ratio, advantage)
    assert grad == pytest.approx(gradient, abs=1e-6)
    assert out.clip_low_fraction.item() == clipped_low
    assert out.clip_high_fraction.item() == clipped_high
    assert out.clip_fraction.item() == clipped_low + clipped_high
    assert out.ratio_mean.item() == pytest.approx(ratio, rel=1e-6)


def test_asymmetric_clipping_raises_the_upper_bound():
    grad, out = _single_token_gradient(1.21, 1.0, epsilon_high=0.28)
    assert grad == pytest.approx(-1.21, rel=1e-6)
    assert out.clip_fraction.item() == 0.0
    grad, _ = _single_token_gradient(1.29, 1.0, epsilon_high=0.28)
    assert grad == 0.0


def test_clip_fractions_count_valid_tokens():
    ratios = torch.tensor([[0.7, 1.0, 1.3, 1.1, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the 5.0 is padding
    out = grpo_loss(ratios.log(), torch.zeros(1, 5), None, torch.tensor([1.0]), mask, beta=0.0)
    assert out.clip_high_fraction.item() == pytest.approx(0.25)  # 1.3 of 4 valid tokens
    assert out.clip_low_fraction.item() == 0.0  # 0.7 with A > 0 is not clipped
    assert out.ratio_mean.item() == pytest.approx((0.7 + 1.0 + 1.3 + 1.1) / 4, rel=1e-6)


# --- loss: aggregation --------------------------------------------------------------------------

RAGGED_MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    "loss_agg, expected",
    [
        ("seq_mean_token_mean", 0.5),  # mean(-3/3, 2/1)
        ("token_mean", -0.25),  # (-3 + 2) / 4 valid tokens
        ("seq_mean_token_sum_norm", -0.125),  # mean(-3/4, 2/4) with max_completion_length 4
    ],
)
def test_aggregations_on_a_ragged_mask(loss_agg, expected):
    logprobs = torch.full((2, 4), -1.0)
    advantages = torch.tensor([1.0, -2.0])  # per-token loss -1 in row 0, +2 in row 1
    out = grpo_loss(
        logprobs,
        logprobs,
        None,
        advantages,
        RAGGED_MASK,
        beta=0.0,
        loss_agg=loss_agg,
        max_completion_length=4,
    )
    assert out.loss.item() == pytest.approx(expected)


def test_unknown_aggregation_lists_the_choices():
    logprobs = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="seq_mean_token_mean.*token_mean.*seq_mean_token_sum_norm"):
        grpo_loss(logprobs, logprobs, None, torch.zeros(1), torch.ones(1, 2), beta=0.0, loss_agg="sum")


def test_dr_grpo_needs_max_completion_length():
    logprobs = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(
            logprobs,
            logprobs,
            None,
            torch.zeros(1),
            torch.ones(1, 2),
            beta=0.0,
            loss_agg="seq_mean_token_sum_norm",
        )


# --- loss: masking, reference, shapes ---------------------------------------------------------


def test_masked_tokens_get_zero_gradient_even_with_infinite_padding():
    logprobs = torch.tensor([[-1.0, -float("inf")], [-0.5, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.2, float("nan")], [-0.4, -2.1]])
    ref = torch.tensor([[-0.9, -float("inf")], [-0.6, -1.9]])
    mask = torch.tensor([[1, 0], [1, 1]])
    for loss_agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        logprobs.grad = None
        out = grpo_loss(
            logprobs, old, ref, torch.tensor([1.0, -1.0]), mask, loss_agg=loss_agg, max_completion_length=2
        )
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert torch.isfinite(logprobs.grad).all()
        assert logprobs.grad[0, 1].item() == 0.0
        assert (logprobs.grad[mask.bool()] != 0).all()


def test_beta_zero_needs_no_reference_and_reference_needed_otherwise():
    logprobs = torch.zeros(1, 2)
    out = grpo_loss(logprobs, logprobs, None, torch.ones(1), torch.ones(1, 2), beta=0.0)
    assert out.kl.item() == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logprobs, logprobs, None, torch.ones(1), torch.ones(1, 2), beta=0.04)


def test_shape_errors_name_the_tensor():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logprobs, logprobs, None, torch.zeros(2), torch.ones(2, 4), beta=0.0)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logprobs, logprobs, None, torch.zeros(3), torch.ones(2, 3), beta=0.0)


def test_metrics_are_detached_and_loss_is_not():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    out = grpo_loss(logprobs, logprobs.detach(), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    assert out.loss.requires_grad
    assert not any(t.requires_grad for t in (out.kl, out.clip_fraction, out.ratio_mean))
    assert set(out.metrics()) == {
        "loss",
        "kl",
        "clip_fraction",
        "clip_low_fraction",
        "clip_high_fraction",
        "ratio_mean",
    }


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    assert masked_mean(values, torch.tensor([[1, 1], [1, 0]])).item() == pytest.approx(2.0)
    assert masked_mean(values, torch.zeros(2, 2)).item() == 0.0
