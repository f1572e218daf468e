"""What an adapter's deployment may be, and that a base with adapters stays (pure rules)."""

from __future__ import annotations

import pytest

from libs.protocol.errors import BadRequestError, ConflictError
from libs.protocol.messages import DeploymentSpec
from services.scheduler.adapter_rules import check_adapter, check_patch, check_undeploy

pytestmark = pytest.mark.unit

BASE = DeploymentSpec(name="base", checkpoint_uri="file:///m")


def adapter(**kw: object) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {"name": "lora", "checkpoint_uri": "file:///a", "base": "base", **kw}
    )


def test_an_adapter_of_a_generation_model_is_accepted() -> None:
    check_adapter(adapter(keep_alive_s=5.0), BASE)


@pytest.mark.parametrize(
    ("spec", "base", "param"),
    [
        (adapter(), None, "base"),
        (adapter(), BASE.model_copy(update={"base": "other"}), "base"),
        (adapter(), BASE.model_copy(update={"task": "embed"}), "base"),
        (adapter(name="base"), BASE, "base"),
        (adapter(task="embed"), BASE, "task"),
        (adapter(min_instances=1), BASE, "min_instances"),
        (adapter(max_instances=3), BASE, "max_instances"),
        (adapter(target_concurrency=2), BASE, "target_concurrency"),
    ],
)
def test_bad_adapters_are_refused_naming_the_field(
    spec: DeploymentSpec, base: DeploymentSpec | None, param: str
) -> None:
    with pytest.raises(BadRequestError) as err:
        check_adapter(spec, base)
    assert err.value.detail["param"] == param


def test_an_adapter_instance_knob_cannot_be_patched() -> None:
    check_patch(adapter(), {"keep_alive_s": 1.0})
    check_patch(BASE, {"min_instances": 2})
    with pytest.raises(BadRequestError, match="min_instances"):
        check_patch(adapter(), {"min_instances": 2})


def test_a_base_with_adapters_cannot_be_deleted() -> None:
    check_undeploy("base", [BASE])
    check_undeploy("lora", [BASE, adapter()])
    with pytest.raises(ConflictError) as err:
        check_undeploy("base", [BASE, adapter(), adapter(name="lora2")])
    assert err.value.detail["adapters"] == ["lora", "lora2"]
    assert err.value.detail["code"] == "deployment_has_adapters"
