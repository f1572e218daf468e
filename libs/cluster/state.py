"""`ClusterState`: every read and write of cluster state in Redis goes through here.

Records are JSON (readable with ``redis-cli``); workers are hashes so that reserving one is a
single atomic script: two schedulers can never hand out the same worker. `ClusterState` is one
object made of its parts, a module each: the store's epoch and leases (`coordination.py`),
deployments (`deployments.py`), workers, their instances and repairs (`workers.py`), nodes with
their locality and bandwidth (`nodes.py`), and what placement learns from (`estimates.py`).
"""

from __future__ import annotations

from .coordination import Coordination
from .deployments import Deployments
from .estimates import EstimateRecord as EstimateRecord  # re-exported: the scheduler writes it
from .estimates import Estimates
from .nodes import Nodes
from .workers import Workers


class ClusterState(Coordination, Deployments, Workers, Nodes, Estimates):
    """Typed reads and writes of the cluster state on one Redis client (``redis``, ``keys``)."""
