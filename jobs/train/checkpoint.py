"""Resumable checkpoints, written straight to the run's output location (a folder, a volume or a URI).

Layout: `<output>/checkpoints/step-00000200/` holds the model and optimizer through
torch.distributed.checkpoint (each rank writes its own shard files, on a shared store or volume,
never on a pod's own disk), each rank's RNG state, a copy of the metrics so far, and
`trainer_state.json`, which rank 0 writes last once every rank has finished: a checkpoint without
it is incomplete and never resumed from, so a kill at any moment leaves the previous checkpoint
usable. Older checkpoints are deleted only after the new one is complete.

Rank 0 alone lists the checkpoints and decides where to resume; every rank follows that decision,
so ranks never disagree about the step (and never enter different collectives) when a listing
changes under them. The learning rate is a function of the step and the data order a function of
(seed, step), so the step number is the whole scheduler and data-loader state.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from alpaca_jobs.storage import Store

from .distributed import Topology, barrier, broadcast_object

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
_PREFIX = "step-"
_STATE = "trainer_state.json"
METRICS_COPY = "metrics.jsonl"


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    tokens: int  # real tokens trained on so far
    examples: int  # examples consumed so far
    world_size: int


def _name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def complete(store: Store) -> list[str]:
    """Names of the complete checkpoints under `store` (the checkpoints folder), oldest first."""
    names = [n for n in store.list() if n.startswith(_PREFIX) and n[len(_PREFIX):].isdigit()]
    return sorted(n for n in names if store.exists(f"{n}/{_STATE}"))


def resume_point(store: Store, topology: Topology) -> str | None:
    """The checkpoint every rank resumes from: rank 0's choice, broadcast."""
    choice = None
    if topology.is_main:
        found = complete(store)
        choice = found[-1] if found else None
    return broadcast_object(choice)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _dcp_io(store: Store, name: str, *, write: bool) -> dict[str, Any]:
    """torch.distributed.checkpoint's reader or writer for a checkpoint folder of `store`."""
    import torch.distributed.checkpoint as dcp

    if store.remote:
        return {"storage_writer": dcp.FsspecWriter(store.url(name))} if write else {"storage_reader": dcp.FsspecReader(store.url(name))}
    return {"checkpoint_id": store.path(name)}


def save(store: Store, state: TrainerState, model: nn.Module, optimizer: torch.optim.Optimizer, topology: Topology,
         metrics: bytes | None = None) -> str:
    """Write checkpoint `state.step` under `store` (the checkpoints folder); returns its name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = _name(state.step)
    if topology.is_main:
        store.remove(name)  # leftovers of an attempt that died before its marker
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, no_dist=not topology.distributed, **_dcp_io(store, name, write=True))
    buffer = io.BytesIO()
    torch.save(_rng_state(), buffer)
    store.write_bytes(f"{name}/rng-rank{topology.rank}.pt", buffer.getvalue())
    barrier()
    if topology.is_main:
        if metrics is not None:
            store.write_bytes(f"{name}/{METRICS_COPY}", metrics)
        store.write_text(f"{name}/{_STATE}", json.dumps(asdict(state)))  # the marker: now it is complete
        for old in complete(store):
            if old != name:
                store.remove(old)
    barrier()
    return name


def load(store: Store, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, topology: Topology) -> TrainerState:
    """Restore checkpoint `name` in place.

    torch.distributed.checkpoint reshards on load, so a different number of processes can resume;
    each step still sees the same global batch, only dropout's random streams differ then.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = TrainerState(**json.loads(store.read_text(f"{name}/{_STATE}")))
    if state.world_size != topology.world_size:
        log.warning("%s was written by %d processes, resuming with %d", store.url(name), state.world_size, topology.world_size)
    model_state, optim_state = get_state_dict(model, optimizer)
    bundle = {"model": model_state, "optim": optim_state}
    dcp.load(bundle, no_dist=not topology.distributed, **_dcp_io(store, name, write=False))
    set_state_dict(model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"])
    rng_file = f"{name}/rng-rank{topology.rank}.pt"
    if not store.exists(rng_file):
        return state
    rng = torch.load(io.BytesIO(store.read_bytes(rng_file)), weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def metrics_copy(store: Store, name: str) -> bytes | None:
    return store.read_bytes(f"{name}/{METRICS_COPY}") if store.exists(f"{name}/{METRICS_COPY}") else None
