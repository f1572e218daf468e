"""The deployments API's body: a model (checkpoint_uri, task) or a LoRA adapter (adapter_uri,
base), never a mix, as the document states."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import ValidationError

from services.router.deployment_schema import DeploymentIn

pytestmark = pytest.mark.unit

MODEL = {"name": "m", "checkpoint_uri": "file:///models/m"}
ADAPTER = {"name": "a", "adapter_uri": "file:///adapters/a", "base": "m"}


def test_a_model_and_an_embedding_model() -> None:
    assert DeploymentIn.model_validate(MODEL).spec().base == ""
    spec = DeploymentIn.model_validate({**MODEL, "task": "embed"}).spec()
    assert spec.task == "embed"


def test_an_adapter_keeps_its_uri_as_its_checkpoint_and_names_its_base() -> None:
    spec = DeploymentIn.model_validate(ADAPTER).spec()
    assert (spec.checkpoint_uri, spec.base, spec.task) == ("file:///adapters/a", "m", "generate")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {**ADAPTER, "checkpoint_uri": "file:///models/m"},
        {"name": "a", "adapter_uri": "file:///adapters/a"},
        {"name": "a", "base": "m", "checkpoint_uri": "file:///models/m"},
        {**MODEL, "task": "classify"},
    ],
)
def test_mixed_or_incomplete_bodies_are_refused_by_the_model_and_the_document(
    body: dict[str, object],
) -> None:
    with pytest.raises(ValidationError):
        DeploymentIn.model_validate(body)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, DeploymentIn.model_json_schema())


@pytest.mark.parametrize("body", [MODEL, ADAPTER, {**MODEL, "task": "embed"}])
def test_valid_bodies_are_valid_by_the_document(body: dict[str, object]) -> None:
    jsonschema.validate(body, DeploymentIn.model_json_schema())
