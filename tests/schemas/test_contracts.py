"""Every example in schemas/examples passes (valid) or fails (invalid) both the JSON Schema and
the Python decoder, and a rejection names the offending field in both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

import schemas

EXAMPLES = Path(schemas.__file__).parent / "examples"
EXPECTED: dict[str, str] = json.loads((EXAMPLES / "expected_errors.json").read_text())


def _registry() -> Registry[Any]:
    resources = []
    for path in Path(schemas.__file__).parent.glob("*.schema.json"):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = schemas.load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, registry=REGISTRY, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _examples(kind: str) -> list[tuple[str, Path]]:
    return sorted(
        (name, path)
        for name in schemas.SCHEMA_TYPES
        for path in (EXAMPLES / name / kind).glob("*.json")
    )


def test_every_schema_has_examples_of_both_kinds() -> None:
    for name in schemas.SCHEMA_TYPES:
        assert list((EXAMPLES / name / "valid").glob("*.json")), name
        assert list((EXAMPLES / name / "invalid").glob("*.json")), name


def test_every_invalid_example_declares_its_field() -> None:
    files = {str(p.relative_to(EXAMPLES)) for _, p in _examples("invalid")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize(("name", "path"), _examples("valid"), ids=lambda v: getattr(v, "stem", v))
def test_valid_example_passes_schema_and_decoder(name: str, path: Path) -> None:
    raw = path.read_bytes()
    _validator(name).validate(json.loads(raw))
    event = schemas.decode(raw, schemas.SCHEMA_TYPES[name])
    # what the decoder re-encodes is still valid, and decodes to the same value
    again = schemas.encode(event)
    _validator(name).validate(json.loads(again))
    assert schemas.decode(again, schemas.SCHEMA_TYPES[name]) == event


@pytest.mark.parametrize(
    ("name", "path"), _examples("invalid"), ids=lambda v: getattr(v, "stem", v)
)
def test_invalid_example_rejected_by_both_naming_the_field(name: str, path: Path) -> None:
    field = EXPECTED[str(path.relative_to(EXAMPLES))]
    raw = path.read_bytes()
    errors = list(_validator(name).iter_errors(json.loads(raw)))
    assert errors, "JSON Schema accepted an invalid example"
    best = jsonschema.exceptions.best_match(errors)
    assert best is not None
    described = " ".join(
        ["/".join(str(p) for p in best.absolute_path), best.message]
        + [sub.message for sub in best.context]  # anyOf / oneOf alternatives
    )
    assert field in described, described
    with pytest.raises(schemas.InvalidEvent) as caught:
        schemas.decode(raw, schemas.SCHEMA_TYPES[name])
    assert field in str(caught.value)


def test_garbage_bytes_are_an_invalid_event() -> None:
    with pytest.raises(schemas.InvalidEvent, match=r"malformed|JSON|truncated"):
        schemas.decode(b"{not json", schemas.RouteRequest)


def test_every_schema_file_is_a_valid_2020_12_schema_with_version() -> None:
    for path in Path(schemas.__file__).parent.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)
        if path.name not in ("common.schema.json", "dataset.schema.json"):
            assert "schema_version" in schema["required"], path.name


def test_schema_properties_match_struct_fields() -> None:
    """The two definitions name the same fields, so neither can drift alone."""
    for name, type_ in schemas.SCHEMA_TYPES.items():
        schema = schemas.load_schema(name)
        assert set(schema["properties"]) == set(type_.__struct_fields__), name
        required = {f for f, d in zip(type_.__struct_fields__, _defaults(type_), strict=True) if d}
        assert set(schema["required"]) == required, name


def _defaults(type_: Any) -> list[bool]:
    """True for each field without a default (a required field)."""
    import msgspec

    info = msgspec.inspect.type_info(type_)
    return [f.required for f in info.fields]


MODULES_AND_IMPORTS = {
    "annotations",
    "codec",
    "errors",
    "events",
    "json",
    "resources",
    "trace",
    "Any",
}


def test_public_surface() -> None:
    assert sorted(schemas.__all__) == sorted(
        n for n in dir(schemas) if not n.startswith("_") and n not in MODULES_AND_IMPORTS
    )


# ------------------------------------------------------------ duplicate keys (issue 13)

_json_keys = st.text(st.sampled_from('ab:"\\é \u003a'), min_size=1, max_size=4)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(st.sampled_from('x:"\\'), max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_json_keys, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_json_keys, _json_values, min_size=1, max_size=4), st.data())
def test_duplicate_keys_are_found_exactly(obj, data) -> None:
    """The fast check agrees with a full parse: a document written with one key twice is
    caught, any other document passes (colons in keys and strings, escapes, nesting)."""
    from schemas.codec import _duplicate_key

    text = json.dumps(obj, ensure_ascii=data.draw(st.booleans()))
    assert _duplicate_key(text.encode()) is None
    key = data.draw(st.sampled_from(sorted(obj)))
    doubled = text[:-1] + ", " + json.dumps(key) + ": " + json.dumps(obj[key]) + "}"
    assert _duplicate_key(doubled.encode()) == key
