"""The loss functions the lessons teach. Each takes logits (what a model returns) and targets."""
from __future__ import annotations

import math

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


# --- Lesson 3: "Maximize the X factor", a KL loss toward a chosen target distribution ------------


def _vocab_rows(tokenizer, vocab_size: int | None) -> int:
    n_tok = len(tokenizer)
    if vocab_size is None:
        return n_tok
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int (the model's output size), got {vocab_size!r}")
    if vocab_size < n_tok:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the tokenizer ({n_tok} tokens): the model could not output "
            "every token id. Pass the model's output size, e.g. model.get_output_embeddings().weight.shape[0]."
        )
    return vocab_size


def letter_token_mask(tokenizer, letter: str = "x", vocab_size: int | None = None,
                      include_special: bool = False) -> torch.Tensor:
    """A (V,) bool tensor: True where token ``i`` decoded on its own contains ``letter`` (case-insensitive).

    ``V`` is ``vocab_size`` (the model's output size) or, when not given, ``len(tokenizer)``; rows past the
    tokenizer's length (padding rows of the embedding) are False. Special tokens (``<|endoftext|>`` contains
    an x!) do not count unless ``include_special=True``.
    """
    if not isinstance(letter, str) or not letter.strip():
        raise ValueError(f"letter must be a non-empty string such as 'x', got {letter!r}")
    rows = _vocab_rows(tokenizer, vocab_size)
    n_tok = len(tokenizer)
    needle = letter.lower()
    texts = tokenizer.batch_decode([[i] for i in range(n_tok)])
    mask = torch.zeros(rows, dtype=torch.bool)
    mask[:n_tok] = torch.tensor([needle in t.lower() for t in texts], dtype=torch.bool)
    if not include_special:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        special = [i for i in special if 0 <= i < n_tok]
        if special:
            mask[torch.tensor(special)] = False
    return mask


def x_factor_target(tokenizer, alpha: float, beta: float, letter: str = "x", vocab_size: int | None = None,
                    include_special: bool = False) -> torch.Tensor:
    """Lesson 3's target distribution P, a (V,) probability vector that sums to 1.

    Every token containing ``letter`` (see ``letter_token_mask``) gets weight ``alpha``, every other token
    ``beta``; the weights are then normalised. The lecture uses ``alpha > beta``. ``vocab_size`` is the model's
    output size when it differs from ``len(tokenizer)``: rows that are no token at all get probability 0.
    """
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (a weight before normalising), got {v!r}")
    mask = letter_token_mask(tokenizer, letter, vocab_size, include_special)
    n_hit = int(mask.sum())
    if n_hit == 0:
        raise ValueError(f"no token of this tokenizer contains {letter!r}: the target would not favour anything")
    if alpha == 0 and beta == 0:
        raise ValueError("alpha and beta are both 0: there is no probability to spread (use alpha > beta > 0)")
    n_tok = len(tokenizer)
    weights = torch.zeros(mask.numel(), dtype=torch.float64)
    weights[:n_tok] = beta
    weights[mask] = alpha
    if weights.sum() == 0:
        raise ValueError(f"alpha=0 and no token without {letter!r} to give beta to: nothing is left")
    return (weights / weights.sum()).float()


def kl_to_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(P || Q_model) averaged over the B*T rows: ``F.kl_div(log_softmax(logits), P, reduction="batchmean")``.

    ``logits`` are B x T x V (or N x V); ``target`` is the (V,) distribution P shared by every row (or one
    row per position, same shape as the logits). Per row: sum_i P(i) * (log P(i) - log Q(i)); rows where
    P(i) = 0 contribute nothing for that i.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3):
        raise ValueError(f"logits must be a (batch, time, vocab) or (rows, vocab) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a tensor (e.g. from x_factor_target), got {type(target).__name__}")
    V = logits.size(-1)
    if target.size(-1) != V:
        raise ValueError(
            f"the target has {target.size(-1)} entries but the logits have V={V}: build the target with "
            f"vocab_size={V} (the model's output size), not len(tokenizer)"
        )
    log_q = F.log_softmax(logits.reshape(-1, V).float(), dim=-1)  # (B*T) x V
    p = target.to(log_q.device, torch.float32)
    if p.dim() == 1:
        p = p.expand_as(log_q)
    elif p.shape != logits.shape:
        raise ValueError(f"target must be (V,) or the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    else:
        p = p.reshape(-1, V)
    return F.kl_div(log_q, p, reduction="batchmean")


# --- Fused output layer + cross-entropy (GPT.forward(idx, targets)) -------------------------------


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
