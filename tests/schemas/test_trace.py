"""The trace-id rule, written once (schemas/trace.py) and used by the pipeline, the traces,
feedback scores and the offline dataset builder."""

from __future__ import annotations

from langfuse import Langfuse

import schemas
from routers import outcomes
from schemas import trace
from tests.worker.support import ROWS, request_event
from worker.pipeline.routing import trace_id_for as pipeline_trace_id
from worker.telemetry import derive_trace_id
from worker.telemetry.scores import score_trace_id


def test_the_rule_is_langfuses() -> None:
    for seed in ("req-1", '["acme","req-000001"]', "é \u2028 x"):
        assert trace.trace_id_hex(seed) == Langfuse.create_trace_id(seed=seed)
        assert derive_trace_id(seed) == int(trace.trace_id_hex(seed), 16)


def test_request_key_separates_tenants() -> None:
    assert trace.request_key(None, "r1") == "r1"
    assert trace.request_key("acme", "r1") == '["acme","r1"]'
    assert trace.request_trace_id("r1", "acme") != trace.request_trace_id("r1", "globex")
    assert trace.request_trace_id("r1") == trace.trace_id_hex("r1")


def test_every_user_of_the_rule_agrees() -> None:
    request = request_event(ROWS[0], 1, tenant="acme")
    expected = trace.request_trace_id(request.request_id, "acme")
    assert pipeline_trace_id(request) == expected
    feedback = schemas.Feedback(
        schema_version=1,
        request_id=request.request_id,
        tenant="acme",
        name="user_rating",
        value=1.0,
        source="user",
        created_at=request.created_at,
    )
    assert score_trace_id(feedback) == expected
    # the dataset builder finds a label given by trace id only
    key = trace.request_key("acme", request.request_id)
    index = outcomes.LabelIndex({key: outcomes.Answered(request.request_id, tenant="acme")})
    label = outcomes.Label(name="user_rating", value=1.0, source="user", trace_id=expected)
    assert index.key_for(label) == key
    assert not hasattr(outcomes, "trace_id_for")  # written once: in schemas, not here
