"""Resumable checkpoints: model and optimizer through torch.distributed.checkpoint, plus RNG and the step.

Each rank writes its own shard of the model and optimizer (that is what makes a 7B checkpoint
fast and small per rank); rank 0 writes the small shared files and publishes the folder. A
checkpoint is written under a temporary name and renamed once every rank has finished, so a kill
at any moment leaves either the previous checkpoint or the new one, never half of one. The
learning rate is a function of the step and the data order a function of (seed, step), so the
step number is the whole scheduler and data-loader state.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import Topology, barrier

log = logging.getLogger(__name__)

_PREFIX = "step-"
_STATE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int  # optimizer steps completed
    tokens: int  # real tokens trained on so far
    examples: int  # examples consumed so far
    world_size: int


def _name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, if any."""
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.name.startswith(_PREFIX) and (p / _STATE).is_file() and p.suffix == "")
    return done[-1] if done else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save(folder: Path, state: TrainerState, model: nn.Module, optimizer: torch.optim.Optimizer, topology: Topology) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = folder / _name(state.step)
    staging = folder / f"{_name(state.step)}.partial"
    if topology.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(staging), no_dist=not topology.distributed)
    torch.save(_rng_state(), staging / f"rng-rank{topology.rank}.pt")
    barrier()
    if topology.is_main:
        (staging / _STATE).write_text(json.dumps(asdict(state)))
        staging.rename(final)
        for old in folder.iterdir():
            if old.name.startswith(_PREFIX) and old != final:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, topology: Topology) -> TrainerState:
    """Restore a checkpoint in place.

    torch.distributed.checkpoint reshards on load, so a different number of processes can resume;
    each step still sees the same global batch, only dropout's random streams differ then.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = TrainerState(**json.loads((path / _STATE).read_text()))
    if state.world_size != topology.world_size:
        log.warning("%s was written by %d processes, resuming with %d", path, state.world_size, topology.world_size)
    model_state, optim_state = get_state_dict(model, optimizer)
    bundle = {"model": model_state, "optim": optim_state}
    dcp.load(bundle, checkpoint_id=str(path), no_dist=not topology.distributed)
    set_state_dict(model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"])
    rng_file = path / f"rng-rank{topology.rank}.pt"
    if not rng_file.is_file():
        return state
    rng = torch.load(rng_file, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
