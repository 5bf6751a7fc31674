import math

import pytest
import torch

from course_utils.losses import all_token_loss, causal_lm_loss, final_token_loss


def test_final_token_loss_equals_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    targets = torch.randint(0, 7, (3, 5))
    by_hand = 0.0
    for b in range(3):
        row = logits[b, -1]
        log_z = math.log(sum(math.exp(v) for v in row.tolist()))
        by_hand += -(row[targets[b, -1]].item() - log_z)
    assert final_token_loss(logits, targets).item() == pytest.approx(by_hand / 3, abs=1e-5)


def test_final_token_loss_ignores_earlier_positions():
    logits = torch.randn(2, 4, 5)
    targets = torch.randint(0, 5, (2, 4))
    other = logits.clone()
    other[:, :-1] = torch.randn(2, 3, 5)
    assert torch.equal(final_token_loss(logits, targets), final_token_loss(other, targets))


def test_all_token_loss_is_mean_over_positions():
    logits = torch.randn(2, 4, 5)
    targets = torch.randint(0, 5, (2, 4))
    per_pos = [final_token_loss(logits[:, : t + 1], targets[:, : t + 1]) for t in range(4)]
    assert all_token_loss(logits, targets).item() == pytest.approx(torch.stack(per_pos).mean().item(), abs=1e-6)


def test_causal_lm_loss_shifts_and_ignores_minus_100():
    logits = torch.randn(1, 4, 6)
    labels = torch.tensor([[-100, -100, 3, 5]])
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 5]))
    assert causal_lm_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="nothing to learn"):
        causal_lm_loss(logits, torch.full((1, 4), -100))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="targets must be"):
        all_token_loss(torch.randn(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))
