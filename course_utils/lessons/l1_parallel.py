"""Lesson 1: tensor, pipeline and sharded data parallelism on the real ``torch.distributed`` engines.

Each mode runs Model 5 on 2 processes under ``torchrun`` (gloo on a CPU, NCCL on 2+ GPUs), trains a few
steps on the same global batches as one process, and writes what it measured as JSON:

- ``"tp"`` tensor parallelism: in every block, ``attn.c_attn`` and ``mlp.c_fc`` split by output features
  (``ColwiseParallel``), ``attn.c_proj`` and ``mlp.c_proj`` by input features (``RowwiseParallel``), with
  ``torch.distributed.tensor.parallel.parallelize_module`` over ``init_device_mesh(device, (2,))``. The fused
  q,k,v matrix is permuted first so each rank's shard holds q, k and v of its own n_head/2 heads. Reports
  the output and loss differences against one process, each rank's weight shapes and bytes, and the
  collectives per step counted by ``CommDebugMode``.
- ``"pp"`` pipeline parallelism: the blocks cut into one stage per rank (``PipelineStage``), trained with
  ``ScheduleGPipe`` and ``Schedule1F1B`` for several micro-batch counts m; reports the loss, the blocks each
  rank holds, and each stage's measured idle fraction next to the bubble formula (p - 1) / (m + p - 1).
- ``"fsdp"`` sharded data parallelism (FSDP2, ``fully_shard`` on every block and the root) and ``"ddp"``
  (``DistributedDataParallel``) on the same global batch; reports the losses and the bytes each rank holds for
  parameters, gradients and AdamW state, measured from its local shards.

    from course_utils.lessons import l1_parallel as par
    s = par.ParallelSettings()
    runs = par.launch(["tp", "pp", "fsdp", "ddp"], s, out="outputs/parallel.json", tokens="outputs/tokens.pt")
    ref = par.reference_run(s, par.load_tokens("outputs/tokens.pt", s.vocab_size))
    par.parallel_table(runs, ref)

A mode may carry an injected mistake, for the tests and for learners: ``"tp:wrong-split"`` splits the fused
q,k,v matrix without the head permutation, ``"tp:no-allreduce"`` drops the all-reduce after the row-split
layers. Both must (and do) change the loss.

The one-process demos below (``column_parallel_linear``, ``row_parallel_linear``, ``pipeline_forward``,
``pipeline_schedule``) show the arithmetic of a split without any process group.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import get_batch
from ..measure import median
from ..memory import format_bytes
from ..model import GPT, GPTConfig
from ..paths import REPO_ROOT
from ..tables import Table
from ..validate import at_least
from .l1_ddp import LaunchPlan, RunSettings, launch_plan, load_token_stream, max_loss_difference, run_torchrun

SCRIPT = REPO_ROOT / "scripts" / "parallel_train.py"
MODES = ("tp", "pp", "fsdp", "ddp")
INJECTIONS = {"tp": ("wrong-split", "no-allreduce")}
SCHEDULES = ("gpipe", "1f1b")
CPU_SPEED_NOTE = "speed: not measurable here on CPU (2 gloo processes share 2 cores)"

__all__ = [
    "CPU_SPEED_NOTE", "INJECTIONS", "LOSS_TOL", "MODES", "LaunchPlan", "ParallelSettings", "bubble_fraction",
    "bubble_table", "column_parallel_linear", "launch", "launch_plan", "load_tokens",
    "max_loss_difference", "parallel_facts", "parallel_plan", "parallel_table", "pipeline_forward",
    "pipeline_schedule", "plot_bubble",
    "pp_max_loss_difference", "reference_run", "row_parallel_linear", "run_mode", "tp_weights_table", "validate",
]


def parallel_plan() -> LaunchPlan:
    """Where the parallel runs go: one process per GPU with NCCL on 2+ GPUs; otherwise 2 CPU processes with
    gloo (also on a 1-GPU machine: tensor and pipeline parallelism send CUDA tensors point to point, which gloo
    does not do, and two processes on one GPU would show nothing that two CPU processes do not)."""
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpu >= 2:
        return launch_plan()
    return LaunchPlan(2, "gloo", "cpu", f"{n_gpu or 'no'} GPU{'s' if n_gpu != 1 else ''}: two CPU processes "
                      "(gloo) share the CPU cores")


# ---- Settings and checks -------------------------------------------------------------------------
@dataclass
class ParallelSettings(RunSettings):
    """One small training run, shared by every mode and by the one-process reference (``l1_ddp.RunSettings``
    holds the model's size, the steps and the optimizer, validated)."""

    steps: int = 3
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    # width 256, not 64: a pipeline's idle time shows only when a micro-batch's compute outweighs the
    # fixed cost of sending it (at width 64 every stage idles ~75% of the step whatever m is)
    n_embd: int = 256
    vocab_size: int = 128
    lr: float = 3e-3
    batch: int = 16  # global batch: sequences per optimizer step over all processes
    micro_batches: str = "1,2,4,8"  # pipeline micro-batch counts m, comma-separated
    schedules: str = "gpipe,1f1b"

    def __post_init__(self):
        super().__post_init__()
        at_least(self, "batch", 1)
        self.micro_batch_counts()  # parse now: a bad string fails here, not inside torchrun
        bad = [s for s in self.schedule_names() if s not in SCHEDULES]
        if bad:
            raise ValueError(f"unknown pipeline schedule(s) {bad}; choose from {SCHEDULES}")

    def micro_batch_counts(self) -> list[int]:
        try:
            ms = [int(m) for m in str(self.micro_batches).split(",") if m.strip()]
        except ValueError as err:
            raise ValueError(f"micro_batches must be comma-separated integers like '1,2,4,8', "
                             f"got {self.micro_batches!r}") from err
        if not ms or min(ms) < 1:
            raise ValueError(f"micro_batches must be integers >= 1, got {self.micro_batches!r}")
        return ms

    def schedule_names(self) -> list[str]:
        return [s.strip() for s in str(self.schedules).split(",") if s.strip()]

    def model_config(self) -> GPTConfig:
        # Untied unembedding: the pipeline's first and last stages would otherwise share one matrix (real
        # pipelines keep two copies and all-reduce their gradients; that is left out here).
        return super().model_config(tie_weights=False)


def parse_mode(mode: str) -> tuple[str, str]:
    """``"tp:wrong-split"`` -> ``("tp", "wrong-split")``; ``"pp"`` -> ``("pp", "none")``."""
    name, _, inject = str(mode).partition(":")
    if name not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES} (tensor, pipeline, FSDP2, DDP)")
    inject = inject or "none"
    if inject != "none" and inject not in INJECTIONS.get(name, ()):
        raise ValueError(f"mode {name!r} has no injected mistake {inject!r}; known: {INJECTIONS.get(name, ())}")
    return name, inject


