import pytest
import torch

from course_utils.data import get_batch
from course_utils.losses import all_token_loss
from course_utils.model import GPT, GPTConfig
from course_utils.train import History, TrainConfig, evaluate, lr_factor, train

DATA = torch.arange(2000) % 37  # a learnable, periodic token stream


def batches(gen):
    return get_batch(DATA, 4, 16, generator=gen)


def fresh_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1))


def test_loss_falls_and_history_is_complete():
    model = fresh_model()
    cfg = TrainConfig(steps=30, lr=3e-3, eval_every=10, eval_batches=2, progress=False)
    h = train(model, batches, cfg, test_batches=batches, device="cpu")
    assert h.step == list(range(1, 31))
    assert h.eval_step == [0, 10, 20, 30]
    assert h.test_loss[-1] < 0.7 * h.test_loss[0]
    assert len(h.grad_norm) == len(h.lr) == len(h.tokens_per_s) == 30
    assert h.tokens_seen[-1] == 30 * 4 * 16
    assert model.training  # evaluation put it back in train mode


def test_same_seed_same_run():
    cfg = TrainConfig(steps=5, lr=1e-3, progress=False, seed=3)
    a = train(fresh_model(), batches, cfg, device="cpu")
    b = train(fresh_model(), batches, cfg, device="cpu")
    assert a.train_loss == b.train_loss


def test_resume_is_exact(tmp_path):
    ckpt = str(tmp_path / "run.pt")
    cfg = TrainConfig(steps=12, lr=2e-3, schedule="cosine", warmup_steps=3, eval_every=4, progress=False,
                      checkpoint_path=ckpt, checkpoint_every=4)
    plain = TrainConfig(**{**cfg.__dict__, "checkpoint_path": None, "checkpoint_every": 0})
    straight = train(fresh_model(), batches, plain,
                     test_batches=batches, device="cpu")
    first = train(fresh_model(), batches, cfg, test_batches=batches, device="cpu", stop_at=6)  # "interrupted"
    assert first.step[-1] == 6
    model = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1))  # other init
    resumed = train(model, batches, cfg, test_batches=batches, device="cpu", resume=True)
    assert resumed.step == straight.step
    assert resumed.train_loss == straight.train_loss  # bit-for-bit, dropout masks included
    assert resumed.test_loss == straight.test_loss


def test_grad_accumulation_matches_big_batch():
    # 2 micro-batches of 4 with one update == one batch of 8 (same windows), up to float rounding
    def big(gen):
        return get_batch(DATA, 8, 16, generator=gen)

    def halves():
        x, y = get_batch(DATA, 8, 16, generator=torch.Generator().manual_seed(0))
        parts = iter([(x[:4], y[:4]), (x[4:], y[4:])])
        return lambda gen: next(parts)

    cfg_big = TrainConfig(steps=1, lr=1e-2, clip_grad=None, progress=False, seed=0)
    m1, m2 = fresh_model().eval(), fresh_model().eval()
    for m in (m1, m2):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        for block in m.h:
            block.attn.dropout_p = 0.0
    train(m1, big, cfg_big, device="cpu")
    train(m2, halves(), TrainConfig(steps=1, lr=1e-2, clip_grad=None, progress=False, grad_accum=2), device="cpu")
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6)


def test_grad_norm_is_recorded_and_clipping_only_when_asked():
    # one SGD step (lr 1, no momentum) moves each weight by exactly its gradient, so the step shows
    # which gradient the optimizer saw; the history records the norm before any clipping. train() puts the
    # model in train mode and seeds dropout from cfg.seed, so both runs draw the same dropout masks.
    def one_step(clip):
        m = fresh_model()
        before = [p.detach().clone() for p in m.parameters()]
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        h = train(m, batches, TrainConfig(steps=1, lr=1.0, clip_grad=clip, progress=False, seed=0),
                  optimizer=opt, device="cpu")
        step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, m.parameters())])
        return h.grad_norm[0], step.norm().item()

    norm, step = one_step(None)
    assert norm > 0.1 and step == pytest.approx(norm, rel=1e-4)  # unclipped: the full gradient
    norm_c, step_c = one_step(0.1)
    assert norm_c == pytest.approx(norm, rel=1e-5)  # the same gradient, measured before clipping
    assert step_c == pytest.approx(0.1, rel=1e-3)  # clipped to the requested norm


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def test_bf16_autocast_runs_on_cpu():
    h = train(fresh_model(), batches, TrainConfig(steps=2, amp="bf16", progress=False), device="cpu")
    assert all(torch.isfinite(torch.tensor(h.train_loss)))


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        train(fresh_model(), batches, TrainConfig(steps=1, amp="fp16", progress=False), device="cpu")
    with pytest.raises(ValueError, match="amp="):
        TrainConfig(steps=1, amp="fp8")
    with pytest.raises(ValueError, match="test_batches"):
        train(fresh_model(), batches, TrainConfig(steps=1, eval_every=1, progress=False), device="cpu")
    model = fresh_model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, batches, TrainConfig(steps=1, progress=False), device="cpu")


