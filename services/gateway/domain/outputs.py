"""A correction must be an output the model could have given (pure): it is checked against the model's
output signature before it is recorded, because it becomes a training label.

Accepted shapes, as `predict` returns them: for one unnamed output (a classifier's label) a scalar of
its type, or a list holding one; for named outputs (a DataFrame's columns, a DSPy program's fields) an
object with every field of the right type — or, for a single named field, its bare value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from services.gateway.domain.inputs import InputError, InputField

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "long": (int,),
    "integer": (int,),
    "double": (int, float),
    "float": (int, float),
    "string": (str,),
    "boolean": (bool,),
}


def check_correction(
    value: Any, outputs: Sequence[InputField] | None, field: str = "corrected_output"
) -> None:
    """Raise InputError (naming the field) unless `value` fits the output signature; no signature: any."""
    if not outputs or value is None:
        return
    if len(outputs) == 1 and not outputs[0].name:
        if isinstance(value, list):
            if len(value) != 1:
                raise InputError(field, "expected one value (or a list of one)")
            value, field = value[0], f"{field}[0]"
        _check_value(value, outputs[0].type, field)
        return
    if len(outputs) == 1 and not isinstance(value, Mapping):
        _check_value(value, outputs[0].type, field)
        return
    if not isinstance(value, Mapping):
        raise InputError(field, f"expected an object with {', '.join(o.name for o in outputs)}")
    for spec in outputs:
        path = f"{field}.{spec.name}"
        if spec.name not in value or value[spec.name] is None:
            raise InputError(path, "field required")
        _check_value(value[spec.name], spec.type, path)
    unknown = sorted(set(value) - {o.name for o in outputs})
    if unknown:
        raise InputError(f"{field}.{unknown[0]}", "not an output of this model")


def _check_value(value: Any, type_name: str, field: str) -> None:
    allowed = _PYTHON_TYPES.get(type_name)
    if allowed is None:  # a type we do not check (tensor, binary, ...)
        return
    if isinstance(value, bool) and bool not in allowed:
        raise InputError(field, f"expected {type_name}, got a boolean")
    if not isinstance(value, allowed):
        raise InputError(field, f"expected {type_name}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(field, "must be a finite number")
