"""The storage service is control plane: importing it must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_storage_service_imports_without_torch() -> None:
    code = (
        "import sys, services.storage.app, services.storage.__main__; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
