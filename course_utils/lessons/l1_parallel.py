"""Lesson 1: model (tensor) and pipeline parallelism, demonstrated on one process.

What each device would compute is computed here one after another, so the splitting itself can be checked
against the unsplit layer or model; ``course_utils.lessons.l1_ddp`` runs data parallelism for real under
``torchrun``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT


def column_parallel_linear(layer: nn.Linear, x: torch.Tensor, shards: int) -> tuple[torch.Tensor, list]:
    """Tensor parallelism: split a Linear's output features over ``shards`` "devices"; each computes its
    slice of the output, and concatenating the slices (an all-gather) gives the full output."""
    if layer.out_features % shards:
        raise ValueError(f"{layer.out_features} output features do not split into {shards} equal shards")
    ws = layer.weight.chunk(shards, dim=0)
    bs = layer.bias.chunk(shards) if layer.bias is not None else [None] * shards
    parts = [F.linear(x, w, b) for w, b in zip(ws, bs)]
    return torch.cat(parts, dim=-1), [tuple(w.shape) for w in ws]


def row_parallel_linear(layer: nn.Linear, x: torch.Tensor, shards: int) -> tuple[torch.Tensor, list]:
    """Tensor parallelism the other way: split the input features; each shard makes a partial sum of
    the full output, and adding them (an all-reduce) gives the output."""
    if layer.in_features % shards:
        raise ValueError(f"{layer.in_features} input features do not split into {shards} equal shards")
    ws = layer.weight.chunk(shards, dim=1)
    xs = x.chunk(shards, dim=-1)
    out = sum(F.linear(xi, wi) for xi, wi in zip(xs, ws))
    if layer.bias is not None:
        out = out + layer.bias
    return out, [tuple(w.shape) for w in ws]


def pipeline_forward(model: GPT, idx: torch.Tensor, stages: int, micro_batches: int) -> tuple[torch.Tensor, list]:
    """Pipeline parallelism: Model 5's blocks cut into ``stages`` consecutive groups (one per "device");
    the batch cut into ``micro_batches`` that flow through the stages one after another.
    Returns the logits and, per stage, the block indices it holds."""
    n = len(model.h)
    if not 1 <= stages <= n:
        raise ValueError(f"stages must be between 1 and the number of blocks ({n}), got {stages}")
    if len(idx) % micro_batches:
        raise ValueError(f"batch {len(idx)} does not split into {micro_batches} equal micro-batches")
    bounds = [round(i * n / stages) for i in range(stages + 1)]
    groups = [list(range(bounds[i], bounds[i + 1])) for i in range(stages)]
    outs = []
    for mb in idx.chunk(micro_batches):
        T = mb.size(1)
        x = model.drop(model.wte(mb) + model.wpe(torch.arange(T, device=mb.device)))  # stage 0 also embeds
        for group in groups:  # on real hardware: send x to the next device here
            for i in group:
                x = model.h[i](x)
        logits = model.lm_head(model.ln_f(x))[..., : model.config.vocab_size]  # the last stage unembeds
        outs.append(logits)
    return torch.cat(outs), groups


def pipeline_schedule(stages: int, micro_batches: int) -> tuple[str, float]:
    """A GPipe forward schedule as text (rows = stages, columns = time slots, digits = micro-batch)
    and its bubble fraction (p - 1) / (m + p - 1): the share of slots a stage sits idle."""
    if stages < 1 or micro_batches < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    slots = micro_batches + stages - 1
    lines = []
    for s in range(stages):
        row = ["."] * slots
        for m in range(micro_batches):
            row[s + m] = str(m % 10)
        lines.append(f"stage {s}: " + " ".join(row))
    return "\n".join(lines), (stages - 1) / slots
