"""Data parallelism for real: ``torch.distributed`` + ``DistributedDataParallel``, started by ``torchrun``.

Every process (a "rank") holds a full copy of Model 5, takes its own slice of each global batch,
runs forward and backward on it, and DDP averages the gradients across ranks (an all-reduce) during
backward, so every rank applies the same update and the copies never drift apart. With equal
slices, the average of the ranks' mean losses is the mean loss of the whole batch: the run is the
same computation as one process on the global batch, split in pieces.

    from course_utils.lessons import l1_ddp
    settings = l1_ddp.DDPSettings(steps=8, global_batch=8, block_size=32)
    plan = l1_ddp.launch_plan()                      # how many processes, which backend, which device
    run = l1_ddp.launch(settings, plan, out="outputs/ddp.json", tokens="outputs/tokens.pt")
    ref = l1_ddp.reference_run(settings, l1_ddp.load_token_stream("outputs/tokens.pt"))
    l1_ddp.max_loss_difference(run, ref)             # same global batch -> same losses, up to rounding

The per-process side lives in ``scripts/ddp_train.py``; this module holds what both sides share.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..data import get_batch
from ..measure import median
from ..model import GPT, GPTConfig
from ..paths import REPO_ROOT
from ..validate import at_least, positive

SCRIPT = REPO_ROOT / "scripts" / "ddp_train.py"
BACKENDS = ("auto", "gloo", "nccl")
AMP_MODES = ("off", "bf16", "fp16", "auto")


class ArgvSettings:
    """A settings dataclass that travels to ``torchrun``'s processes as command-line flags and back."""

    def to_argv(self) -> list[str]:
        return [a for f in fields(self) for a in (f"--{f.name.replace('_', '-')}", str(getattr(self, f.name)))]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in fields(cls):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace):
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


@dataclass
class RunSettings(ArgvSettings):
    """What every Lesson 1 torchrun run shares: Model 5's size, the steps and the optimizer (the data-parallel
    ``DDPSettings`` and ``l1_parallel.ParallelSettings`` extend it). Every field is validated on creation, so a
    bad value fails in the notebook, not inside torchrun's processes."""

    steps: int = 8
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    vocab_size: int = 50257
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "block_size", "n_layer", "n_head", "n_embd", "vocab_size"):
            at_least(self, name, 1)
        at_least(self, "seed", 0)
        positive(self, "lr", "e.g. 1e-3")
        if self.n_embd % self.n_head:
            raise ValueError(f"{type(self).__name__}.n_embd = {self.n_embd} does not split into n_head = "
                             f"{self.n_head} heads; use a width that is a multiple of the head count")

    def model_config(self, **overrides) -> GPTConfig:
        # dropout off: its random masks would differ between one process and several, and the lesson compares
        # the runs number by number
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=0.0, **overrides)


@dataclass
class DDPSettings(RunSettings):
    """One data-parallel training run: the model, the global batch and the optimizer settings."""

    global_batch: int = 8  # sequences per optimizer step, summed over all processes
    amp: str = "off"

    def __post_init__(self):
        super().__post_init__()
        at_least(self, "global_batch", 1)
        if self.amp not in AMP_MODES:
            raise ValueError(f"DDPSettings.amp = {self.amp!r}: it must be one of {AMP_MODES}")


@dataclass
class LaunchPlan:
    nproc: int
    backend: str  # "gloo" or "nccl"
    device: str  # "cpu" or "cuda"
    why: str


def launch_plan(nproc: int | None = None) -> LaunchPlan:
    """How to run data parallelism on this machine.

    2+ GPUs: one process per GPU with NCCL (the real thing). One GPU: two processes sharing it,
    gradients averaged through gloo (the mechanics, no speed-up possible). No GPU: two CPU
    processes with gloo.
    """
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpu >= 2:
        return LaunchPlan(nproc or n_gpu, "nccl", "cuda", f"{n_gpu} GPUs: one process per GPU, NCCL all-reduce")
    if n_gpu == 1:
        return LaunchPlan(nproc or 2, "gloo", "cuda",
                          "one GPU: two processes share it (gloo all-reduce); a speed-up needs 2+ GPUs")
    return LaunchPlan(nproc or 2, "gloo", "cpu", "no GPU: two CPU processes (gloo all-reduce) share the CPU cores")


