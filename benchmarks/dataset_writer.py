"""`flywheel bench dataset-writer`: rows/s of the dataset writer, JSONL and Parquet timed separately.

Synthetic example rows (a small JSON question/context as inputs, a JSON answer as output, a quarter of
them corrections) are generated first and not timed. A 1,000-row write runs before the clock starts:
the first `pa.array` call in a process pays a one-time initialisation (~0.5 s here) that says nothing
about throughput. Each format is then written `repeats` times with `export_rows`, into a fresh file
each time; the median and best rates are reported, plus one full `write_dataset` (JSONL + Parquet +
manifest, columns built once) and its `verify_manifest`.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from services.feedback_aggregation.adapters.dataset_writer import export_rows, write_dataset
from services.feedback_aggregation.domain.examples import ExampleRow
from services.shared import jsontext
from services.shared.dataset_manifest import verify_manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_rows(n: int) -> list[ExampleRow]:
    rows = []
    for i in range(n):
        corrected = i % 4 == 0
        rows.append(
            ExampleRow(
                request_id=f"req-{i:010d}",
                model="support_bot",
                version=str(1 + i % 3),
                inputs={
                    "question": f"How do I reset device {i}?",
                    "context": ["faq", "manual"],
                    "lang": "en",
                },
                output={
                    "answer": f"Hold the power button for {i % 30} seconds.",
                    "confidence": 0.5 + i % 50 / 100,
                },
                source="corrected" if corrected else "thumbs_up",
                rating="thumbs_down" if corrected else "thumbs_up",
                user_id=f"user-{i % 1000}",
                feedback_at=T0 + timedelta(seconds=i, microseconds=i % 1000),
                served_at=T0 + timedelta(seconds=i - 5),
                trace_id=f"tr-{i:032x}",
            )
        )
    return rows


def _rate(n: int, seconds: float) -> int:
    return round(n / seconds) if seconds > 0 else 0


def _time_format(rows: list[ExampleRow], fmt: str, workdir: Path, repeats: int) -> dict[str, Any]:
    seconds: list[float] = []
    size = 0
    for k in range(repeats):
        started = time.perf_counter()
        written = export_rows(rows, workdir / f"bench-{k}.{fmt}", fmt)  # type: ignore[arg-type]
        seconds.append(time.perf_counter() - started)
        size = written.size_bytes
    return {
        "rows_per_s_median": _rate(len(rows), statistics.median(seconds)),
        "rows_per_s_best": _rate(len(rows), min(seconds)),
        "seconds_median": round(statistics.median(seconds), 4),
        "size_bytes": size,
    }


def run(rows: int = 200_000, repeats: int = 3) -> dict[str, Any]:
    data = synthetic_rows(rows)
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-ds-") as tmp:
        workdir = Path(tmp)
        export_rows(data[:1000], workdir / "warmup.parquet", "parquet")
        result: dict[str, Any] = {
            "rows": rows,
            "repeats": repeats,
            "jsonl": _time_format(data, "jsonl", workdir, repeats),
            "parquet": _time_format(data, "parquet", workdir, repeats),
        }
        started = time.perf_counter()
        written = write_dataset(
            data,
            workdir / "dataset" / "v1",
            dataset_name="support_bot-feedback",
            dataset_version=1,
            model="support_bot",
            created_at=T0,
        )
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        verify_manifest(written.directory, written.manifest_sha256)
        verify_s = time.perf_counter() - started
    result["write_dataset"] = {"rows_per_s": _rate(rows, elapsed), "seconds": round(elapsed, 4)}
    result["verify_manifest_s"] = round(verify_s, 4)
    result["environment"] = {
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "json_encoder": "orjson" if jsontext.uses_orjson() else "json",
    }
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
