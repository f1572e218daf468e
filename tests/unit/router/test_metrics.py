"""The router's view of the scheduler's estimate errors."""

from __future__ import annotations

import pytest

from services.router.metrics import RouterMetrics, error_quantiles

pytestmark = pytest.mark.unit


def test_error_quantiles_are_of_absolute_errors_by_nearest_rank() -> None:
    errors = [0.1 * i * (-1) ** i for i in range(1, 11)]  # |e| = 0.1 .. 1.0, mixed signs
    q = error_quantiles(errors)
    assert q[0.5] == pytest.approx(0.5)
    assert q[0.9] == pytest.approx(0.9)
    assert error_quantiles([]) == {0.5: 0.0, 0.9: 0.0}
    assert error_quantiles([-2.0]) == {0.5: 2.0, 0.9: 2.0}


def test_estimate_error_gauges_render() -> None:
    m = RouterMetrics()
    m.set_estimate_errors([0.2, -0.4, 0.1])
    text = m.render().decode()
    assert 'sllm_scheduler_estimate_error_ratio{quantile="0.5"} 0.2' in text
    assert 'sllm_scheduler_estimate_error_ratio{quantile="0.9"} 0.4' in text
    assert "sllm_scheduler_estimate_bias_ratio 0.1" in text
    assert "sllm_scheduler_estimate_samples 3.0" in text