def load_token_stream(source: str | os.PathLike) -> torch.Tensor:
    """A 1-D token-id tensor: a file written with ``torch.save``, or a course text name ("alice", ...)."""
    from ..data import TEXTS, load_tokens

    if str(source) in TEXTS:
        return load_tokens(str(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"token file {path} does not exist; save one with torch.save(ids, path) "
                                f"or pass a course text name ({', '.join(TEXTS)})")
    ids = torch.load(path, weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"{path} must hold a 1-D integer tensor of token ids")
    return ids.long()


def shard_batches(data: torch.Tensor, settings: DDPSettings, rank: int, world_size: int):
    """Batches for one rank: every rank draws the same global batch (same generator seed) and keeps
    its own contiguous slice of ``global_batch / world_size`` sequences."""
    if settings.global_batch % world_size:
        raise ValueError(f"global_batch={settings.global_batch} does not split evenly over {world_size} processes; "
                         "pick a multiple of the number of processes")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    b = settings.global_batch // world_size

    def batches(gen: torch.Generator):
        x, y = get_batch(data, settings.global_batch, settings.block_size, generator=gen)
        return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]

    return batches


def param_fingerprint(model: torch.nn.Module) -> float:
    """One number summarizing every weight (sum of |w| in float64): equal copies give equal numbers."""
    return float(sum(p.detach().double().abs().sum().item() for p in model.parameters()))


def train_shard(settings: DDPSettings, data: torch.Tensor, rank: int, world_size: int, device: torch.device):
    """Build Model 5 (same seed on every rank), wrap it in DDP when a process group is running, and
    train on this rank's slices with ``course_utils.train.train`` on ``device`` (resolved by the caller: the
    script from its flags, ``reference_run`` from the plan). Returns (model, history)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..train import TrainConfig, train

    device = torch.device(device)
    torch.manual_seed(settings.seed)  # identical initial weights everywhere (DDP also broadcasts rank 0's)
    model = GPT(settings.model_config()).to(device)
    net = model
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    cfg = TrainConfig(steps=settings.steps, lr=settings.lr, seed=settings.seed, amp=settings.amp,
                      progress=False, desc=f"rank {rank}")
    history = train(net, shard_batches(data, settings, rank, world_size), cfg, device=device)
    return model, history


def summarize(settings: DDPSettings, per_rank: list[dict], backend: str, device: str, wall_s: float) -> dict:
    """Combine every rank's record into the run's result (what the script writes as JSON)."""
    world = len(per_rank)
    steps = len(per_rank[0]["loss"])
    loss = [sum(r["loss"][i] for r in per_rank) / world for i in range(steps)]  # mean of equal-sized slices
    tok_s = [r["tokens_per_s"] for r in per_rank]
    return {
        "settings": asdict(settings),
        "world_size": world,
        "backend": backend,
        "device": device,
        "loss": loss,
        "rank_loss": [r["loss"] for r in per_rank],
        "step_time": per_rank[0]["step_time"],
        "tokens_per_s_per_process": tok_s,
        "tokens_per_s_total": sum(tok_s),
        "param_fingerprints": [r["fingerprint"] for r in per_rank],
        "train_wall_s": wall_s,
    }


def rank_record(model, history, skip: int = 1) -> dict:
    """What one rank reports: its losses, step times, throughput (warm-up steps skipped), weights' fingerprint."""
    times = history.step_time[skip:] or history.step_time
    tokens = history.tokens_seen[0]
    return {"loss": history.train_loss, "step_time": history.step_time, "tokens_per_s": tokens / median(times),
            "fingerprint": param_fingerprint(model)}


def reference_run(settings: DDPSettings, data: torch.Tensor, device: torch.device | str | None = None) -> dict:
    """One process, no DDP, the same global batch: what the data-parallel run must reproduce. ``device``: None
    runs where ``launch_plan()`` puts the data-parallel processes (gloo runs on the CPU by design when there are
    fewer than 2 GPUs), so that the two runs compare on the same hardware."""
    device = torch.device(device if device is not None else launch_plan().device)
    t0 = time.perf_counter()
    model, history = train_shard(settings, data, 0, 1, device)
    return summarize(settings, [rank_record(model, history)], "none", str(device), time.perf_counter() - t0)


