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


def fused_all_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``all_token_loss``, marked so that ``course_utils.train`` hands the targets to the model instead:
    ``model(x, targets=y)`` (Model 5's fused output layer + loss, see ``linear_cross_entropy``) rather than
    ``loss_fn(model(x), y)``. Same value; the B x T x V logits are never made. Called on logits, it is
    ``all_token_loss`` (for models that do not take ``targets``)."""
    return all_token_loss(logits, targets)


fused_all_token_loss.model_computes_loss = True


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


# ---- Fused output layer + cross-entropy (GPT.forward(idx, targets)) ------------------------------


def _amp_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on for this device, else the input's."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


def _lce_chunk(h, w, t, n_valid, vocab_size, ignore_index, grad_w, needs_grad):
    """One chunk of rows: logits -> (summed loss, d(mean loss)/dh or None); adds d(mean loss)/dW into
    ``grad_w``. ``h`` (c, d), ``w`` (Vp, d) in the matmul dtype, ``t`` (c,)."""
    logits = (h @ w.t()).float()  # c x Vp, fp32 for the softmax (a copy only when the matmul ran in bf16/fp16)
    if vocab_size < w.size(0):
        logits[:, vocab_size:] = float("-inf")  # padding rows of the embedding are no token: probability 0
    valid = t != ignore_index
    t_safe = torch.where(valid, t, 0).unsqueeze(1)
    target_logit = logits.gather(1, t_safe).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    e = logits.sub_(row_max).exp_()  # in place: one pass over the chunk's logits, which become exp(z - max)
    row_sum = e.sum(dim=1, keepdim=True)
    lse = (row_max + row_sum.log()).squeeze(1)
    loss_sum = ((lse - target_logit) * valid).sum()
    grad_h = None
    if needs_grad:  # d loss / d logits = (softmax - one_hot) / n_valid for counted rows, 0 for ignored ones
        scale = valid.unsqueeze(1) / n_valid
        g = e.mul_(scale / row_sum)
        g.scatter_add_(1, t_safe, -scale)
        g = g.to(h.dtype)
        grad_h = g @ w
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.t(), h)
        else:  # bf16/fp16 matmuls: the weight gradient still sums over the chunks in fp32
            grad_w += g.t() @ h
    return loss_sum, grad_h


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` without ever holding all N x V logits.

    The rows go through in chunks; each chunk's logits live only while that chunk's loss and gradients
    (w.r.t. the hidden rows and the weight) are computed, all in the forward pass. The backward pass
    only scales the stored gradients by the incoming gradient. (Liger Kernel's and Apple's "cut cross
    entropy" idea, in plain PyTorch.)
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, ignore_index, chunk_rows, needs_grad):
        mm_dtype = _amp_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h_all = hidden.to(mm_dtype)
            w = weight.to(mm_dtype)
            n_valid = (targets != ignore_index).sum().clamp(min=1).float()
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
            total, grad_h = torch.zeros((), dtype=torch.float32, device=hidden.device), []
            for s in range(0, h_all.size(0), chunk_rows):
                loss_sum, gh = _lce_chunk(h_all[s:s + chunk_rows], w, targets[s:s + chunk_rows], n_valid,
                                          vocab_size, ignore_index, grad_w, needs_grad)
                total = total + loss_sum
                grad_h.append(gh)
            grad_h = torch.cat(grad_h) if needs_grad else None
        ctx.save_for_backward(grad_h, grad_w)
        ctx.in_dtypes = (hidden.dtype, weight.dtype)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.in_dtypes
        gh = (grad_h * grad_out).to(h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(w_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int | None = None, ignore_index: int = -100,
                         chunk_rows: int = 256) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, ignore_index=...)`` (the mean over counted rows),
    computed ``chunk_rows`` rows at a time so the N x V logits never exist at once.

    ``hidden`` is (..., d), ``targets`` the matching (...) token ids, ``weight`` the (V_padded, d) output
    matrix. ``vocab_size`` < V_padded: the padded columns are set to -inf inside the loss (probability 0),
    so the loss equals that of the logits sliced to ``vocab_size`` columns.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])} to match the hidden states, "
                         f"got {tuple(targets.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    V = weight.size(0) if vocab_size is None else vocab_size
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1),
                                    V, ignore_index, chunk_rows, needs_grad)
