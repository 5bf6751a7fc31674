"""Model 5: the course's own GPT, readable top to bottom.

token + position embeddings -> n_layer pre-norm blocks
(causal multi-head self-attention through F.scaled_dot_product_attention, MLP with 4x expansion
and GELU, LayerNorm, residuals, dropout on attention / MLP / residual paths)
-> final LayerNorm -> unembedding tied to the token embedding -> logits (B x T x V).

The layout and parameter names follow GPT-2, so ``GPT.from_hf_gpt2`` can copy real GPT-2 weights.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import linear_cross_entropy
from .validate import at_least, positive, probability


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``with eval_mode(model):`` runs in eval mode (dropout off) and restores the previous mode afterwards,
    also when the body raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary
    block_size: int = 256  # context length: the longest sequence the model accepts
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    tie_weights: bool = True  # unembedding shares the token-embedding matrix
    layer_norm_eps: float = 1e-5
    pad_vocab_multiple: int = 1  # e.g. 64 pads 50257 -> 50304 rows (Lesson 1's alignment lever)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            at_least(self, name, 1)
        positive(self, "layer_norm_eps", "e.g. 1e-5")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        probability(self, "dropout", high_open=True, fix="0.1 is GPT-2's; 0 turns dropout off")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention through PyTorch's fused kernel (flash or memory-efficient where the device has one)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.dropout_p = cfg.dropout
        # F.scaled_dot_product_attention knows nothing about model.train()/model.eval(): its dropout_p
        # applies whenever it is > 0. The model gates it on self.training. Lesson 2 switches this flag
        # off to show what happens without the gate.
        self.gate_dropout_on_training = True

    #: The attention function (a seam): ``(q, k, v, dropout_p) -> y``, each (B, heads, T, head size), causal.
    #: ``GPT.set_attention`` swaps it (Lesson 1's manual attention, tensor parallelism's local heads).
    attention_fn = staticmethod(sdpa_attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = self.c_attn.out_features // 3 // (C // self.n_head)  # heads held here (fewer under tensor parallelism)
        q, k, v = self.c_attn(x).split(self.c_attn.out_features // 3, dim=2)
        q, k, v = (t.view(B, T, h, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout_p if (self.training or not self.gate_dropout_on_training) else 0.0
        y = self.attention_fn(q, k, v, p)
        y = y.transpose(1, 2).reshape(B, T, h * (C // self.n_head))
        return self.resid_dropout(self.c_proj(y))


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention written out: softmax(q k^T / sqrt(d) + causal mask) v. It materialises the (T x T) score
    matrix per head, which the fused kernel never does (Lesson 1)."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    if dropout_p:
        att = F.dropout(att, p=dropout_p)
    return att @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.n_embd)  # token embedding
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)  # unembedding
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix, one storage
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameters counted once each (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_token_ids(self, idx: torch.Tensor) -> None:
        """Integer ids in [0, vocab_size): one min/max over the batch (skipped while torch.compile traces)."""
        V = self.config.vocab_size
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise TypeError(
                f"token ids must be integers (torch.long), got {idx.dtype}: pass the tokenizer's ids, "
                f"e.g. torch.tensor(ids, dtype=torch.long), not embeddings, probabilities or a float tensor"
            )
        if idx.numel() == 0 or idx.device.type == "meta" or torch.compiler.is_compiling():  # no values to read
            return
        lo, hi = torch.stack(torch.aminmax(idx)).tolist()
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} is outside this model's vocabulary (vocab_size={V}: ids 0..{V - 1}). "
                f"The ids probably come from another tokenizer than the one the model was built for "
                f"(e.g. a 49,152-token SmolLM2 tokenizer for a 50,257-token GPT-2 model), or padding used -1/-100 "
                f"as an input id; tokenize with the model's tokenizer, or build GPTConfig(vocab_size=...) to match."
            )

    # Rows of the fused output layer + loss per chunk (see forward); None = a default for the device.
    loss_chunk_rows: int | None = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``idx`` (B x T) -> logits (B x T x vocab_size).

        With ``targets`` (B x T token ids, -100 = not counted) it returns the mean next-token
        cross-entropy instead, a scalar equal to ``all_token_loss(model(idx), targets)``, computed by
        ``course_utils.losses.linear_cross_entropy``: the output layer and the loss run together in chunks
        of rows, so the B x T x V logits (the largest tensor of a small model's step) never exist.
        """
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, time), got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} is longer than the model's context (block_size={self.config.block_size}); "
                f"crop the input to its last {self.config.block_size} tokens, e.g. idx[:, -{self.config.block_size}:]"
            )
        # A batch on another device than the model fails in the embedding with PyTorch's own message
        # ("Expected all tensors to be on the same device, ..."): the course does not rewrite it.
        self._check_token_ids(idx)
        x = self.blocks(self.embed(idx))
        if targets is not None:
            return self.loss(x, targets)
        return self.unembed(x)

    # ---- Seams: forward is embed -> blocks -> unembed (or loss). Pipeline stages, Lesson 2's final-token head
    # and Lesson 1's attention demo call these instead of copying forward.
    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the residual stream (B, T, C): token + position embeddings, then dropout."""
        pos = torch.arange(idx.size(1), device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))

    def blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run the transformer blocks ``start`` to ``stop`` (default: all) on the residual stream."""
        for block in self.h[start:stop]:
            x = block(x)
        return x

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream (..., C) -> logits (..., vocab_size): final LayerNorm, the unembedding, and the
        padded vocabulary's extra rows cropped (they are never real tokens)."""
        logits = self.lm_head(self.ln_f(x))
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]
        return logits

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy from the residual stream, fused with the unembedding (no logits tensor)."""
        chunk = self.loss_chunk_rows or (256 if x.device.type == "cpu" else 8192)
        return linear_cross_entropy(self.ln_f(x), self.lm_head.weight, targets,
                                    vocab_size=self.config.vocab_size, chunk_rows=chunk)

    def set_attention(self, fn=None) -> None:
        """Swap every block's attention function (``fn(q, k, v, dropout_p) -> y``); None restores the fused one."""
        for block in self.h:
            if fn is None:
                block.attn.__dict__.pop("attention_fn", None)
            else:
                block.attn.attention_fn = fn

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B x T): greedy, or sampled with temperature/top-k.

        Runs in eval mode (no dropout) and restores the previous mode afterwards. Sampling draws
        from ``generator`` when given, so generation is reproducible without touching global RNG.
        """
        if not greedy and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling; use greedy=True for argmax decoding")
        with eval_mode(self):
            for _ in range(max_new_tokens):
                logits = self(idx[:, -self.config.block_size :])[:, -1, :]
                if greedy:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = F.softmax(logits.float(), dim=-1)
                    if generator is not None and generator.device != probs.device:
                        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)
                    else:
                        nxt = torch.multinomial(probs, 1, generator=generator)
                idx = torch.cat([idx, nxt], dim=1)
        return idx

    @classmethod
    def from_hf_gpt2(cls, hf_model, dropout: float | None = None, pad_vocab_multiple: int = 1) -> GPT:
        """Build Model 5 from a ``transformers`` ``GPT2LMHeadModel`` (any size) with identical logits.

        ``pad_vocab_multiple`` (e.g. 64) pads the embedding's rows; the padded rows keep their random init
        and never show in the logits. GPT-2 stores its linear layers as ``Conv1D`` with weights of shape
        (in, out); ``nn.Linear`` wants (out, in), so those are transposed.
        """
        hc = hf_model.config
        if getattr(hc, "model_type", None) != "gpt2":
            raise ValueError(f"from_hf_gpt2 needs a GPT-2 model, got model_type={getattr(hc, 'model_type', None)!r}")
        if hc.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"Model 5 uses tanh-GELU; this GPT-2 uses {hc.activation_function!r}")
        cfg = GPTConfig(
            vocab_size=hc.vocab_size,
            block_size=hc.n_positions,
            n_layer=hc.n_layer,
            n_head=hc.n_head,
            n_embd=hc.n_embd,
            dropout=hc.resid_pdrop if dropout is None else dropout,
            layer_norm_eps=hc.layer_norm_epsilon,
            pad_vocab_multiple=pad_vocab_multiple,
        )
        model = cls(cfg)
        sd = hf_model.state_dict()
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for name, p in model.named_parameters():
                key = "transformer." + name
                if name == "lm_head.weight":  # tied to wte; already copied
                    continue
                src = sd[key]
                if name == "wte.weight":
                    p[: src.size(0)].copy_(src)  # all rows unless the vocabulary is padded
                else:
                    p.copy_(src.t() if name.endswith(transposed) else src)
        return model.to(next(hf_model.parameters()).device)

    def config_dict(self) -> dict:
        return asdict(self.config)
