"""Distributed training plumbing: process group, device, DDP / FSDP2 wrapping, collectives.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls the same functions; in a single
process they reduce to no-ops. Only :mod:`cogqa.train` and :mod:`cogqa.checkpoint` use this
module, and torch is imported inside the functions (importing cogqa stays torch-free).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank (GPU index on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def is_main_process() -> bool:
    """True unless torchrun says this is a rank other than 0 (``RANK``); usable before :func:`setup`."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device_type: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) if ``WORLD_SIZE`` > 1; returns the :class:`Dist`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        here = True
    return Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        initialised_here=here,
    )


def teardown(dist_info: Dist) -> None:
    """Leave the process group if :func:`setup` created it."""
    if dist_info.initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def pick_device(requested: str, dist_info: Dist):
    """The torch device: ``requested`` unless ``"auto"``, else this rank's GPU, else the CPU."""
    import torch

    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def barrier(dist_info: Dist) -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor, dist_info: Dist) -> None:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)


def all_reduce_max(tensor, dist_info: Dist) -> None:
    """Elementwise maximum of ``tensor`` over ranks in place (no-op in a single process): how ranks agree
    on a flag any one of them raised (a stop signal, a wall-clock checkpoint)."""
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def wrap(model, dist_info: Dist, fsdp: bool, device):
    """(model to train, sharded): DDP around ``model``, FSDP2 ``fully_shard`` per block and whole,
    or ``model`` itself."""
    if dist_info.world <= 1:
        return model, False
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for p in model.parameters():  # FSDP2 shards contiguous tensors only (GQADecoder stores some column-major)
            p.data = p.data.contiguous()
        for block in blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model, True
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None), False


def blocks(model) -> list:
    """The transformer blocks of a GQADecoder (for per-block FSDP2 sharding)."""
    import torch

    for name in ("layers", "blocks", "h"):
        found = getattr(model, name, None)
        if isinstance(found, torch.nn.ModuleList):
            return list(found)
    return []


def unwrap(model):
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def full_tensor(t):
    """A plain tensor from a possibly-DTensor value (FSDP2 grad norms are DTensors)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def no_sync(train_model, sharded: bool, last_micro: bool):
    """A context that skips the gradient all-reduce on every micro-batch but the last one."""
    if last_micro:
        return contextlib.nullcontext()
    if hasattr(train_model, "no_sync"):  # DDP
        return train_model.no_sync()
    if sharded and hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        return _ReenableSync(train_model)
    return contextlib.nullcontext()


class _ReenableSync:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model.set_requires_gradient_sync(True)
        return False


def full_state_dicts(model, optimizer, dist_info: Dist):
    """(model state dict, optimizer state dict), full and on CPU (gathered collectively on every rank)."""
    if dist_info.world > 1:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return model.state_dict(), optimizer.state_dict()


def load_full_state_dicts(model, optimizer, model_state: dict, optimizer_state: dict, dist_info: Dist) -> None:
    """Load full (unsharded) model and optimizer state dicts into the possibly wrapped objects."""
    if dist_info.world > 1:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
