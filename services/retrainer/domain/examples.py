"""Dataset rows -> training examples, pure (no I/O): what the trainers learn from.

A dataset row (see `services.feedback_aggregation.adapters.dataset_writer`) holds the model `inputs` and the
expected `output` as decoded JSON values. Inputs come in the shapes the gateway accepts: one record
(`{"alcohol": 13.2, ...}` with a single output), a list of records, or columns (`{"alcohol": [..]}`),
with one output per record. A row that cannot be turned into examples is not guessed at: it is reported
as a problem (which fails the data schema gate) together with its request id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Label = int | str

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "model", "inputs", "output")


@dataclass
class LabeledExamples:
    """Tabular examples: one feature record and one label per example (several per row possible)."""

    request_ids: list[str] = field(default_factory=list)
    features: list[dict[str, float]] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FieldExamples:
    """Examples of a program with named input and output fields (DSPy signatures)."""

    request_ids: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


def _records(inputs: Any) -> list[Mapping[str, Any]] | None:
    """The records of a gateway-style input, or None when it has no record shape."""
    if isinstance(inputs, Mapping):
        values = list(inputs.values())
        if values and all(isinstance(v, list) for v in values):
            if len({len(v) for v in values}) != 1:
                return None
            keys = list(inputs.keys())
            return [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)]
        return [inputs]
    if isinstance(inputs, list) and inputs and all(isinstance(r, Mapping) for r in inputs):
        return list(inputs)
    return None


def _outputs(output: Any, count: int, single: bool) -> list[Any] | None:
    if single and not isinstance(output, list):
        return [output]
    if isinstance(output, list) and len(output) == count:
        return list(output)
    return None


def normalize_label(value: Any) -> Label | None:
    """An integral number or digit string -> int; other text kept; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        return text or None
    return None


def _feature(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def tabular_examples(
    rows: Iterable[Mapping[str, Any]],
    feature_names: Sequence[str],
    *,
    allowed_labels: Collection[Label] | None = None,
) -> LabeledExamples:
    """Feature records (exactly `feature_names`, extra input fields ignored) and labels of `rows`.

    A row contributes all of its records or none: one bad record makes the whole row a problem.
    """
    result = LabeledExamples()
    for index, row in enumerate(rows):
        rid = str(row.get("request_id") or f"row {index}")
        inputs = row.get("inputs")
        records = _records(inputs)
        if records is None:
            result.problems.append(f"{rid}: inputs are not a record, list of records or columns")
            continue
        outputs = _outputs(row.get("output"), len(records), isinstance(inputs, Mapping) and len(records) == 1)
        if outputs is None:
            result.problems.append(f"{rid}: output does not give one label per input record")
            continue
        parsed: list[tuple[dict[str, float], Label]] = []
        problem = None
        for record, output in zip(records, outputs, strict=True):
            missing = [n for n in feature_names if n not in record]
            if missing:
                problem = f"{rid}: inputs miss {missing}"
                break
            values = {n: _feature(record[n]) for n in feature_names}
            bad = [n for n, v in values.items() if v is None]
            if bad:
                problem = f"{rid}: non-numeric or non-finite {bad}"
                break
            label = normalize_label(output)
            if label is None:
                problem = f"{rid}: output {output!r} is not a label"
                break
            if allowed_labels is not None and label not in allowed_labels:
                problem = f"{rid}: label {label!r} is not one of {sorted(allowed_labels, key=str)}"
                break
            parsed.append(({n: v for n, v in values.items() if v is not None}, label))
        if problem is not None:
            result.problems.append(problem)
            continue
        for features, label in parsed:
            result.request_ids.append(rid)
            result.features.append(features)
            result.labels.append(label)
    return result


def _feature_key(values: Iterable[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 9) for v in values)


def drop_overlap(
    examples: LabeledExamples, held_out: Iterable[Sequence[float]], feature_names: Sequence[str]
) -> tuple[LabeledExamples, int]:
    """Examples whose features equal a held-out row removed (evaluating on trained-on rows would flatter
    the candidate); returns the kept examples and how many were dropped. `held_out` rows list the
    values in `feature_names` order."""
    seen = {_feature_key(row) for row in held_out}
    kept = LabeledExamples(problems=list(examples.problems))
    dropped = 0
    for rid, features, label in zip(examples.request_ids, examples.features, examples.labels, strict=True):
        if _feature_key(features[n] for n in feature_names) in seen:
            dropped += 1
            continue
        kept.request_ids.append(rid)
        kept.features.append(features)
        kept.labels.append(label)
    return kept, dropped


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def field_examples(
    rows: Iterable[Mapping[str, Any]], input_fields: Sequence[str], output_fields: Sequence[str]
) -> FieldExamples:
    """Inputs and expected outputs by field name, for programs with a named signature.

    `inputs` must be one record holding every input field. `output` is a record holding every output
    field or, when there is exactly one output field, its bare value.
    """
    result = FieldExamples()
    for index, row in enumerate(rows):
        rid = str(row.get("request_id") or f"row {index}")
        inputs, output = row.get("inputs"), row.get("output")
        if isinstance(inputs, str) and len(input_fields) == 1:
            inputs = {input_fields[0]: inputs}
        if not isinstance(inputs, Mapping):
            result.problems.append(f"{rid}: inputs are not a record of {list(input_fields)}")
            continue
        missing = [f for f in input_fields if f not in inputs]
        if missing:
            result.problems.append(f"{rid}: inputs miss {missing}")
            continue
        if isinstance(output, Mapping):
            missing = [f for f in output_fields if f not in output]
            if missing:
                result.problems.append(f"{rid}: output misses {missing}")
                continue
            expected = {f: output[f] for f in output_fields}
        elif len(output_fields) == 1 and output is not None and not isinstance(output, list):
            expected = {output_fields[0]: output}
        else:
            result.problems.append(f"{rid}: output is not a record of {list(output_fields)}")
            continue
        result.request_ids.append(rid)
        result.inputs.append({f: inputs[f] for f in input_fields})
        result.outputs.append({f: _text(v) for f, v in expected.items()})
    return result


def normalize_text(value: Any) -> str:
    return " ".join(_text(value).strip().lower().split())


def outputs_match(expected: Mapping[str, Any], predicted: Mapping[str, Any]) -> bool:
    """Exact match of every expected field, ignoring case and whitespace runs."""
    return all(
        f in predicted and normalize_text(predicted[f]) == normalize_text(v) for f, v in expected.items()
    )


def split_holdout(request_ids: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """Indices (train, held-out), decided by a hash of each request id: the same dataset always splits
    the same way, and an example never moves between the sides when others are added. With two or more
    examples neither side is empty."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be within (0, 1)")
    scored = [
        (int.from_bytes(hashlib.sha256(rid.encode("utf-8")).digest()[:8], "big") / 2**64, i)
        for i, rid in enumerate(request_ids)
    ]
    train = [i for score, i in scored if score >= fraction]
    held = [i for score, i in scored if score < fraction]
    if len(scored) >= 2:
        if not held:
            held.append(train.pop(min(range(len(train)), key=lambda k: scored[train[k]][0])))
        elif not train:
            train.append(held.pop(max(range(len(held)), key=lambda k: scored[held[k]][0])))
    return sorted(train), sorted(held)
