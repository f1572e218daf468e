"""``python -m services.storage``: run a node's storage service from ``SLLM_*`` settings."""

from __future__ import annotations

import sys

from libs.common.service import run_service

from .app import StorageService
from .settings import StorageSettings

if __name__ == "__main__":
    sys.exit(run_service(lambda: StorageService(StorageSettings.from_env())))