def script_parser(doc: str, settings_cls: type[ArgvSettings]) -> argparse.ArgumentParser:
    """The argument parser both torchrun scripts share (``scripts/ddp_train.py``, ``scripts/parallel_train.py``):
    ``--out``, ``--tokens``, ``--backend``, ``--device`` and one flag per field of ``settings_cls``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where rank 0 writes the run's JSON")
    parser.add_argument("--tokens", default="alice", help="a torch.save'd 1-D token tensor, or a course text name")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cpu: gloo on the CPU (by design, where there are fewer than 2 GPUs); cuda: one GPU "
                             "per process")
    settings_cls.add_arguments(parser)
    return parser


def script_device(parser: argparse.ArgumentParser, args: argparse.Namespace, world_size: int,
                  local_rank: int) -> torch.device:
    """This process's device from the shared flags, checked (``parser.error`` explains a bad combination)."""
    if args.backend == "nccl" and args.device != "cuda":
        parser.error("the nccl backend needs --device cuda (one GPU per process)")
    if args.device != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        parser.error("--device cuda, but this machine has no CUDA GPU; use --device cpu --backend gloo")
    n_gpu = torch.cuda.device_count()
    if args.backend == "nccl" and world_size > n_gpu:
        parser.error(f"nccl needs one GPU per process: {world_size} processes, {n_gpu} GPUs")
    device = torch.device("cuda", local_rank % n_gpu)
    torch.cuda.set_device(device)
    return device


def torchrun_command(
    settings: DDPSettings, plan: LaunchPlan, out: str | os.PathLike, tokens: str | os.PathLike
) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N scripts/ddp_train.py ...``
    (the module form of ``torchrun``, so it uses this notebook's Python)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={plan.nproc}",
            str(SCRIPT), "--out", str(out), "--tokens", str(tokens), "--backend", plan.backend,
            "--device", plan.device, *settings.to_argv()]


def run_torchrun(cmd: list[str], plan: LaunchPlan, out: Path, timeout: float,
                 threads_per_process: int | None = None) -> tuple[dict, float, int]:
    """Run a torchrun command that writes its result as JSON to ``out``: (result, wall seconds, CPU threads per
    process). A hang or a failure raises ``RuntimeError`` with the command and the end of its output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # never read a previous run's result
    env = dict(os.environ)
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // plan.nproc)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"torchrun did not finish within {timeout} s; run it by hand to see where it hangs:\n"
                           f"  {shlex.join(cmd)}") from err
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"torchrun failed (exit code {proc.returncode}). Command:\n  {shlex.join(cmd)}\n"
                           f"Last lines of its output:\n{tail}")
    return json.loads(out.read_text()), time.perf_counter() - t0, threads


def launch(settings: DDPSettings, plan: LaunchPlan, out: str | os.PathLike, tokens: str | os.PathLike,
           timeout: float = 300, threads_per_process: int | None = None) -> dict:
    """Run the script under torchrun, wait for it, and return its JSON result (plus the launch's wall time).

    CPU processes get ``threads_per_process`` threads each (default: the cores divided among them), so
    they do not fight over the cores.
    """
    if plan.backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {plan.backend!r}")
    if plan.nproc < 1:
        raise ValueError(f"need at least one process, got nproc={plan.nproc}")
    out = Path(out)
    cmd = torchrun_command(settings, plan, out, tokens)
    result, wall, threads = run_torchrun(cmd, plan, out, timeout, threads_per_process)
    result["launch_wall_s"] = wall
    result["threads_per_process"] = threads if plan.device == "cpu" else None
    # shown without this machine's paths: the script relative to the repository, the run's files by name
    shown = [str(SCRIPT.relative_to(REPO_ROOT)) if a == str(SCRIPT) else a.replace(str(out.parent), "RUN_DIR")
             for a in cmd[3:]]
    result["command"] = shlex.join(["torchrun", *shown])
    return result


def max_loss_difference(a: dict, b: dict) -> float:
    """Largest per-step difference between two runs' (global) training losses."""
    if len(a["loss"]) != len(b["loss"]):
        raise ValueError(f"the runs have different lengths: {len(a['loss'])} and {len(b['loss'])} steps")
    return max(abs(x - y) for x, y in zip(a["loss"], b["loss"]))


def exit_without_teardown(code: int) -> None:
    """End a torchrun worker right after its result is written, skipping the interpreter's teardown.

    After ``destroy_process_group``, gloo's and DDP's C++ threads can still be joinable when Python destroys them,
    which aborts the process ("terminate called without an active exception", SIGABRT) after the result was
    written: about 1 run in 6 on a 2-core CPU. Flush what was printed, then ``os._exit``.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
