"""The torchrun environment, process groups, and FSDP2 sharding of the decoder layers.

A Kubeflow PyTorchJob starts `torchrun` in each pod with MASTER_ADDR, MASTER_PORT and the PET_*
variables; torchrun then gives each worker RANK, LOCAL_RANK and WORLD_SIZE. A plain process (local
mode, tests) has none of them and trains alone without a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def topology_from_env(env: dict[str, str] | None = None) -> Topology:
    env = dict(os.environ if env is None else env)
    try:
        return Topology(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
        )
    except ValueError as exc:
        raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {exc}") from None


def choose_device(topology: Topology, want_gpu: bool) -> torch.device:
    if want_gpu and torch.cuda.is_available():
        torch.cuda.set_device(topology.local_rank)
        return torch.device("cuda", topology.local_rank)
    return torch.device("cpu")


def start(topology: Topology, device: torch.device) -> None:
    if topology.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, found by the class names transformers marks as unsplittable."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return layers


def shard(model: nn.Module, *, bf16: bool) -> None:
    """FSDP2 full sharding: each decoder layer is its own unit (gathered just for its forward and
    backward), the root holds the embeddings, final norm and head."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Gradients are reduced in fp32 even when compute is bf16: summing many bf16 shards loses bits.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        # The last layer's backward comes right after its forward: freeing its gathered weights
        # in between would only gather them again at once.
        fully_shard(layer, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(model, mp_policy=policy)


def sharding_summary(model: nn.Module) -> dict[str, Any]:
    """How much of the model this rank holds, and how it is split."""
    from torch.distributed.tensor import DTensor

    local = total = 0
    placements: set[str] = set()
    for param in model.parameters():
        total += param.numel()
        if isinstance(param, DTensor):
            local += param.to_local().numel()
            placements.update(str(p) for p in param.placements)
        else:
            local += param.numel()
            placements.add("Replicate()")
    return {"localParameters": local, "totalParameters": total, "placements": sorted(placements)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (small picklable things: configs, decisions)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter unsharded, on the CPU of rank 0 (other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def sync_this_micro_step(world_size: int, micro: int, micro_steps: int) -> bool:
    """Whether the backward of micro-step `micro` reduce-scatters gradients.

    Across ranks, only the last micro-step of an optimizer step does: the others accumulate
    unsharded gradients locally (in the fp32 reduce dtype), which saves micro_steps - 1
    reduce-scatters per step at the price of one unsharded fp32 copy of the gradients per rank.
    A single process has nothing to reduce and keeps the sharded, smaller accumulation.
    """
    return world_size == 1 or micro == micro_steps - 1


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2's switch for the next backward; a no-op for an unsharded model."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(enabled)
