"""Scores as Langfuse servers take them: every body we send checked against the vendored fragment
of Langfuse's API definition (v4.16.0 and v3.225.4) and against the stand-in that refuses what the
server's `PostScoresBodyV1` refuses; refusals classified retriable or not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from schemas.trace import trace_id_hex
from tests.telemetry.conftest import feedback, langfuse_config
from worker.sim.langfuse import LangfuseReceiver, validate_score
from worker.telemetry.scores import (
    LangfuseScores,
    ScoreError,
    ScoreRejected,
    ScoreUnavailable,
    score_body,
)

SPEC = json.loads((Path(__file__).parent / "fixtures" / "langfuse_scores_api.json").read_text())
SERVERS = sorted(SPEC["servers"])

EVENTS = {
    "boolean": feedback(value=True),
    "false": feedback(value=False, comment="wrong answer"),
    "numeric": feedback(name="quality", value=0.8, source="judge", model="strong"),
    "integer": feedback(name="stars", value=4, source="user"),
    "categorical": feedback(name="label", value="B", request_id=None, trace_id="ab" * 16),
}


def _openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema: `nullable: true` adds null; `$ref`s point into `$defs`."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _request_schema(server: str) -> dict[str, Any]:
    api = SPEC["servers"][server]
    body = api["paths"]["/api/public/scores"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]
    defs = _openapi_to_json_schema(api["components"]["schemas"])
    return {"$defs": defs, **_openapi_to_json_schema(ref)}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_score_body_is_what_the_published_api_defines(server: str, event: str) -> None:
    body = score_body(EVENTS[event], environment="production")
    schema = _request_schema(server)
    jsonschema.validate(body, schema)
    name = schema["$ref"].rsplit("/", 1)[1]
    known = set(schema["$defs"][name]["properties"])
    assert set(body) <= known, set(body) - known  # nothing the server would silently drop
    assert validate_score(body) == []  # and what the server's own validation accepts


@pytest.mark.parametrize("server", SERVERS)
def test_the_vendored_definition_refuses_a_broken_body(server: str) -> None:
    schema = _request_schema(server)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x"}, schema)  # no value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([score_body(EVENTS["boolean"])], schema)  # a list


def test_bodies_follow_the_server_rules_per_data_type() -> None:
    assert score_body(EVENTS["boolean"])["value"] == 1
    assert score_body(EVENTS["false"])["value"] == 0
    assert score_body(EVENTS["boolean"])["dataType"] == "BOOLEAN"
    assert score_body(EVENTS["integer"])["dataType"] == "NUMERIC"
    assert score_body(EVENTS["categorical"])["traceId"] == "ab" * 16
    assert score_body(EVENTS["boolean"])["traceId"] == trace_id_hex("req-1")
    assert "environment" not in score_body(EVENTS["boolean"])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([{"name": "correct", "value": 1, "dataType": "BOOLEAN", "traceId": "t"}], "received list"),
        ({"name": "correct", "value": 0.5, "dataType": "BOOLEAN", "traceId": "t"}, "0 or 1"),
        ({"name": "", "value": 1.0, "traceId": "t"}, "name"),
        ({"name": "q", "value": 1.0}, "exactly one"),
        ({"name": "q", "value": 1.0, "traceId": "t", "sessionId": "s"}, "exactly one"),
        ({"name": "q", "value": "x", "dataType": "NUMERIC", "traceId": "t"}, "number"),
        ({"name": "q", "value": 1.0, "traceId": "t", "source": "EVAL"}, "source"),
        ({"name": "q", "value": 1.0, "traceId": "t", "source": "ANNOTATION"}, "configId"),
        ({"name": "q", "value": "", "dataType": "TEXT", "traceId": "t"}, "TEXT"),
    ],
)
def test_the_stand_in_refuses_what_the_server_refuses(
    receiver: LangfuseReceiver, body: Any, why: str
) -> None:
    auth = httpx.BasicAuth("pk-lf-test", "sk-lf-test")
    response = httpx.post(f"{receiver.url}/api/public/scores", json=body, auth=auth)
    assert response.status_code == 400
    assert response.json()["message"] == "Invalid request data"
    assert why in " ".join(response.json()["error"])
    assert receiver.scores == []


def test_the_stand_in_wants_basic_auth(receiver: LangfuseReceiver) -> None:
    body = score_body(EVENTS["boolean"])
    response = httpx.post(f"{receiver.url}/api/public/scores", json=body)
    assert response.status_code == 401
    ok = httpx.post(f"{receiver.url}/api/public/scores", json=body, auth=("pk", "sk"))
    assert ok.status_code == 200 and ok.json() == {"id": body["id"]}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ScoreUnavailable),
        (502, ScoreUnavailable),
        (503, ScoreUnavailable),
        (429, ScoreUnavailable),
        (408, ScoreUnavailable),
        (400, ScoreRejected),
        (401, ScoreRejected),
        (403, ScoreRejected),
        (404, ScoreRejected),
        (413, ScoreRejected),
    ],
)
async def test_refusals_are_classified_by_status(
    receiver: LangfuseReceiver, status: int, kind: type[ScoreError]
) -> None:
    receiver.score_answers = [status]
    async with LangfuseScores(langfuse_config(receiver.url), environ={}) as scores:
        with pytest.raises(kind) as raised:
            await scores.post(EVENTS["boolean"])
        assert raised.value.status == status
        assert raised.value.retriable is (kind is ScoreUnavailable)
        assert f"scripted answer {status}" in raised.value.body
        await scores.post(EVENTS["boolean"])  # the next answer is the normal one
    assert len(receiver.scores) == 1


async def test_a_server_that_cannot_be_reached_is_retriable() -> None:
    async with LangfuseScores(langfuse_config("http://127.0.0.1:9"), environ={}) as scores:
        with pytest.raises(ScoreUnavailable) as raised:
            await scores.post(EVENTS["boolean"])
    assert raised.value.status is None


def test_the_stand_in_wants_basic_auth_on_the_otlp_endpoint_too(receiver: LangfuseReceiver) -> None:
    url = f"{receiver.url}/api/public/otel/v1/traces"
    headers = {"content-type": "application/x-protobuf"}
    assert httpx.post(url, content=b"", headers=headers).status_code == 401
    ok = httpx.post(url, content=b"", headers=headers, auth=("pk", "sk"))
    assert ok.status_code == 200
