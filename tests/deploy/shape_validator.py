"""Validate a JSON document against a botocore input shape.

`aws ecs register-task-definition --cli-input-json file://ecs-task-def.json` sends the file as the
input of `RegisterTaskDefinition`. botocore ships the ECS service model that describes that input:
structures with required and known members, lists, maps, strings with enums, integers, booleans.
This module walks the document and the shape together and returns every mismatch, so a test can
fail with all of them at once.

Why our own walker and not only `botocore.validate.ParamValidator`: the SDK's validator does not
check `enum` values (a `networkMode` of "awsvpcx" passes it; the ECS API rejects it at register
time), and it takes JSON `true` for an integer member (Python's bool is an int). The tests run both.

Not checked: `pattern` (the ECS model uses `\\p{L}`-style classes that Python's `re` lacks; only
tag keys/values carry one) and server-side rules that are not in the model (Fargate cpu/memory
pairs, which test_task_definition.py checks separately).
"""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.model import Shape


def register_task_definition_input() -> Shape:
    """The input shape of ECS RegisterTaskDefinition from the pinned botocore's model."""
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_range(value: int, shape: Shape, path: str, what: str) -> list[str]:
    errors = []
    lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
    if lo is not None and value < lo:
        errors.append(f"{path}: {what} {value} is below the model's min {lo}")
    if hi is not None and value > hi:
        errors.append(f"{path}: {what} {value} is above the model's max {hi}")
    return errors


def validate(value: Any, shape: Shape, path: str = "$") -> list[str]:
    """Every way `value` does not fit `shape`, as human-readable strings (empty list: valid)."""
    t = shape.type_name
    got = _json_type(value)

    if t == "structure":
        if got != "object":
            return [f"{path}: expected a structure ({shape.name}, a JSON object), got {got}"]
        errors = []
        for name in shape.required_members:
            if name not in value:
                errors.append(f"{path}: missing required member {name!r} of {shape.name}")
        for name, member_value in value.items():
            if name not in shape.members:
                errors.append(
                    f"{path}: unknown member {name!r} of {shape.name} "
                    f"(known: {', '.join(sorted(shape.members))})"
                )
                continue
            errors += validate(member_value, shape.members[name], f"{path}.{name}")
        if shape.metadata.get("union") and len(value) != 1:
            errors.append(f"{path}: {shape.name} is a union: exactly one member must be set, got {len(value)}")
        return errors

    if t == "list":
        if got != "array":
            return [f"{path}: expected a list ({shape.name}, a JSON array), got {got}"]
        errors = _check_range(len(value), shape, path, "list length")
        for i, item in enumerate(value):
            errors += validate(item, shape.member, f"{path}[{i}]")
        return errors

    if t == "map":
        if got != "object":
            return [f"{path}: expected a map ({shape.name}, a JSON object), got {got}"]
        errors = []
        for k, v in value.items():
            errors += validate(k, shape.key, f"{path}{{key {k!r}}}")
            errors += validate(v, shape.value, f"{path}[{k!r}]")
        return errors

    if t == "string":
        if got != "string":
            return [f"{path}: expected a string ({shape.name}), got {got}"]
        errors = _check_range(len(value), shape, path, "string length")
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} is not one of {shape.name}'s values {shape.enum}")
        return errors

    if t in ("integer", "long"):
        if got != "integer":
            return [f"{path}: expected an integer ({shape.name}), got {got}"]
        return _check_range(value, shape, path, "value")

    if t == "boolean":
        if got != "boolean":
            return [f"{path}: expected a boolean ({shape.name}), got {got}"]
        return []

    if t in ("float", "double"):
        if got not in ("integer", "number"):
            return [f"{path}: expected a number ({shape.name}), got {got}"]
        return _check_range(value, shape, path, "value")

    # timestamp, blob, document: none occur in RegisterTaskDefinition today. Failing loudly
    # beats passing a shape this walker does not understand.
    return [f"{path}: shape type {t!r} ({shape.name}) is not supported by this validator"]
