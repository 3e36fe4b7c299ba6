"""`carry`: one model built from another that passes the same facts along under the same names.

A decision record becomes its event, a served prediction becomes the feedback on it, a resolution entry
becomes its reload notice: the fields they share keep their names on purpose, so copying them one by one
only restates the names (and forgets the next field someone adds to both). What differs is said in the
overrides, where a reader looks for it. Settings pass their knobs to a domain policy the same way,
under the service's prefix (`canary_alpha` -> `RolloutPolicy.alpha`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def carry(source: object, target: type[M], *, prefix: str = "", trusted: bool = False, **overrides: Any) -> M:
    """`target` from every attribute of `source` named `prefix` + one of its fields, then `overrides`.

    `trusted`: the values were validated already (`source` is a model of the same facts and the overrides
    are the caller's own): `target` is built without validating them again (`model_construct`), for hot
    paths such as a served prediction's request-log entry."""
    if isinstance(source, BaseModel):  # fields by dict, properties by class: no `hasattr` miss, which
        known, kind = source.__dict__, type(source)  # raises (slowly) inside pydantic's __getattr__
        values = {}
        for name in target.model_fields:
            key = prefix + name
            if key in known:
                values[name] = known[key]
            elif hasattr(kind, key):
                values[name] = getattr(source, key)
    else:
        values = {
            name: getattr(source, prefix + name)
            for name in target.model_fields
            if hasattr(source, prefix + name)
        }
    if trusted:
        return target.model_construct(**{**values, **overrides})
    return target(**{**values, **overrides})