def test_evaluate_is_repeatable_and_restores_mode():
    model = fresh_model().train()
    a = evaluate(model, batches, all_token_loss, n_batches=2)
    assert a == evaluate(model, batches, all_token_loss, n_batches=2)
    assert model.training


def test_history_helpers():
    h = History(train_loss=[4.0, 3.0, 2.0], step_time=[9.0, 1.0, 1.0, 2.0])
    assert h.final_train_loss(last=2) == 2.5
    assert h.median_step_time(skip=1) == 1.0


def test_auto_precision_picks_fp16_with_a_scaler_where_bf16_is_not_fast(monkeypatch):
    import torch

    from course_utils.train import has_fast_bf16, resolve_amp

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # T4 reports emulated bf16 as True
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # Colab's T4
    assert not has_fast_bf16(cuda)
    assert resolve_amp("auto", cuda) == (torch.float16, True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))  # H100
    assert has_fast_bf16(cuda) and resolve_amp("auto", cuda) == (torch.bfloat16, False)
    assert resolve_amp("auto", torch.device("cpu")) == (None, False)


def test_dropout_schedules_scale_every_rate_and_restore_them():
    from course_utils.train import dropout_factor

    cfg = TrainConfig(steps=8, dropout_schedule="early", dropout_until=0.25)
    assert [dropout_factor(s, cfg) for s in range(8)] == [1, 1, 0, 0, 0, 0, 0, 0]
    lin = TrainConfig(steps=4, dropout_schedule="linear")
    assert [dropout_factor(s, lin) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert dropout_factor(5, TrainConfig(steps=8)) == 1.0

    model = fresh_model()  # dropout 0.1 everywhere
    seen = []  # (nn.Dropout rate, attention's dropout_p) at every forward pass of block 0
    block = model.h[0]
    block.register_forward_pre_hook(lambda m, a: seen.append((m.mlp.dropout.p, m.attn.dropout_p)))
    h = train(model, batches, TrainConfig(steps=8, lr=1e-3, progress=False, dropout_schedule="early",
                                          dropout_until=0.25), device="cpu")
    assert seen[:2] == [(0.1, 0.1)] * 2 and set(seen[2:]) == {(0.0, 0.0)}  # off from step 2 on, both kinds
    assert h.dropout_factor == [1, 1, 0, 0, 0, 0, 0, 0]
    assert block.mlp.dropout.p == 0.1 and block.attn.dropout_p == 0.1 and model.drop.p == 0.1  # restored
    # with the rates off the run is deterministic in the dropout masks: it differs from constant dropout
    const = train(fresh_model(), batches, TrainConfig(steps=8, lr=1e-3, progress=False), device="cpu")
    assert const.train_loss[:2] == h.train_loss[:2] and const.train_loss[2:] != h.train_loss[2:]


def test_bad_dropout_schedules_are_clear_errors():
    with pytest.raises(ValueError, match="dropout_schedule='late' is not one of"):
        TrainConfig(steps=4, dropout_schedule="late")
    with pytest.raises(ValueError, match="share of the steps"):
        TrainConfig(steps=4, dropout_schedule="early", dropout_until=0)
    from course_utils.train import scale_dropout

    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        scale_dropout(fresh_model(), 1.5)


@pytest.mark.parametrize("field, value, says", [
    ("lr", -1.0, "> 0"), ("lr", float("nan"), "finite"), ("lr", 0.0, "> 0"), ("steps", 0, ">= 1"),
    ("grad_accum", 0, ">= 1"), ("weight_decay", -0.1, ">= 0"), ("warmup_steps", 20, "more than steps"),
    ("clip_grad", 0.0, "> 0"), ("min_lr_ratio", 1.5, "in [0, 1]"), ("betas", (0.9, 1.0), "[0, 1)"),
    ("eval_batches", 0, ">= 1"),
])
def test_train_config_rejects_bad_values_naming_the_field_the_value_and_the_fix(field, value, says):
    kwargs = {"steps": 10, field: value}
    with pytest.raises(ValueError) as err:
        TrainConfig(**kwargs)
    msg = str(err.value)
    assert field.split("[")[0] in msg and says in msg and (repr(value) in msg or str(value) in msg)


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("block_size", 0), ("dropout", 1.0), ("dropout", -0.1),
                                          ("layer_norm_eps", 0.0), ("vocab_size", 1.5)])
def test_gpt_config_rejects_bad_values(field, value):
    from course_utils.model import GPTConfig

    with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
        GPTConfig(**{field: value})
