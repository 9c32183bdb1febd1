"""PartyLayout: where RSS3PC's three parties run (nodes, processes per node, devices, backend, whether to spawn).

One machine (num_nodes=1): three party processes, on CPU, on three GPUs, or all on one GPU. Three hosts (num_nodes=3,
devices=1): one party per host. RSS3PC holds one and delegates its layout properties (num_nodes, num_processes,
root_device, set_world_ranks) to it.
"""
from __future__ import annotations

from typing import Optional

import torch


class PartyLayout:
    """Processes, devices and ranks of the three parties; `resolve` checks them and picks the backend."""

    def __init__(self, backend_choice: Optional[str] = None):
        self.backend_choice = backend_choice
        self.num_nodes = 1
        self.procs_per_node = 3
        self.backend = "gloo"
        self.spawn = True

    @staticmethod
    def root_device(devices, local_rank: int) -> torch.device:
        if not devices:
            return torch.device("cpu")
        return devices[min(local_rank, len(devices) - 1)]

    def resolve(self, devices, cluster_environment) -> list:
        """Check the layout; returns this node's devices (one per party process) and sets backend and spawn."""
        nodes = self.num_nodes
        if nodes not in (1, 3):
            raise ValueError(f"RSS3PC runs exactly three parties: on one machine (num_nodes=1) or on three hosts "
                             f"(num_nodes=3, devices=1: one party per host); got num_nodes={nodes}")
        devs = [torch.device(d) for d in (devices or [torch.device("cpu")])]  # idempotent
        kind = devs[0].type
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"RSS3PC supports the cpu and cuda accelerators, got {kind!r}")
        if nodes == 3:
            if len(devs) != 1:
                raise ValueError(f"RSS3PC on three hosts runs one party per host: use Trainer(num_nodes=3, devices=1), "
                                 f"got {len(devs)} devices per host")
            local = devs
        elif kind == "cpu":
            if len(devs) not in (1, 3):
                raise ValueError(f"RSS3PC always runs three party processes; on CPU leave devices at 1 (or 3), got "
                                 f"devices={len(devs)}")
            local = [torch.device("cpu")] * 3
        else:
            local = devs[:3] if len(devs) >= 3 else [devs[0]] * 3
        distinct_gpus = kind == "cuda" and (nodes == 3 or len({str(d) for d in local}) == 3)
        backend = self.backend_choice or ("nccl" if distinct_gpus else "gloo")
        if backend == "nccl" and not distinct_gpus:
            raise ValueError("RSS3PC(backend='nccl') needs one GPU per party (NCCL refuses two ranks on one GPU); "
                             "use backend='gloo' or three GPUs")
        self.procs_per_node = 1 if nodes == 3 else 3
        self.backend = backend
        env = cluster_environment
        external = env is not None and env.creates_processes_externally
        self.spawn = nodes == 1 and not external
        return local

    def set_world_ranks(self, env, node_rank: int, local_rank: int) -> None:
        """Tell the cluster environment this process's global rank and the world size (three)."""
        if env is None:
            return
        env.set_global_rank(node_rank * self.procs_per_node + local_rank)
        env.set_world_size(self.num_nodes * self.procs_per_node)
        if env.world_size() != 3:
            raise ValueError(f"RSS3PC runs exactly three parties, the cluster environment has world size "
                             f"{env.world_size()} (torchrun: --nproc_per_node=3 on one machine, or --nnodes=3 "
                             f"--nproc_per_node=1)")
