"""``python -m services.worker``: run one worker from ``SLLM_*`` settings."""

from __future__ import annotations

import sys

from libs.common.service import run_service

from .app import WorkerService
from .settings import WorkerSettings

if __name__ == "__main__":
    sys.exit(run_service(lambda: WorkerService(WorkerSettings.from_env())))
