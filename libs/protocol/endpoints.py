"""The endpoint catalog: each request/reply subject with its request and reply schemas.

``resend_on_drop`` marks the requests that are safe to repeat: asking for an instance (the
scheduler joins the load under way), for a copy in a tier (the repeat waits behind the first
under the model's lock, then finds the copy), for a worker's sequences, for a service's info.
The others are not: a repeated deploy answers "updated", undeploy "not found", evict and
quarantine "nothing removed", and the orders that change a worker (load, unload, migrate,
adopt) have callers that follow the peer instead (`libs/common/follow.py`).
"""

from __future__ import annotations

from .messages import (
    AdoptAbortReply,
    AdoptAbortRequest,
    AdoptCommitRequest,
    AdoptDeltaRequest,
    AdoptReply,
    AdoptRequest,
    DeployReply,
    DeployRequest,
    EmbedReply,
    EmbedRequest,
    EnsureReply,
    EnsureRequest,
    EstimateReply,
    EstimateRequest,
    EvictReply,
    EvictRequest,
    GenerateReply,
    GenerateRequest,
    InfoRequest,
    InspectReply,
    InspectRequest,
    LoadReply,
    LoadRequest,
    MigrateInstanceReply,
    MigrateInstanceRequest,
    MigrateReply,
    MigrateRequest,
    PatchDeploymentRequest,
    PlaceReply,
    PlaceRequest,
    QuarantineReply,
    QuarantineRequest,
    RunningReply,
    RunningRequest,
    ServiceInfoReply,
    TokenChunk,
    UndeployReply,
    UndeployRequest,
    UnloadReply,
    UnloadRequest,
)
from .subjects import Endpoint, StreamEndpoint

# Every service instance answers `info` on its own subject.
SERVICE_INFO = Endpoint(
    "info", "svc.{kind}.{instance_id}.info", InfoRequest, ServiceInfoReply, resend_on_drop=True
)

SCHED_PLACE = Endpoint("place", "sched.place", PlaceRequest, PlaceReply, resend_on_drop=True)
SCHED_DEPLOY = Endpoint("deploy", "sched.deploy", DeployRequest, DeployReply)
SCHED_UNDEPLOY = Endpoint("undeploy", "sched.undeploy", UndeployRequest, UndeployReply)
SCHED_ESTIMATE = Endpoint(
    "estimate", "sched.estimate", EstimateRequest, EstimateReply, resend_on_drop=True
)
SCHED_PATCH = Endpoint("patch", "sched.patch", PatchDeploymentRequest, DeployReply)

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

WORKER_EMBED = Endpoint("embed", "worker.{worker_id}.embed", EmbedRequest, EmbedReply)

STORAGE_ENSURE = Endpoint(
    "ensure", "storage.{node_id}.ensure", EnsureRequest, EnsureReply, resend_on_drop=True
)
# Any node's storage service (one queue group): checks a deployment's checkpoint at deploy time.
STORAGE_INSPECT = Endpoint("inspect", "storage.inspect", InspectRequest, InspectReply)
STORAGE_EVICT = Endpoint("evict", "storage.{node_id}.evict", EvictRequest, EvictReply)
# A worker whose load found the copy an ensure gave it damaged reports it (see `_bring_up`).
STORAGE_QUARANTINE = Endpoint(
    "quarantine", "storage.{node_id}.quarantine", QuarantineRequest, QuarantineReply
)

# Live migration: the scheduler asks the source worker (migrate); the source drives the
# destination worker (adopt, then deltas, then commit or abort).
SCHED_MIGRATE = Endpoint(
    "migrate_instance", "sched.migrate", MigrateInstanceRequest, MigrateInstanceReply
)
WORKER_MIGRATE = Endpoint("migrate", "worker.{worker_id}.migrate", MigrateRequest, MigrateReply)
WORKER_RUNNING = Endpoint(
    "running", "worker.{worker_id}.running", RunningRequest, RunningReply, resend_on_drop=True
)
WORKER_ADOPT = Endpoint("adopt", "worker.{worker_id}.adopt", AdoptRequest, AdoptReply)
WORKER_ADOPT_DELTA = Endpoint(
    "adopt_delta", "worker.{worker_id}.adopt_delta", AdoptDeltaRequest, AdoptReply
)
WORKER_ADOPT_COMMIT = Endpoint(
    "adopt_commit", "worker.{worker_id}.adopt_commit", AdoptCommitRequest, AdoptReply
)
WORKER_ADOPT_ABORT = Endpoint(
    "adopt_abort", "worker.{worker_id}.adopt_abort", AdoptAbortRequest, AdoptAbortReply
)