def validate(modes: str | Sequence[str], settings: ParallelSettings, world_size: int) -> list[str]:
    """Every problem that would make a mode fail or split unevenly, as a ``ValueError`` before anything runs."""
    modes = [modes] if isinstance(modes, str) else list(modes)
    if not modes:
        raise ValueError(f"give at least one mode from {MODES}")
    if world_size < 2:
        raise ValueError(f"parallel modes need at least 2 processes, got world_size={world_size}")
    for mode in modes:
        name, _ = parse_mode(mode)
        if name == "tp":
            if world_size % 2 or settings.n_head % world_size:
                raise ValueError(f"tensor parallelism gives each process n_head / world_size heads: "
                                 f"{settings.n_head} heads do not split over {world_size} processes; "
                                 f"use an even world size that divides n_head")
        elif name == "pp":
            if world_size > settings.n_layer:
                raise ValueError(f"pipeline parallelism puts at least one block on each stage: {world_size} stages "
                                 f"but Model 5 has only {settings.n_layer} blocks; use n_layer >= world_size")
            for m in settings.micro_batch_counts():
                if settings.batch % m:
                    raise ValueError(f"batch {settings.batch} does not split into {m} equal micro-batches; "
                                     "use micro-batch counts that divide the batch")
        elif settings.batch % world_size:
            raise ValueError(f"{name}: the global batch {settings.batch} does not split evenly over {world_size} "
                             "processes; pick a multiple of the number of processes")
    return modes


def load_tokens(source: str | os.PathLike, vocab_size: int) -> torch.Tensor:
    """The token stream for the runs, fitted to ``vocab_size``: when it holds larger ids (GPT-2's 50,257), the
    ``vocab_size - 1`` most frequent tokens keep their own ids (0 = most frequent) and every other token
    becomes ``vocab_size - 1`` ("other"). Deterministic, so every process and the reference see the same ids."""
    ids = load_token_stream(source)
    if int(ids.max()) < vocab_size:
        return ids
    counts = torch.bincount(ids)
    order = torch.argsort(-counts.double() + torch.arange(len(counts)) * 1e-9)  # ties: smaller id first
    mapping = torch.full((len(counts),), vocab_size - 1, dtype=torch.long)
    mapping[order[: vocab_size - 1]] = torch.arange(vocab_size - 1)
    return mapping[ids]


