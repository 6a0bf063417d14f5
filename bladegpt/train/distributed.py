"""This process's place in a torchrun job: PyTorch's own DistributedDataParallel, never a home-made one."""

from __future__ import annotations

import functools
import os
import shlex
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from bladegpt.errors import ConfigError
from bladegpt.runtime import resolve_device


@dataclass
class Distributed:
    """This process's place in a torchrun job (world 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)

    def command(self, args: list[str]) -> str:
        """`bladegpt ARGS` as a user starts it again the way this job was started, each word quoted for the shell
        (a run folder named 'my notes-1'): under torchrun with `--` before ARGS, since torchrun reads its own
        options up to it and stops at train's --run ('ambiguous option: --run could match --run-path, --run_path',
        torch 2.13 on Python 3.11)."""
        args = shlex.join(args)
        if self.world == 1:
            return f"bladegpt {args}"
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        launch = f"--standalone --nproc_per_node={local}" if local == self.world else "YOUR-OPTIONS"
        return f"torchrun {launch} -m bladegpt -- {args}"

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(ddp: Distributed, device_name: str) -> torch.device:
    device = resolve_device(device_name)
    if ddp.world == 1:
        return device
    if device.type == "cuda":
        local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), ddp.local_rank + 1)
        if local > torch.cuda.device_count():  # said by every rank here: one alone leaves the rest waiting in init
            raise ConfigError(
                f"torchrun started more processes on this machine than it has GPUs ({torch.cuda.device_count()}): "
                f"use --nproc_per_node={torch.cuda.device_count()}, or train on the CPU with --device cpu."
            )
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


@functools.cache
def first_to_stop() -> bool:
    """Whether this process is the first of its torchrun job to stop on an error or a Ctrl-C (alone: always).
    The first says why, once; the others stop without a word, their own error a consequence of it (a collective
    whose peer left). Counted in the store torchrun's agent hosts for the job (MASTER_ADDR:MASTER_PORT while
    TORCHELASTIC_USE_AGENT_STORE), which outlives the ranks; where there is none, rank 0 speaks. Cached: train()
    asks before it closes the process group, so that no peer's consequence is counted first; the CLI asks again."""
    ddp = Distributed.from_env()
    if ddp.world == 1:
        return True
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return ddp.main
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=10))
        # a restarted job (torchrun --max-restarts) counts afresh
        return store.add(f"bladegpt/stopped/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", 1) == 1
    except (RuntimeError, KeyError, ValueError):  # the agent already gone: rank 0 speaks
        return ddp.main
