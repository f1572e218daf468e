"""Typed access to the cluster state in Redis, shared by every service."""

from .estimates import EstimateRecord
from .state import ClusterState

__all__ = ["ClusterState", "EstimateRecord"]