def global_batches(settings: ParallelSettings, data: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``steps`` global batches every mode and the reference train on (one seeded generator)."""
    gen = torch.Generator().manual_seed(settings.seed)
    return [get_batch(data, settings.batch, settings.block_size, generator=gen) for _ in range(settings.steps)]


def build_model(settings: ParallelSettings, device: torch.device) -> GPT:
    torch.manual_seed(settings.seed)  # the same initial weights in every process
    return GPT(settings.model_config()).to(device)


def make_optimizer(params, settings: ParallelSettings) -> torch.optim.Optimizer:
    # foreach=False: the same per-tensor arithmetic for plain tensors and DTensors in every mode
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0, foreach=False)


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _nbytes(t: torch.Tensor) -> int:
    t = _local(t)
    return t.numel() * t.element_size()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes this process holds for parameters, gradients and optimizer state, measured from its local
    tensors (a DTensor counts its local shard only)."""
    params = list(model.parameters())
    opt = sum(_nbytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    p = sum(_nbytes(t) for t in params)
    g = sum(_nbytes(t.grad) for t in params if t.grad is not None)
    return {"parameters": p, "gradients": g, "optimizer": opt, "total": p + g + opt}


# ---- What one process reports (typed; they cross torchrun pickled, and rank 0 writes them with ``asdict``) ----
@dataclass
class TPRecord:
    """One tensor-parallel rank: its losses, the output difference from the full model, its shards."""

    loss: list[float]
    output_max_diff: float
    split_layers: list[str]
    weights: list[dict]  # block 0's split layers: full and local shapes and bytes
    split_bytes_local: int
    split_bytes_full: int
    collectives_forward: dict
    collectives_backward: dict
    bytes: dict  # state_bytes: parameters, gradients, optimizer, total
    mode_wall_s: float = 0.0


@dataclass
class PPRun:
    """One pipeline schedule at one micro-batch count, on one stage (``skipped`` says why it did not run)."""

    schedule: str
    m: int
    skipped: str | None = None
    loss: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)  # per step: 1 - busy / wall
    idle_median: float = 0.0
    bubble_formula: float = 0.0
    bytes: dict = field(default_factory=dict)


@dataclass
class PPRecord:
    """One pipeline stage: the blocks it holds and its runs."""

    blocks: list[int]
    runs: list[PPRun]
    mode_wall_s: float = 0.0


@dataclass
class DPRecord:
    """One data-parallel rank (DDP or FSDP2): the global loss, its own slice's loss, its state's bytes."""

    loss: list[float]
    local_loss: list[float]
    bytes: dict
    mode_wall_s: float = 0.0


# ---- One process: the reference ------------------------------------------------------------------
def reference_run(settings: ParallelSettings, data: torch.Tensor, device: torch.device | str | None = None) -> dict:
    """One process, the whole model, the same global batches: what every mode must reproduce. ``device``: None
    runs where ``parallel_plan()`` puts the modes (gloo on the CPU by design unless there are 2+ GPUs), so the
    two compare on the same hardware."""
    device = torch.device(device if device is not None else parallel_plan().device)
    model = build_model(settings, device)
    opt = make_optimizer(model.parameters(), settings)
    losses = []
    for x, y in global_batches(settings, data):
        loss = lm_loss(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients' memory, as every mode's measurement does
        losses.append(loss.item())
    return {"mode": "one process", "loss": losses, "bytes_per_rank": state_bytes(model, opt), "world_size": 1}


# ---- Tensor parallelism --------------------------------------------------------------------------
def qkv_head_permutation(n_embd: int, n_head: int, shards: int) -> torch.Tensor:
    """Row order for the fused ``c_attn`` (rows: all q, then all k, then all v) so that cutting it into
    ``shards`` equal pieces gives each shard q, k and v of its own ``n_head / shards`` heads."""
    hs = n_embd // n_head
    per = n_head // shards * hs
    return torch.cat([torch.arange(part * n_embd + r * per, part * n_embd + (r + 1) * per)
                      for r in range(shards) for part in range(3)])


def tensor_parallelize(model: GPT, mesh, inject: str = "none") -> list[str]:
    """Split every block's attention and MLP projections over ``mesh``; returns the split layers' names."""
    from torch.distributed.tensor import Partial
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    cfg = model.config
    perm = qkv_head_permutation(cfg.n_embd, cfg.n_head, mesh.size())
    plan = {}
    for i, block in enumerate(model.h):
        attn = block.attn
        if inject != "wrong-split":  # the mistake: cut q,k,v as stored, so rank 0 gets all of q and half of k
            with torch.no_grad():
                attn.c_attn.weight.copy_(attn.c_attn.weight[perm])
                attn.c_attn.bias.copy_(attn.c_attn.bias[perm])
        # the mistake "no-allreduce": leave the row-split output as each rank's partial sum (no all-reduce)
        row = RowwiseParallel(output_layouts=Partial()) if inject == "no-allreduce" else RowwiseParallel()
        plan.update({f"h.{i}.attn.c_attn": ColwiseParallel(), f"h.{i}.attn.c_proj": row,
                     f"h.{i}.mlp.c_fc": ColwiseParallel(), f"h.{i}.mlp.c_proj": row})
    parallelize_module(model, mesh, plan)
    for block in model.h:  # the column-split layers now output their local shard: Model 5's attention reads
        for lin in (block.attn.c_attn, block.mlp.c_fc):  # its head count from c_attn's width, so it runs
            lin.out_features //= mesh.size()  # n_head / world heads here, unchanged
    return list(plan)


def _counts(comm) -> dict:
    return {str(k).split(".")[-1].replace("_functional", ""): int(v) for k, v in comm.get_comm_counts().items()}


def run_tp(settings, data, rank, world, device, inject="none") -> TPRecord:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode

    mesh = init_device_mesh(device.type, (world,))
    ref = build_model(settings, device)
    model = build_model(settings, device)
    split = tensor_parallelize(model, mesh, inject)
    batches = global_batches(settings, data)
    x0 = batches[0][0].to(device)
    with torch.no_grad():
        out_diff = (model(x0) - ref(x0)).abs().max().item()
    opt = make_optimizer(model.parameters(), settings)
    losses, comm_fwd, comm_bwd = [], {}, {}
    for step, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        fwd, bwd = CommDebugMode(), CommDebugMode()
        with fwd:
            loss = lm_loss(model(x), y)
        with bwd:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        losses.append(loss.item())
        if step == 0:
            comm_fwd, comm_bwd = _counts(fwd), _counts(bwd)
    weights = []
    for name in split[:4]:  # block 0's four split layers: each rank holds one half of each
        lin = model.get_submodule(name)
        w = lin.weight
        weights.append({"layer": name, "full shape": list(w.shape), "local shape": list(_local(w).shape),
                        "local bytes": _nbytes(w) + (_nbytes(lin.bias) if lin.bias is not None else 0),
                        "full bytes": w.numel() * w.element_size()
                        + (lin.bias.numel() * lin.bias.element_size() if lin.bias is not None else 0)})
    split_local = sum(_nbytes(p) for n, p in model.named_parameters() if hasattr(p, "to_local"))
    split_full = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if hasattr(p, "to_local"))
    return TPRecord(losses, out_diff, split, weights, split_local, split_full, comm_fwd, comm_bwd,
                    state_bytes(model, opt))


# ---- Pipeline parallelism ------------------------------------------------------------------------
class _Mark(torch.autograd.Function):
    """Identity whose backward records the time: marks where a stage's backward starts and ends."""

    @staticmethod
    def forward(ctx, x, log, key):
        ctx.log, ctx.key = log, key
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        ctx.log[ctx.key].append(time.perf_counter())
        return g, None, None


class PipelineStageModule(nn.Module):
    """One stage of Model 5 through its seams: stage 0 ``embed``s, every stage runs ``blocks(x, start, stop)``,
    the last stage ``unembed``s. The stage keeps only its own weights (the other blocks become ``nn.Identity``,
    the embeddings and the head are dropped where unused), so its memory is the stage's. Records the time of
    its own forward and backward work in ``self.log``."""

    def __init__(self, model: GPT, blocks: list[int], first: bool, last: bool):
        super().__init__()
        self.first, self.last, self.block_ids = first, last, blocks
        self.start, self.stop = blocks[0], blocks[-1] + 1
        for i in range(len(model.h)):
            if not self.start <= i < self.stop:
                model.h[i] = nn.Identity()
        if not first:
            model.wte = model.wpe = None
        if not last:
            model.ln_f = model.lm_head = None
        self.model = model
        self.reset_log()

    def reset_log(self):
        self.log = {"fwd": [], "bwd_start": [], "bwd_end": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.first:
            x = self.model.embed(x)
        if torch.is_grad_enabled():
            x = _Mark.apply(x, self.log, "bwd_end")
        x = self.model.blocks(x, self.start, self.stop)
        if self.last:
            x = self.model.unembed(x)
        if torch.is_grad_enabled():
            x = _Mark.apply(x, self.log, "bwd_start")
        self.log["fwd"].append(time.perf_counter() - t0)
        return x

    def busy_seconds(self) -> float:
        starts, ends = self.log["bwd_start"], self.log["bwd_end"]
        return sum(self.log["fwd"]) + sum(e - s for s, e in zip(starts, ends))


def stage_blocks(n_layer: int, stages: int) -> list[list[int]]:
    if not 1 <= stages <= n_layer:
        raise ValueError(f"stages must be between 1 and the number of blocks ({n_layer}), got {stages}")
    bounds = [round(i * n_layer / stages) for i in range(stages + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(stages)]


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """GPipe's idle share per stage: (p - 1) / (m + p - 1)."""
    if stages < 1 or micro_batches < 1:
        raise ValueError("stages and micro_batches must be >= 1")
    return (stages - 1) / (micro_batches + stages - 1)


def run_pp(settings, data, rank, world, device, inject="none") -> PPRecord:
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    groups = stage_blocks(settings.n_layer, world)
    batches = global_batches(settings, data)
    runs = []
    for schedule_name in settings.schedule_names():
        for m in settings.micro_batch_counts():
            if schedule_name == "1f1b" and m < world:
                runs.append(PPRun(schedule_name, m, skipped=f"1F1B needs m >= {world} stages"))
                continue
            model = build_model(settings, device)
            stage_mod = PipelineStageModule(model, groups[rank], rank == 0, rank == world - 1)
            del model
            stage = PipelineStage(stage_mod, rank, world, device)
            cls = ScheduleGPipe if schedule_name == "gpipe" else Schedule1F1B
            schedule = cls(stage, n_microbatches=m, loss_fn=lm_loss)
            opt = make_optimizer(stage_mod.parameters(), settings)
            losses, idle = [], []
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                dist.barrier()
                stage_mod.reset_log()
                mb_losses = []
                t0 = time.perf_counter()
                if rank == 0:
                    schedule.step(x)
                elif rank == world - 1:
                    schedule.step(target=y, losses=mb_losses)
                else:
                    schedule.step()
                dist.barrier()  # the step ends when the last stage is done: the flush is part of the bubble
                wall = time.perf_counter() - t0
                opt.step()
                opt.zero_grad(set_to_none=False)
                idle.append(1 - stage_mod.busy_seconds() / wall)
                loss = torch.stack(mb_losses).mean().item() if mb_losses else float("nan")
                losses.append(loss)
            runs.append(PPRun(schedule_name, m, loss=losses, idle=idle, idle_median=median(idle[1:] or idle),
                              bubble_formula=bubble_fraction(world, m), bytes=state_bytes(stage_mod, opt)))
    return PPRecord(groups[rank], runs)


# ---- Sharded data parallelism (FSDP2) and DDP ----------------------------------------------------
def run_data_parallel(settings, data, rank, world, device, inject="none", sharded=True) -> DPRecord:
    import torch.distributed as dist

    model = build_model(settings, device)
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for block in model.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        net = model
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model.parameters(), settings)
    b = settings.batch // world
    losses, local = [], []
    for x, y in global_batches(settings, data):
        x, y = x[rank * b:(rank + 1) * b].to(device), y[rank * b:(rank + 1) * b].to(device)
        loss = lm_loss(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        total = loss.detach().clone()
        dist.all_reduce(total)  # equal slices: the mean of the ranks' means is the global batch's mean
        losses.append(total.item() / world)
        local.append(loss.item())
    return DPRecord(losses, local, state_bytes(model, opt))


def run_mode(mode: str, settings: ParallelSettings, data: torch.Tensor, rank: int, world: int,
             device: torch.device) -> TPRecord | PPRecord | DPRecord:
    """What one process does for one mode (called by ``scripts/parallel_train.py`` in every process)."""
    name, inject = parse_mode(mode)
    if name == "tp":
        return run_tp(settings, data, rank, world, device, inject)
    if name == "pp":
        return run_pp(settings, data, rank, world, device, inject)
    return run_data_parallel(settings, data, rank, world, device, inject, sharded=name == "fsdp")


def combine(mode: str, records: list, settings: ParallelSettings) -> dict:
    """Every rank's typed record of one mode -> the mode's result, a plain dict that rank 0 writes as JSON."""
    name, inject = parse_mode(mode)
    out = {"mode": mode, "kind": name, "inject": inject, "world_size": len(records),
           "mode_wall_s": max(r.mode_wall_s for r in records)}
    if name == "pp":
        out["blocks_per_rank"] = [r.blocks for r in records]
        out["runs"] = []
        for i, run in enumerate(records[-1].runs):
            merged = {"schedule": run.schedule, "m": run.m}
            if run.skipped:
                merged["skipped"] = run.skipped
            else:
                merged.update(loss=run.loss, bubble_formula=run.bubble_formula,
                              idle_per_stage=[r.runs[i].idle_median for r in records],
                              idle_steps_per_stage=[r.runs[i].idle for r in records],
                              bytes_per_rank=[r.runs[i].bytes for r in records])
            out["runs"].append(merged)
        done = [r for r in out["runs"] if "loss" in r]
        out["loss"] = done[0]["loss"] if done else []
        out["bytes_per_rank"] = done[0]["bytes_per_rank"] if done else []
        return out
    out["bytes_per_rank"] = [r.bytes for r in records]
    out["loss"] = records[0].loss
    out["rank_loss"] = [getattr(r, "local_loss", r.loss) for r in records]  # each rank's own loss
    if name == "tp":
        first = asdict(records[0])
        for k in ("output_max_diff", "split_layers", "collectives_forward", "collectives_backward",
                  "split_bytes_full"):
            out[k] = first[k]
        out["weights_per_rank"] = [r.weights for r in records]
        out["split_bytes_local"] = [r.split_bytes_local for r in records]
    return out


# ---- Launching -----------------------------------------------------------------------------------
def torchrun_command(modes: list[str], settings: ParallelSettings, plan: LaunchPlan, out, tokens) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={plan.nproc}",
            str(SCRIPT), "--modes", ",".join(modes), "--out", str(out), "--tokens", str(tokens),
            "--backend", plan.backend, "--device", plan.device, *settings.to_argv()]


def launch(modes: str | Sequence[str], settings: ParallelSettings, out: str | os.PathLike,
           tokens: str | os.PathLike, plan: LaunchPlan | None = None, timeout: float = 300,
           threads_per_process: int | None = None) -> dict:
    """Run ``scripts/parallel_train.py`` under torchrun for one mode (returns its result) or several (returns
    ``{mode: result}``), after checking the settings with ``validate``. All modes of one call share one
    launch, so the processes start once."""
    plan = plan or parallel_plan()
    single = isinstance(modes, str)
    modes = validate(modes, settings, plan.nproc)
    if plan.backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {plan.backend!r}")
    out = Path(out)
    cmd = torchrun_command(modes, settings, plan, out, tokens)
    result, wall, _ = run_torchrun(cmd, plan, out, timeout, threads_per_process)
    for r in result["modes"].values():
        r.update(backend=result["backend"], device=result["device"], launch_wall_s=wall)
    return result["modes"][modes[0]] if single else result["modes"]


# ---- Reading the results -------------------------------------------------------------------------
def pp_max_loss_difference(run: dict, ref: dict) -> float:
    """Largest loss difference over every schedule and micro-batch count of a pipeline run."""
    return max(max_loss_difference(r, ref) for r in run["runs"] if "loss" in r)


def collectives_text(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"


def parallel_table(runs: dict, ref: dict, speed_note: str | None = None) -> Table:
    """One row per mode: memory per rank (parameters + gradients + AdamW state), the largest loss difference
    from one process, the collectives per step, and speed (not measurable on a CPU)."""
    speed_note = speed_note or CPU_SPEED_NOTE
    full = ref["bytes_per_rank"]["total"]
    rows = [{"mode": "one process", "memory per rank": format_bytes(full), "vs one process": "1.00x",
             "max loss diff": "-", "collectives per step": "none", "speed": "-"}]
    names = {"tp": "tensor (TP)", "pp": "pipeline (PP)", "fsdp": "sharded data (FSDP2)", "ddp": "data (DDP)"}
    for run in runs.values():
        kind = run["kind"]
        per_rank = [b["total"] for b in run["bytes_per_rank"]]
        if kind == "tp":
            diff = max_loss_difference(run, ref)
            n = len(run["split_layers"]) // 4  # blocks: four split layers each
            fwd = {k: v // n for k, v in run["collectives_forward"].items()}
            bwd = {k: v // n for k, v in run["collectives_backward"].items()}
            comm = f"per block: {collectives_text(fwd)} forward, {collectives_text(bwd)} backward"
        elif kind == "pp":
            diff = pp_max_loss_difference(run, ref)
            comm = "send/recv of activations and their gradients, 2 per micro-batch per stage boundary"
        elif kind == "fsdp":
            diff = max_loss_difference(run, ref)
            comm = "all-gather weights (forward, backward) + reduce-scatter gradients, per sharded block"
        else:
            diff = max_loss_difference(run, ref)
            comm = "all-reduce of the gradients (bucketed)"
        speed = speed_note if run.get("device", "cpu") == "cpu" else "see the timing cell"
        rows.append({"mode": names[kind] + (f" [{run['inject']}]" if run["inject"] != "none" else ""),
                     "memory per rank": " / ".join(format_bytes(b) for b in per_rank),
                     "vs one process": f"{max(per_rank) / full:.2f}x", "max loss diff": f"{diff:.1e}",
                     "collectives per step": comm, "speed": speed})
    return Table(rows, title="Parallelism on torch.distributed, 2 processes",
                 note="memory: parameters + gradients + AdamW state, measured from each rank's local tensors")


def tp_weights_table(run: dict) -> Table:
    """Block 0's four split layers: the full weight, and the shard each rank holds (shape, bytes with bias)."""
    rows = []
    for rank, weights in enumerate(run["weights_per_rank"]):
        rows += [{"rank": rank, "layer": w["layer"], "split": "columns (output)" if "c_attn" in w["layer"]
                  or "c_fc" in w["layer"] else "rows (input)", "full shape": "x".join(map(str, w["full shape"])),
                  "shard shape": "x".join(map(str, w["local shape"])), "shard bytes": format_bytes(w["local bytes"]),
                  "of full": f"{w['local bytes'] / w['full bytes']:.2f}"} for w in weights]
    return Table(rows, title="Tensor parallelism: what each rank holds (block 0)",
                 note="a row-split layer keeps its whole bias on every rank (added once, after the all-reduce)")


def bubble_table(run: dict) -> Table:
    """Per schedule and micro-batch count: each stage's measured idle fraction next to (p - 1) / (m + p - 1)."""
    rows = []
    for r in run["runs"]:
        if "skipped" in r:
            rows.append({"schedule": r["schedule"], "m": r["m"], "formula": "-", "idle stage 0": r["skipped"]})
            continue
        row = {"schedule": r["schedule"], "m": r["m"], "formula": round(r["bubble_formula"], 3)}
        row.update({f"idle stage {i}": round(v, 3) for i, v in enumerate(r["idle_per_stage"])})
        rows.append(row)
    return Table(rows, title="Pipeline bubble: measured idle fraction per stage vs (p - 1) / (m + p - 1)",
                 note="idle = 1 - (time in the stage's own forward and backward) / (wall time of the schedule step)")


def plot_bubble(run: dict, ax=None):
    """Measured idle fraction per stage against m, with the bubble formula's curve (GPipe and 1F1B)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    done = [r for r in run["runs"] if "skipped" not in r]
    ms = sorted({r["m"] for r in done})
    p = run["world_size"]
    ax.plot(ms, [bubble_fraction(p, m) for m in ms], "k--", label="(p-1)/(m+p-1)")
    for sched, marker in (("gpipe", "o"), ("1f1b", "s")):
        rs = [r for r in done if r["schedule"] == sched]
        for i in range(p):
            if rs:
                ax.plot([r["m"] for r in rs], [r["idle_per_stage"][i] for r in rs], marker=marker,
                        label=f"{sched} stage {i}", alpha=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("idle fraction")
    ax.set_title(f"Pipeline bubble, {p} stages: measured vs formula")
    ax.legend(fontsize=8)
    return ax


# ---- Claims: one stated procedure per row ---------------------------------------------------------
#: Largest loss difference from one process that still counts as "the same training" (nats per step):
#: float32 rounding from a different order of sums gives ~1e-6 here; the injected mistakes give 1e-3 or more.
LOSS_TOL = 1e-4


def bubble_measured(run: dict, schedule: str = "gpipe") -> str:
    """The bubble row's figures, as ``bubble_table`` shows them: each stage's idle fraction per m (3 decimals,
    stages joined by "/"), then the formula's."""
    done = sorted((r for r in run["runs"] if r["schedule"] == schedule and "skipped" not in r), key=lambda r: r["m"])
    per_m = []
    for r in done:
        stages = r.get("idle_per_stage") or [median(s[1:] or s) for s in r["idle_steps_per_stage"]]
        per_m.append("/".join(f"{x:.3f}" for x in stages))
    p, ms = run["world_size"], [r["m"] for r in done]
    return (f"idle per stage {', '.join(per_m)} at m = {', '.join(map(str, ms))} (formula "
            f"{', '.join(f'{bubble_fraction(p, m):.2f}' for m in ms)})")


def parallel_facts(runs: dict, ref: dict, tol: float = LOSS_TOL) -> list[tuple[str, str]]:
    """What the parallel runs demonstrate, as ``(what, value)`` for ``ClaimsTable.fact``: every mode trains the
    same as one process (a mode that does not is a bug: ``ValueError``), the injected mistakes are caught, and
    FSDP2 holds 1/world of DDP's training state per rank. Facts, not claims: each is an identity of the engines."""
    clean = {r["kind"]: r for r in runs.values() if r["inject"] == "none"}
    need = set(MODES) - set(clean)
    if need:
        raise ValueError(f"parallel_facts needs a run of every mode; missing: {sorted(need)}")
    diffs = {k: (pp_max_loss_difference(r, ref) if k == "pp" else max_loss_difference(r, ref))
             for k, r in clean.items()}
    wrong = {k: d for k, d in diffs.items() if not d < tol}
    if wrong:
        raise ValueError(f"modes {sorted(wrong)} differ from one process by {wrong} nats (tolerance {tol:g}): the "
                         "engines do the same arithmetic in another order, so this is a bug, not noise")
    caught = [f"{r['mode']} {max_loss_difference(r, ref):.0e}" for r in runs.values() if r["inject"] != "none"]
    fsdp = max(b["total"] for b in clean["fsdp"]["bytes_per_rank"])
    ddp = max(b["total"] for b in clean["ddp"]["bytes_per_rank"])
    world = clean["fsdp"]["world_size"]
    return [
        ("TP, PP, FSDP2 and DDP train as one process does (max |loss difference| per step)",
         ", ".join(f"{k} {v:.0e}" for k, v in diffs.items()) + f" (< {tol:g} nats)"
         + (f"; injected mistakes: {', '.join(caught)}" if caught else "")),
        (f"FSDP2 holds 1/{world} of DDP's training state per rank (weights, gradients, AdamW moments)",
         f"{format_bytes(fsdp)} vs {format_bytes(ddp)} ({fsdp / ddp:.2f}x)"),
    ]


# ---- One-process demos: the arithmetic of a split --------------------------------------------------
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
    groups = stage_blocks(len(model.h), stages)
    if len(idx) % micro_batches:
        raise ValueError(f"batch {len(idx)} does not split into {micro_batches} equal micro-batches")
    outs = []
    for mb in idx.chunk(micro_batches):
        x = model.embed(mb)  # stage 0 also embeds
        for group in groups:  # on real hardware: send x to the next device here
            x = model.blocks(x, group[0], group[-1] + 1)
        outs.append(model.unembed(x))  # the last stage unembeds (and crops a padded vocabulary)
    return torch.cat(outs), groups


def pipeline_schedule(stages: int, micro_batches: int) -> tuple[str, float]:
    """A GPipe forward schedule as text (rows = stages, columns = time slots, digits = micro-batch)
    and its bubble fraction (p - 1) / (m + p - 1): the share of slots a stage sits idle."""
    frac = bubble_fraction(stages, micro_batches)
    slots = micro_batches + stages - 1
    lines = []
    for s in range(stages):
        row = ["."] * slots
        for m in range(micro_batches):
            row[s + m] = str(m % 10)
        lines.append(f"stage {s}: " + " ".join(row))
    return "\n".join(lines), frac
