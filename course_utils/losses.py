"""The loss functions the lessons teach. Each takes logits (what a model returns) and targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (batch, time, vocab), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must be (batch, time) = {tuple(logits.shape[:2])} to match the logits, got {tuple(targets.shape)}"
        )


def all_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over every position: B*T targets per batch."""
    _check(logits, targets)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def final_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lesson 2: the loss on the final position only, L = -log P(x_T | x_<T): B targets per batch.

    The model returns logits, so they go through ``log_softmax`` before ``NLLLoss``;
    NLLLoss on raw logits is the bug the lecture warns about.
    """
    _check(logits, targets)
    log_probs = F.log_softmax(logits[:, -1, :].float(), dim=-1)  # B x V
    return F.nll_loss(log_probs, targets[:, -1])


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Hugging Face convention: ``labels`` are aligned with the inputs (not shifted), positions with
    ``ignore_index`` (-100) do not count. Position t's logits predict label t+1.
    """
    _check(logits, labels)
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if not (shift_labels != ignore_index).any():
        raise ValueError("every label is ignore_index (-100): there is nothing to learn from in this batch")
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)
