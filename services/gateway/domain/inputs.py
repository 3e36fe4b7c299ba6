"""Request inputs checked against a model's input signature, before the model sees them.

MLflow's own schema enforcement fails with one long message about the whole DataFrame; a client needs
to know *which* field of *which* row is wrong, so the gateway checks the JSON itself and answers 422
with a path such as `inputs[3].alcohol`. Accepted shapes, as `mlflow models serve` users know them:
one record (`{"a": 1, "b": 2}`), a list of records, or columns (`{"a": [1, 2], "b": [3, 4]}`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.shared.errors import Refused

NUMERIC_FLOAT = {"double", "float"}
NUMERIC_INT = {"long", "integer"}


@dataclass(frozen=True)
class InputField:
    """One named input of a model: its MLflow data type name (`double`, `long`, `string`, ...)."""

    name: str
    type: str = "any"
    required: bool = True


class InputError(Refused, ValueError):
    """A request input that does not match the signature; `field` is the JSON path of the culprit."""

    @property
    def field(self) -> str:
        return self.reason


@dataclass(frozen=True)
class ParsedInputs:
    records: list[dict[str, Any]]
    single: bool  # one record was sent as an object: answer with one output, not a list


def parse_inputs(
    inputs: object, fields: Sequence[InputField] | None, *, max_rows: int = 1000
) -> ParsedInputs:
    """Normalize `inputs` to a list of records and check them; `fields=None` means no signature."""
    records, single = _as_records(inputs)
    if not records:
        raise InputError("inputs", "at least one record is required")
    if len(records) > max_rows:
        raise InputError("inputs", f"{len(records)} records exceed the limit of {max_rows} per request")
    if fields:
        for i, record in enumerate(records):
            prefix = "inputs" if single else f"inputs[{i}]"
            records[i] = _check_record(record, fields, prefix)
    return ParsedInputs(records=records, single=single)


def _as_records(inputs: object) -> tuple[list[dict[str, Any]], bool]:
    if isinstance(inputs, Mapping):
        values = list(inputs.values())
        if values and all(isinstance(v, list) for v in values):
            lengths = {len(v) for v in values}
            if len(lengths) != 1:
                raise InputError("inputs", "columns must all have the same length")
            keys = list(inputs.keys())
            return [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)], False
        return [dict(inputs)], True
    if isinstance(inputs, list):
        for i, item in enumerate(inputs):
            if not isinstance(item, Mapping):
                raise InputError(f"inputs[{i}]", "each record must be an object of named fields")
        return [dict(item) for item in inputs], False
    if inputs is None:
        raise InputError("inputs", "field required")
    raise InputError("inputs", "must be an object (one record or columns) or a list of records")


def _check_record(record: dict[str, Any], fields: Sequence[InputField], prefix: str) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for spec in fields:
        path = f"{prefix}.{spec.name}"
        if spec.name not in record or record[spec.name] is None:
            if spec.required:
                raise InputError(path, "field required")
            checked[spec.name] = None
            continue
        checked[spec.name] = _coerce(record[spec.name], spec.type, path)
    return checked


def _coerce(value: object, type_name: str, path: str) -> object:
    if type_name in NUMERIC_FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(path, f"expected a number ({type_name}), got {type(value).__name__}")
        try:
            number = float(value)  # an int beyond ~1.8e308 does not convert: OverflowError
        except OverflowError:
            raise InputError(path, "number out of range") from None
        if not math.isfinite(number):
            raise InputError(path, "must be a finite number")
        return number
    if type_name in NUMERIC_INT:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"expected an integer ({type_name}), got {type(value).__name__}")
        bits = 32 if type_name == "integer" else 64
        if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            raise InputError(path, f"integer out of range ({type_name}: {bits} bits)")
        return value
    if type_name == "string":
        if not isinstance(value, str):
            raise InputError(path, f"expected a string, got {type(value).__name__}")
        return value
    if type_name == "boolean":
        if not isinstance(value, bool):
            raise InputError(path, f"expected true or false, got {type(value).__name__}")
        return value
    return value
