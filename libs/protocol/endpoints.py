"""The endpoint catalog: each request/reply subject with its request and reply schemas."""

from __future__ import annotations

from .messages import (
    DeployReply,
    DeployRequest,
    EnsureReply,
    EnsureRequest,
    EvictReply,
    EvictRequest,
    GenerateReply,
    GenerateRequest,
    InfoRequest,
    LoadReply,
    LoadRequest,
    PlaceReply,
    PlaceRequest,
    ServiceInfoReply,
    TokenChunk,
    UndeployReply,
    UndeployRequest,
    UnloadReply,
    UnloadRequest,
)
from .subjects import Endpoint, StreamEndpoint

# Every service instance answers `info` on its own subject.
SERVICE_INFO = Endpoint("info", "svc.{kind}.{instance_id}.info", InfoRequest, ServiceInfoReply)

SCHED_PLACE = Endpoint("place", "sched.place", PlaceRequest, PlaceReply)
SCHED_DEPLOY = Endpoint("deploy", "sched.deploy", DeployRequest, DeployReply)
SCHED_UNDEPLOY = Endpoint("undeploy", "sched.undeploy", UndeployRequest, UndeployReply)

WORKER_LOAD = Endpoint("load", "worker.{worker_id}.load", LoadRequest, LoadReply)
WORKER_UNLOAD = Endpoint("unload", "worker.{worker_id}.unload", UnloadRequest, UnloadReply)
WORKER_GENERATE = StreamEndpoint(
    "generate",
    "worker.{worker_id}.generate",
    GenerateRequest,
    GenerateReply,
    TokenChunk,
    ends=lambda chunk: chunk.finish_reason is not None,
)

STORAGE_ENSURE = Endpoint("ensure", "storage.{node_id}.ensure", EnsureRequest, EnsureReply)
STORAGE_EVICT = Endpoint("evict", "storage.{node_id}.evict", EvictRequest, EvictReply)
