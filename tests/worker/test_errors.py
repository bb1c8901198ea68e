"""One error root: every error the worker reports has a stable `code`, listed in `schemas/`, and
a `retriable` flag on its class; the wire carries the code, never a class name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

import schemas
from worker import errors
from worker.providers import errors as provider_errors
from worker.telemetry import scores

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def every_error_class() -> list[type[errors.WorkerError]]:
    # importing the modules that define errors registers their classes as subclasses
    assert provider_errors.ProviderError and scores.ScoreError
    found: list[type[errors.WorkerError]] = []
    todo: list[type[errors.WorkerError]] = [errors.WorkerError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_has_its_own_listed_code() -> None:
    classes = every_error_class()
    assert len(classes) > 30
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code"
        assert cls.code in schemas.ERROR_CODES, f"{cls.__name__}: {cls.code} is not listed"
        assert isinstance(cls.retriable, bool)


def test_codes_are_unique_and_each_names_a_class() -> None:
    classes = every_error_class()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert set(codes) == set(schemas.ERROR_CODES)  # no listed code without its class


def test_a_class_without_its_own_code_is_refused() -> None:
    with pytest.raises(TypeError, match="code"):

        class Forgetful(errors.WorkerError):  # pragma: no cover - the class is refused
            retriable = False


def test_the_json_schema_lists_exactly_the_codes() -> None:
    common = schemas.load_schema("common")
    listed = [alt["const"] for alt in common["$defs"]["error_code"]["oneOf"]]
    assert listed == list(get_args(schemas.ErrorCode)) == list(schemas.ERROR_CODES)
    for alt in common["$defs"]["error_code"]["oneOf"]:
        assert alt["description"], alt["const"]
    assert common["$defs"]["error"]["properties"]["type"] == {"$ref": "#/$defs/error_code"}
    letter = schemas.load_schema("dead_letter")
    assert letter["properties"]["error_type"] == {"$ref": "common.schema.json#/$defs/error_code"}


def test_codes_kept_the_class_names_users_saw_on_the_wire() -> None:
    # before codes, `error.type` was `type(exc).__name__`: those values did not change
    for cls in every_error_class():
        if issubclass(cls, provider_errors.ProviderError | scores.ScoreError):
            assert cls.code == cls.__name__
    assert errors.InvalidRecord.code == "InvalidEvent"  # the dead-letter type users filter on
    assert errors.OversizedRecord.code == "OversizedEvent"


def test_the_decoder_refuses_an_unknown_code() -> None:
    response = json.loads((EXAMPLES / "route_response" / "valid" / "error.json").read_bytes())
    schemas.decode(json.dumps(response).encode(), schemas.RouteResponse)
    response["error"]["type"] = "SomethingElse"
    with pytest.raises(schemas.InvalidEvent, match=r"error\.type"):
        schemas.decode(json.dumps(response).encode(), schemas.RouteResponse)


def test_the_roots() -> None:
    assert issubclass(provider_errors.RateLimitError, errors.WorkerError)
    assert issubclass(scores.ScoreRejected, errors.WorkerError)
    assert provider_errors.RateLimitError.retriable
    assert not provider_errors.InsufficientQuotaError.retriable
    assert errors.RequestRejected("no").code == "RequestRejected"


def test_the_docs_list_every_code() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text("utf-8")
    for code in schemas.ERROR_CODES:
        assert f"| `{code}` |" in text, code
