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


def carry(source: object, target: type[M], *, prefix: str = "", **overrides: Any) -> M:
    """`target` from every attribute of `source` named `prefix` + one of its fields, then `overrides`."""
    values = {
        name: getattr(source, prefix + name) for name in target.model_fields if hasattr(source, prefix + name)
    }
    return target(**{**values, **overrides})
