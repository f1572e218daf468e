"""``python -m services.scheduler``: run the scheduler from ``SLLM_*`` settings."""

from __future__ import annotations

import sys

from libs.common.service import run_service

from .app import SchedulerService
from .settings import SchedulerSettings

if __name__ == "__main__":
    sys.exit(run_service(lambda: SchedulerService(SchedulerSettings.from_env())))
