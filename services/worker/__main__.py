"""``python -m services.worker``: run one worker from ``SLLM_*`` settings."""

from __future__ import annotations

import os
import sys

# Before torch loads (the imports below load it): idle OpenMP threads sleep instead of spinning.
# A CPU worker shares the machine's cores with the router, NATS and the other workers; libgomp's
# default spin took 9 to 13 ms of CPU per one-token request on 2 cores, against 3.3 ms passive, and
# made the warm request slower (benchmarks/README.md). Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from libs.common.service import run_service

from .app import WorkerService
from .settings import WorkerSettings

if __name__ == "__main__":
    sys.exit(run_service(lambda: WorkerService(WorkerSettings.from_env())))
