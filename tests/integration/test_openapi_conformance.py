"""The router answers as its ``/openapi.json`` says: a schemathesis run against a real router
(under uvicorn, on real nats-server and valkey, with a stand-in scheduler and worker), every
operation, valid and invalid inputs, bounded (fixed seed, derandomized: ~1,500 cases, ~15 s).
No server error, no status, header, content type or body the document does not state, every
body the document calls invalid refused, every body it calls valid accepted (but for the rules
in `BEYOND_SCHEMA`).

schemathesis runs here as its CLI does (`schemathesis.engine`: the examples, coverage and
fuzzing phases), in a thread while the router serves in the test's event loop. Its pytest
integration (``schemathesis.pytest.from_fixture``) does not run under pytest 9.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, StopReason, events, from_schema
from schemathesis.generation.modes import GenerationMode

from .router_stubs import MODEL, StubWorker, router_settings, running_router

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

INFER, ADMIN, METRICS = "k-infer", "k-admin", "k-metrics"
# One valid completion request in this many asks the deployed model for an answer.
AIMED = 2
COMPLETIONS = ("/v1/completions", "/v1/chat/completions")

# Bounded: the seed fixes every generated case, derandomized, no example database; the
# fuzzing phase draws up to `max-examples` cases per operation and mode (the examples and
# coverage phases add a fixed set of their own). No `max-time`: with one, the engine repeats
# the fuzzing phase until the time is up.
CONFIG = """
seed = 20261205
suppress-health-check = ["too_slow", "filter_too_much", "data_too_large"]
# A fresh connection per request: on a kept-alive one each answer waits ~40 ms (Nagle against
# delayed ACKs: `running_router`'s socket is made with proto 0, so asyncio sets no TCP_NODELAY).
headers = {{ Authorization = "Bearer {key}", Connection = "close" }}
request-timeout = 20

[generation]
mode = "all"
max-examples = 10
deterministic = true
database = "none"

[phases.stateful]
enabled = false

[checks]
negative_data_rejection.enabled = true
# Replaced by `accepted_unless_a_rule_beyond_the_schema`.
positive_data_acceptance.enabled = false
"""

# The 400s a body valid by the document may get: each names a field of a rule that JSON Schema
# does not state (a rule across fields, a bound on a duration string) or that is configuration
# (checkpoint_uri: the router's registry allow-list).
BEYOND_SCHEMA = re.compile(
    r"min_tokens"  # at most max_tokens (or max_completion_tokens, or the default)
    r"|min_instances"  # at most max_instances
    r"|top_logprobs"  # needs logprobs: true
    r"|keep_alive"  # a duration string of at most 30 days
    r"|checkpoint_uri"  # inside SLLM_REGISTRY_ALLOW
    # Embeddings: the model is an embedding model, its inputs fit its context, and
    # dimensions (when given) is its own size.
    r"|model|input|dimensions"
    # tools and tool_choice agree (a named or required call needs its tool), response_format
    # with tools needs a tool_choice other than "auto"
    r"|tools|tool_choice|response_format"
    # tool_calls only in assistant messages, tool_call_id in (and only in) tool messages
    r"|messages\.\d+\.(tool_calls|tool_call_id)"
)


@schemathesis.check
def accepted_unless_a_rule_beyond_the_schema(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """A body the document calls valid is accepted (a 404 for a made-up model name is fine),
    unless it breaks a rule that JSON Schema does not state (``min_tokens`` above
    ``max_tokens``...): then the 400 names the field of one of those rules."""
    meta = case.meta
    if response.status_code != 400 or meta is None:
        return None
    if meta.generation.mode is not GenerationMode.POSITIVE:
        return None
    param = json.loads(response.text)["error"]["param"] or ""
    value = case.body.get(param) if isinstance(case.body, dict) else None
    if isinstance(value, int) and abs(value) > 1 << 53:
        # schemathesis computes bounds past 2**53 in floating point: its "valid" seed of
        # 9223372036854775998 is over the documented bound (2**63, exclusive).
        return None
    if not BEYOND_SCHEMA.fullmatch(param):
        raise AssertionError(f"a request valid by the document was refused: {response.text}")
    return True


@dataclass
class Run:
    failures: list[str] = field(default_factory=list)
    cases: Counter[str] = field(default_factory=Counter)  # per operation
    operations: int = 0  # in the document
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    stop: StopReason | None = None
    seconds: float = 0.0


def conformance_run(url: str) -> Run:
    """Run schemathesis against the router at ``url``."""
    config = schemathesis.Config.from_str(CONFIG.format(key=ADMIN))
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)

    @schema.hook
    def map_case(
        context: schemathesis.HookContext, case: schemathesis.Case[Any]
    ) -> schemathesis.Case[Any]:
        """One valid completion request in `AIMED` names the deployed model (a made-up name is
        a 404), so that answers, whole and streamed, are checked too."""
        meta = case.meta
        if (
            case.path in COMPLETIONS
            and isinstance(case.body, dict)
            and meta is not None
            and meta.generation.mode is GenerationMode.POSITIVE
            and len(json.dumps(case.body)) % AIMED == 0
        ):
            case.body["model"] = MODEL
        return case

    run = Run(operations=sum(1 for _ in schema.get_all_operations()))
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.cases[event.recorder.label] += len(event.recorder.cases)
            phase = event.phase.value
            run.seconds_by_phase[phase] = run.seconds_by_phase.get(phase, 0.0) + event.elapsed_time
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status != Status.FAILURE or check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    run.failures.append(
                        f"{event.recorder.label} [{check.name}] {failure.title}: "
                        f"{failure.message}\n{check.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError):
            run.failures.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            run.failures.append(f"schemathesis failed: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            run.stop, run.seconds = event.stop_reason, event.running_time
    return run


async def test_router_answers_as_its_openapi_document_says(
    nats_server, redis_server, root: str, warm: StubWorker
) -> None:
    settings = router_settings(
        nats_server.url, redis_server.url, root,
        SLLM_API_KEYS=INFER, SLLM_ADMIN_KEYS=ADMIN, SLLM_METRICS_KEYS=METRICS,
    )  # fmt: skip
    async with running_router(settings) as router:
        run = await asyncio.to_thread(conformance_run, router.url)
    phases = ", ".join(f"{p} {s:.1f} s" for p, s in run.seconds_by_phase.items())
    print(f"schemathesis: {run.seconds:.1f} s ({phases}), {run.stop}")
    print(f"cases per operation: {run.cases}")
    assert not run.failures, f"{len(run.failures)} failures:\n\n" + "\n\n".join(run.failures)
    # Every operation ran, with valid and invalid inputs, before the time limit.
    assert len(run.cases) == run.operations >= 11, run.cases
    assert run.stop is StopReason.COMPLETED
    assert min(run.cases.values()) >= 5, run.cases
    assert warm.requests  # answers of the deployed model were checked too
