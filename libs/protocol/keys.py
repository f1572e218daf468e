"""Redis key names: the only place that builds a key string.

All keys share one prefix (``sllm`` by default); tests give each test its own prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from .subjects import token


@dataclass(frozen=True)
class Keys:
    prefix: str = "sllm"

    def __post_init__(self) -> None:
        for part in self.prefix.split(":"):
            token(part)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # The store's epoch: a random id, set once while the store keeps its data.
    @property
    def store_epoch(self) -> str:
        return self._k("store_epoch")

    # Liveness: a string key with a TTL, refreshed by the service's heartbeat.
    def alive(self, kind: str, instance_id: str) -> str:
        return self._k("alive", token(kind), token(instance_id))

    def alive_pattern(self, kind: str) -> str:
        return self._k("alive", token(kind), "*")

    # The instance ids of a kind's services that heartbeat (a set; those whose liveness key
    # lapsed are pruned by whoever reads it): finding them reads this, not the whole keyspace.
    def services(self, kind: str) -> str:
        return self._k("services", token(kind))

    # Nodes and workers: hashes describing them; sets index them.
    def node(self, node_id: str) -> str:
        return self._k("node", token(node_id))

    @property
    def nodes(self) -> str:
        return self._k("nodes")

    def worker(self, worker_id: str) -> str:
        return self._k("worker", token(worker_id))

    @property
    def workers(self) -> str:
        return self._k("workers")

    # Per node: which checkpoints each tier holds (hash model -> bytes) and measured bandwidths.
    def locality(self, node_id: str, tier: str) -> str:
        return self._k("locality", token(node_id), token(tier))

    # Per model: the nodes whose tier holds it (hash node -> bytes), the same facts as
    # `locality` indexed the other way, so that a placement reads its model's fresh.
    def holders(self, tier: str, model: str) -> str:
        return self._k("holders", token(tier), model)

    def bandwidth(self, node_id: str) -> str:
        return self._k("bandwidth", token(node_id))

    # Deployments and instances.
    def deployment(self, model: str) -> str:
        return self._k("deployment", model)

    @property
    def deployments(self) -> str:
        return self._k("deployments")

    def instance(self, instance_id: str) -> str:
        return self._k("instance", token(instance_id))

    def model_instances(self, model: str) -> str:
        return self._k("instances", model)

    # Calibration: recent (bytes, seconds) of real loads per node and source tier (a list).
    def load_samples(self, node_id: str, tier: str) -> str:
        return self._k("loads", token(node_id), token(tier))

    # A placement's estimate until its instance is ready (a hash with a TTL).
    def estimate(self, instance_id: str) -> str:
        return self._k("estimate", token(instance_id))

    # Recent relative errors of placement estimates (a list, newest first).
    @property
    def estimate_errors(self) -> str:
        return self._k("estimate_errors")

    # The round-robin placement policy's turn counter.
    @property
    def placement_turn(self) -> str:
        return self._k("placement_turn")

    # A lease that one replica of a service holds at a time (e.g. the autoscaler's leader).
    def lease(self, name: str) -> str:
        return self._k("lease", token(name))
