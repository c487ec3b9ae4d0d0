"""The OpenAPI document: request bodies the routes read by hand, with every ``$ref`` resolvable.

The agent routes read their bodies themselves (byte caps, signatures), so FastAPI cannot derive
the body schema; ``openapi_extra`` supplies it from the pydantic models. A model's JSON schema
keeps its nested models under a local ``$defs``, whose ``#/$defs/…`` references do not resolve
once the schema sits inside the OpenAPI document. :func:`schema_of` points the references at
``#/components/schemas/…`` and :class:`CollectorApi` moves every ``$defs`` there.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

REF_TEMPLATE = "#/components/schemas/{model}"


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with references into ``components/schemas``, and dictionary
    key constraints stated where a validator reads them (see :func:`_key_patterns`)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    _key_patterns(schema)
    return schema


def _key_patterns(node: Any) -> None:
    """pydantic writes a constrained dict key as ``patternProperties`` (which only says what
    values of matching keys must be, leaving other keys free) plus ``propertyNames`` without
    the pattern; the model refuses those other keys, so the pattern goes in
    ``propertyNames`` too."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        names = node.get("propertyNames")
        if isinstance(patterns, dict) and len(patterns) == 1 and isinstance(names, dict):
            names.setdefault("pattern", next(iter(patterns)))
        for value in node.values():
            _key_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _key_patterns(value)


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a required ``application/json`` body of ``schema``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def hoist_definitions(spec: dict[str, Any]) -> None:
    """Move every nested ``$defs`` into ``components/schemas`` (in place). Two different
    definitions under one name would make a reference ambiguous: that is a bug, raised."""
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, definition in (node.pop("$defs", None) or {}).items():
                found[name] = definition
                walk(definition)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec.get("paths", {}))
    for name, definition in found.items():
        if name in schemas and schemas[name] != definition:
            raise ValueError(f"OpenAPI: two different schemas named {name!r}")
        schemas[name] = definition


class CollectorApi(FastAPI):
    """FastAPI whose OpenAPI document has every body definition in ``components``."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            spec = super().openapi()
            hoist_definitions(spec)
            self.openapi_schema = spec
        return self.openapi_schema
