"""The fused output layer + loss (``GPT.forward(idx, targets)``, ``losses.linear_cross_entropy``) against the
plain path: ``F.cross_entropy`` of the full logits, values and every parameter's gradient."""
import pytest
import torch
import torch.nn.functional as F

from course_utils.losses import all_token_loss, linear_cross_entropy
from course_utils.model import GPT, GPTConfig

V = 211


def model(pad=1, **kw):
    torch.manual_seed(0)
    base = dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, pad_vocab_multiple=pad)
    base.update(kw)
    return GPT(GPTConfig(**base))


def grads(m):
    return {n: p.grad.detach().clone() for n, p in m.named_parameters()}


def reference(m, x, y):
    m.zero_grad(set_to_none=True)
    loss = F.cross_entropy(m(x).reshape(-1, V), y.reshape(-1), ignore_index=-100)
    loss.backward()
    return loss.detach(), grads(m)


@pytest.mark.parametrize("pad", [1, 64])
@pytest.mark.parametrize("chunk", [1, 7, 29, 256])  # one row, odd boundaries, several sequences, all at once
@pytest.mark.parametrize("ignore", [False, True])
def test_fused_loss_equals_cross_entropy_of_full_logits(pad, chunk, ignore):
    m = model(pad)
    assert m.config.padded_vocab_size == (V if pad == 1 else 256)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (3, 29), generator=g)
    y = torch.randint(0, V, (3, 29), generator=g)
    if ignore:
        y[0, :11] = -100
        y[2, -3:] = -100
    ref_loss, ref_grads = reference(m, x, y)
    m.zero_grad(set_to_none=True)
    m.loss_chunk_rows = chunk
    loss = m(x, targets=y)
    loss.backward()
    assert loss.dim() == 0
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    for name, grad in grads(m).items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-5, rtol=0), name


def test_fused_loss_equals_all_token_loss_and_scales_with_the_incoming_gradient():
    m = model()
    x = torch.randint(0, V, (2, 16))
    y = torch.randint(0, V, (2, 16))
    ref = all_token_loss(m(x), y)
    (ref * 0.25).backward()
    ref_grads = grads(m)
    m.zero_grad(set_to_none=True)
    loss = m(x, targets=y)
    assert abs(loss.item() - ref.item()) < 1e-5
    (loss * 0.25).backward()  # e.g. loss / grad_accum
    for name, grad in grads(m).items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-6, rtol=0), name


def test_linear_cross_entropy_functional_padded_columns_get_no_probability():
    torch.manual_seed(0)
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(16, 8, requires_grad=True)
    t = torch.randint(0, 13, (10,))
    loss = linear_cross_entropy(h, w, t, vocab_size=13, chunk_rows=3)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy((h2 @ w2.t())[:, :13], t)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    assert torch.allclose(h.grad, h2.grad, atol=1e-5)
    assert torch.allclose(w.grad, w2.grad, atol=1e-5)
    assert w.grad[13:].abs().max() == 0  # padded rows: no gradient


def test_no_grad_and_eval_give_the_same_loss_without_gradients():
    m = model()
    x = torch.randint(0, V, (2, 16))
    y = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        a = m(x, targets=y)
        b = all_token_loss(m(x), y)
    assert not a.requires_grad
    assert abs(a.item() - b.item()) < 1e-5


def test_model_without_targets_still_returns_logits():
    for pad in (1, 64):
        m = model(pad)
        x = torch.randint(0, V, (3, 16))
        out = m(x)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 16, V)
        assert torch.equal(out, m(x, targets=None))


def test_targets_shape_is_checked():
    m = model()
    x = torch.randint(0, V, (2, 16))
    with pytest.raises(ValueError, match="targets"):
        m(x, targets=torch.randint(0, V, (2, 15)))


def test_from_hf_gpt2_with_padded_vocab_keeps_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=48, n_layer=2, n_head=4)).eval()
    ours = GPT.from_hf_gpt2(hf, pad_vocab_multiple=64).eval()
    assert ours.wte.weight.shape[0] == 256
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4


def test_train_with_fused_all_token_loss_matches_all_token_loss():
    from course_utils.losses import fused_all_token_loss
    from course_utils.train import TrainConfig, train

    def batches(gen):
        x = torch.randint(0, V, (4, 16), generator=gen)
        return x, torch.roll(x, -1, dims=1)

    runs = {}
    for fn in (all_token_loss, fused_all_token_loss):
        m = model()
        cfg = TrainConfig(steps=4, lr=1e-3, eval_every=2, progress=False)
        h = train(m, batches, cfg, loss_fn=fn, test_batches=batches, device="cpu")
        runs[fn.__name__] = (h, m)
    (h1, m1), (h2, m2) = runs["all_token_loss"], runs["fused_all_token_loss"]
    losses1, losses2 = h1.train_loss + h1.test_loss, h2.train_loss + h2.test_loss
    assert all(abs(a - b) < 1e-5 for a, b in zip(losses1, losses2, strict=True))
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p1, p2, atol=1e-5), n
    x, y = batches(torch.Generator().manual_seed(0))
    assert abs(fused_all_token_loss(m1(x), y).item() - all_token_loss(m1(x), y).item()) < 1e-6
