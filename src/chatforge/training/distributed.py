"""Multi-process training with torch.distributed: one `Dist` object per process, set up from torchrun's environment.

`setup(tcfg)` reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (set by torchrun or `chatforge train --nproc N`), starts the
process group (gloo on CPU, nccl on CUDA, `train.dist_timeout_s` for every collective) and returns the `Dist` that
the session and loop consult; without torchrun it returns a single-process `Dist` whose methods do nothing.

How a distributed step stays equal to one process at the same global batch:
- the batch plan is the one-process plan at `train.batch_size x world` sequences per batch; rank r trains the r-th
  contiguous slice of every planned batch (a rank whose slice is empty runs a zero-weight dummy so every rank
  enters the same collectives);
- the normaliser (trained tokens or pairs) is summed over all ranks before the first backward, and each rank's
  loss is scaled by `world / global count`: DDP and FSDP2 average gradients over ranks, which gives the same
  gradient as one process dividing by the global count;
- gradients synchronise only on the last micro-batch of a step (`no_sync` / `set_requires_gradient_sync`).

`train.distributed`: `ddp` wraps the model in DistributedDataParallel; `fsdp2` shards every decoder layer and then
the root with `torch.distributed.fsdp.fully_shard` (parameters, gradients and optimizer state sharded;
`train.fsdp_cpu_offload` keeps the shards in CPU memory); `auto` = ddp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch

from chatforge.errors import ChatforgeError, NotSupportedError

_CURRENT: Dist | None = None


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "single"  # single | ddp | fsdp2
    timeout_s: float = 600.0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group exists (also for a world of one under torchrun with ddp/fsdp2)."""
        return self.mode != "single"

    def barrier(self) -> None:
        if self.active:
            with self.guard("barrier"):
                torch.distributed.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` over ranks (a copy on the collective's device, returned on the input's device)."""
        if not self.active:
            return values
        t = values.detach().to(self.comm_device, torch.float64).clone()
        with self.guard("all_reduce"):
            torch.distributed.all_reduce(t)
        return t.to(values.device)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        with self.guard("broadcast"):
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a collective that failed because a peer died or timed out into one clear error."""
        try:
            yield
        except (torch.distributed.DistError, RuntimeError) as err:
            if not self.active or not _is_comm_error(err):
                raise
            raise lost_peer(self, what, err) from err

    def shard(self, idx: list[int]) -> list[int]:
        """This rank's contiguous slice of one global batch (possibly empty for the last, short batch)."""
        if self.world == 1:
            return idx
        per = -(-len(idx) // self.world)
        return idx[self.rank * per : (self.rank + 1) * per]

    @contextlib.contextmanager
    def grad_sync(self, model: torch.nn.Module, sync: bool) -> Iterator[None]:
        """Gradient reduction only when `sync` (the step's last micro-batch): no needless all-reduces."""
        if self.mode == "ddp" and not sync:
            with model.no_sync():
                yield
            return
        if self.mode == "fsdp2":
            model.set_requires_gradient_sync(sync)
        yield

    def wrap(self, model: torch.nn.Module, tcfg, device: torch.device) -> torch.nn.Module:
        """The module the loop trains: `model` itself, a DDP wrapper, or `model` sharded in place by FSDP2."""
        if self.mode == "ddp":
            ids = None
            if device.type == "cuda":
                ids = [device.index if device.index is not None else torch.cuda.current_device()]
            return _DDP(
                model,
                device_ids=ids,
                broadcast_buffers=False,  # no buffer changes while training (rotary tables are constants)
                find_unused_parameters=False,
            )
        if self.mode == "fsdp2":
            return fsdp2_shard(model, tcfg)
        return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that lets the objective reach the wrapped model's attributes (config, get_base_model, disable_adapter),
    while calls still go through DDP's forward, which arms its gradient hooks."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated decoder blocks of a causal LM (also under peft), the units FSDP2 shards one by one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(base.get_decoder(), "layers", None)
    if layers is None:
        raise NotSupportedError(f"train.distributed=fsdp2: {type(base).__name__} has no decoder .layers to shard")
    return list(layers)


def fsdp2_shard(model: torch.nn.Module, tcfg) -> torch.nn.Module:
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    kwargs = {"offload_policy": CPUOffloadPolicy()} if tcfg.fsdp_cpu_offload else {}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)  # the root: embeddings, final norm, output head (kept gathered between fwd/bwd)
    return model


def _is_comm_error(err: BaseException) -> bool:
    if isinstance(err, torch.distributed.DistError):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer"))


def lost_peer(d: Dist, what: str, err: BaseException) -> ChatforgeError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return ChatforgeError(
        f"rank {d.rank}/{d.world}: {what} failed: another rank died or did not answer within "
        f"train.dist_timeout_s={d.timeout_s:g} s ({first}); the run stops here. Its last complete checkpoint "
        "(if any) continues with train.resume=auto"
    )


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ChatforgeError(f"environment variable {name}={raw!r} is not an integer") from None


def setup(tcfg, device_hint: str = "auto") -> Dist:
    """Start (once) the process group torchrun asked for; the single-process `Dist` when not under torchrun."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = _env_int("WORLD_SIZE", 1)
    under_torchrun = "MASTER_ADDR" in os.environ and "RANK" in os.environ
    if world > 1 and not under_torchrun:
        raise ChatforgeError(
            f"WORLD_SIZE={world} but RANK/MASTER_ADDR are not set: launch with torchrun or chatforge train --nproc N"
        )
    if not under_torchrun or (world == 1 and tcfg.distributed == "auto"):
        _CURRENT = Dist(timeout_s=tcfg.dist_timeout_s)
        return _CURRENT
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world > 1 and device_hint.startswith("cuda:"):
        raise ChatforgeError(
            f"model.device={device_hint} under torchrun: every rank would use that one GPU; set model.device=auto "
            "(or cuda): each rank then uses the GPU of its LOCAL_RANK"
        )
    use_cuda = device_hint != "cpu" and torch.cuda.is_available() and device_hint.startswith(("auto", "cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ChatforgeError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA devices: "
                "start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)  # model.device=auto/cuda then means this rank's own GPU
    backend = "nccl" if use_cuda else "gloo"
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group(backend=backend, timeout=timedelta(seconds=tcfg.dist_timeout_s))
        except (torch.distributed.DistError, RuntimeError, ValueError) as err:
            raise ChatforgeError(
                f"rank {rank}: could not join the process group ({backend}, MASTER_ADDR="
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {err}"
            ) from err
    mode = "ddp" if tcfg.distributed == "auto" else tcfg.distributed
    _CURRENT = Dist(rank, world, local_rank, mode, tcfg.dist_timeout_s, backend)
    return _CURRENT


def current() -> Dist:
    """The `Dist` of this process (single-process until `setup` started a group)."""
    return _CURRENT or Dist()


def teardown() -> None:
    global _CURRENT
    if _CURRENT is not None and _CURRENT.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CURRENT = None


def grad_norm_value(norm) -> float:
    """clip_grad_norm_'s result as a float; under FSDP2 it is a DTensor (already reduced over shards)."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def check_supported(cfg, d: Dist) -> None:
    """Refuse the combinations the distributed path does not implement, before any work."""
    if not d.active:
        return
    from chatforge.training.adapters import VIRTUAL_TOKEN_METHODS

    method = cfg.peft.finetuning.lower()
    if d.mode == "fsdp2" and method in VIRTUAL_TOKEN_METHODS:
        raise NotSupportedError(
            f"train.distributed=fsdp2 with peft.finetuning={method}: virtual-token methods are not sharded; "
            "use train.distributed=ddp"
        )
    if d.mode == "fsdp2" and getattr(cfg.model, "quantization", None):
        raise NotSupportedError("train.distributed=fsdp2 with a quantized (QLoRA) base is not supported; use ddp")
