"""What makes a LoRA adapter's deployment valid, and what its base may not do (pure).

An adapter (`DeploymentSpec.base` set) runs on its base's instances, so: its base must be a
deployed model (not an adapter, not an embedding model); its own instance knobs mean nothing
and are refused rather than ignored; and a base that has adapters cannot be deleted from under
them (409: delete the adapters first). The cascade was the alternative; refusing was chosen
because a delete that silently takes other deployments with it is the surprise an operator
least wants.
"""

from __future__ import annotations

from collections.abc import Iterable

from libs.protocol.errors import BadRequestError, ConflictError
from libs.protocol.messages import DeploymentSpec

# The knobs that size an adapter's own instances (it has none), with the defaults it must keep.
_INSTANCE_KNOBS = {
    knob: DeploymentSpec.model_fields[knob].default
    for knob in ("min_instances", "max_instances", "target_concurrency")
}


def check_adapter(spec: DeploymentSpec, base: DeploymentSpec | None) -> None:
    """Raise `BadRequestError` naming the field unless ``spec`` (an adapter) may be deployed
    on ``base`` (its base's current deployment; None: there is none)."""
    if spec.task != "generate":
        raise _bad("task", f"an adapter generates text: task {spec.task!r} is not possible")
    for knob, default in _INSTANCE_KNOBS.items():
        if getattr(spec, knob) != default:
            raise _bad(
                knob,
                f"an adapter runs on its base's instances: set {knob} on {spec.base!r} instead",
            )
    if spec.base == spec.name:
        raise _bad("base", "an adapter cannot be its own base")
    if base is None:
        raise _bad("base", f"there is no deployment named {spec.base!r} to be the base")
    if base.base:
        raise _bad("base", f"{spec.base!r} is itself an adapter (of {base.base!r})")
    if base.task != "generate":
        raise _bad("base", f"{spec.base!r} is an embedding model (task {base.task!r})")


def check_patch(current: DeploymentSpec, changes: dict[str, object]) -> None:
    """An adapter's instance knobs cannot be patched either."""
    if not current.base:
        return
    for knob in _INSTANCE_KNOBS:
        if knob in changes:
            raise _bad(
                knob,
                f"{current.name!r} is an adapter: set {knob} on its base {current.base!r}",
            )


def check_undeploy(name: str, specs: Iterable[DeploymentSpec]) -> None:
    """Raise `ConflictError` (409) when ``name`` is the base of deployed adapters."""
    adapters = sorted(s.name for s in specs if s.base == name)
    if adapters:
        shown = ", ".join(adapters[:10]) + (" ..." if len(adapters) > 10 else "")
        raise ConflictError(
            f"{name!r} is the base of {len(adapters)} adapter(s) ({shown}): delete them first",
            detail={"param": "name", "code": "deployment_has_adapters", "adapters": adapters},
        )


def _bad(param: str, message: str) -> BadRequestError:
    return BadRequestError(message, detail={"param": param})
