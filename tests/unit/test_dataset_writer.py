"""Dataset writer: immutable versions with a verifiable manifest, and streamed exports in four formats."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import DatasetFile, DatasetPublished
from services.feedback_aggregation.adapters.dataset_writer import (
    SCHEMA,
    DatasetExistsError,
    export_rows,
    read_rows,
    write_dataset,
)
from services.feedback_aggregation.domain.examples import COLUMNS, ExampleRow
from services.shared.dataset_manifest import MANIFEST, ManifestMismatch, verify_manifest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_rows(n: int, model: str = "m") -> list[ExampleRow]:
    return [
        ExampleRow(
            request_id=f"r{i}",
            model=model,
            version=str(10 if i % 3 == 0 else 2),
            inputs={"question": f"q{i}", "ctx": [1, 2.5, None], "ünï": "cödé"},
            output={"answer": f"a{i}"} if i % 2 else f"plain {i}",
            source="corrected" if i % 2 == 0 else "thumbs_up",
            rating="thumbs_down" if i % 2 == 0 else "thumbs_up",
            user_id=None if i % 5 == 0 else f"u{i}",
            feedback_at=T0 + timedelta(seconds=i, microseconds=i),
            served_at=None if i % 4 == 0 else T0 + timedelta(seconds=i - 1),
            trace_id=None if i % 3 == 0 else f"t{i}",
        )
        for i in range(n)
    ]


def write(rows: Iterable[ExampleRow], directory: Path, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "dataset_name": "m-feedback",
        "dataset_version": 3,
        "model": "m",
        "created_at": T0 + timedelta(days=1),
    }
    return write_dataset(rows, directory, **(args | kw))


def test_version_directory_holds_files_and_a_manifest(tmp_path: Path) -> None:
    rows = make_rows(10)
    written = write(rows, tmp_path / "v3", chunk_rows=4)
    assert sorted(p.name for p in (tmp_path / "v3").iterdir()) == [
        "examples.jsonl",
        "examples.parquet",
        MANIFEST,
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["v3"]  # no temporary directory left behind
    manifest = json.loads((tmp_path / "v3" / MANIFEST).read_text())
    assert manifest == written.manifest
    assert {
        k: manifest[k] for k in ("dataset_name", "dataset_version", "model", "rows", "corrected_rows")
    } == {
        "dataset_name": "m-feedback",
        "dataset_version": 3,
        "model": "m",
        "rows": 10,
        "corrected_rows": 5,
    }
    assert manifest["created_at"] == "2026-01-02T00:00:00Z"
    assert manifest["model_versions"] == ["2", "10"]  # numeric order, not string order
    assert manifest["time_start"] == "2026-01-01T00:00:00Z"
    assert manifest["time_end"] == "2026-01-01T00:00:09.000009Z"
    assert [c["name"] for c in manifest["schema"]] == list(COLUMNS)
    assert manifest["schema"][8] == {
        "name": "feedback_at",
        "type": "timestamp[us, tz=UTC]",
        "nullable": False,
    }
    for entry in manifest["files"]:
        file = DatasetFile.model_validate(entry)
        data = (tmp_path / "v3" / file.path).read_bytes()
        assert file.sha256 == hashlib.sha256(data).hexdigest()
        assert file.size_bytes == len(data) and file.rows == 10
    raw = (tmp_path / "v3" / MANIFEST).read_bytes()
    assert written.manifest_sha256 == hashlib.sha256(raw).hexdigest()
    event = DatasetPublished(
        producer="t", run_id="run", artifact_uri="file:///x", **written.published_fields()
    )
    assert event.rows == 10 and event.corrected_rows == 5 and event.model_versions == ["2", "10"]


def test_verify_accepts_an_untouched_version(tmp_path: Path) -> None:
    written = write(make_rows(7), tmp_path / "v")
    assert verify_manifest(tmp_path / "v", written.manifest_sha256)["rows"] == 7
    assert verify_manifest(tmp_path / "v")["dataset_version"] == 3


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: flip_last_byte(d / "examples.parquet"), "examples.parquet: sha256"),
        (lambda d: (d / "examples.jsonl").write_bytes((d / "examples.jsonl").read_bytes() + b"{}\n"), "rows"),
        (lambda d: (d / "examples.jsonl").unlink(), "examples.jsonl: missing"),
        (lambda d: (d / "extra.csv").write_text("x"), "not in the manifest"),
    ],
)
def test_verify_detects_tampering(tmp_path: Path, tamper: Any, message: str) -> None:
    write(make_rows(5), tmp_path / "v")
    tamper(tmp_path / "v")
    with pytest.raises(ManifestMismatch, match=message):
        verify_manifest(tmp_path / "v")


def test_verify_detects_an_edited_manifest(tmp_path: Path) -> None:
    written = write(make_rows(5), tmp_path / "v")
    path = tmp_path / "v" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["rows"] = 500
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(ManifestMismatch, match="differs from the published"):
        verify_manifest(tmp_path / "v", written.manifest_sha256)
    manifest["files"][1]["rows"] = 6  # a consistent-looking lie about the Parquet row count
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatch, match="5 rows, manifest says 6"):
        verify_manifest(tmp_path / "v")


def test_manifest_cannot_point_outside_the_directory(tmp_path: Path) -> None:
    write(make_rows(2), tmp_path / "v")
    path = tmp_path / "v" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"].append({**manifest["files"][0], "path": "../secret"})
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatch, match="not a plain file name"):
        verify_manifest(tmp_path / "v")


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "v"
    write(make_rows(3), target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(DatasetExistsError):
        write(make_rows(4), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_refusal_happens_before_any_row_is_read(tmp_path: Path) -> None:
    write(make_rows(1), tmp_path / "v")

    def untouchable() -> Iterator[ExampleRow]:
        raise AssertionError("rows were read although the directory was taken")
        yield  # pragma: no cover

    with pytest.raises(DatasetExistsError, match="immutable"):
        write(untouchable(), tmp_path / "v")


def test_an_existing_empty_directory_is_filled(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    write(make_rows(3), tmp_path / "v")
    verify_manifest(tmp_path / "v")


def test_rows_of_another_model_are_refused_without_leaving_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other models"):
        write(make_rows(3) + make_rows(1, model="other"), tmp_path / "v")
    assert list(tmp_path.iterdir()) == []


def test_parquet_and_jsonl_round_trip_to_the_same_rows(tmp_path: Path) -> None:
    rows = make_rows(25)
    write(rows, tmp_path / "v", chunk_rows=7)
    assert pq.read_schema(tmp_path / "v" / "examples.parquet").remove_metadata() == SCHEMA
    assert pq.ParquetFile(tmp_path / "v" / "examples.parquet").metadata.num_row_groups == 4
    assert list(read_rows(tmp_path / "v" / "examples.parquet")) == rows
    assert list(read_rows(tmp_path / "v" / "examples.jsonl")) == rows
    table = pq.read_table(tmp_path / "v" / "examples.parquet")
    assert json.loads(table.column("inputs")[0].as_py()) == rows[0].inputs  # JSON text in the file


def test_same_rows_give_the_same_file_hashes(tmp_path: Path) -> None:
    a = write(make_rows(30), tmp_path / "a", created_at=T0)
    b = write(make_rows(30), tmp_path / "b", created_at=T0)
    assert a.files == b.files and a.manifest_sha256 == b.manifest_sha256
    c = write(make_rows(30), tmp_path / "c", created_at=T0, chunk_rows=8)
    assert c.files[0] == a.files[0]  # JSONL bytes do not depend on chunking (Parquet row groups do)


def test_empty_dataset_is_valid(tmp_path: Path) -> None:
    written = write([], tmp_path / "v")
    assert written.manifest["rows"] == 0 and written.manifest["time_start"] is None
    assert verify_manifest(tmp_path / "v")["model_versions"] == []
    assert list(read_rows(tmp_path / "v" / "examples.parquet")) == []


# --- export_rows ----------------------------------------------------------------------------------


def test_export_csv(tmp_path: Path) -> None:
    rows = make_rows(6)
    file = export_rows(rows, tmp_path / "x.csv", "csv", chunk_rows=4)
    assert (file.path, file.format, file.rows) == ("x.csv", "csv", 6)
    with (tmp_path / "x.csv").open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    assert list(records[0]) == list(COLUMNS)
    assert [json.loads(r["inputs"]) for r in records] == [r.inputs for r in rows]
    assert records[0]["user_id"] == "" and records[1]["user_id"] == "u1"
    assert records[1]["feedback_at"] == "2026-01-01T00:00:01.000001Z"


def test_export_json_is_one_array(tmp_path: Path) -> None:
    rows = make_rows(9)
    export_rows(rows, tmp_path / "x.json", "json", chunk_rows=4)
    records = json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))
    assert [r["request_id"] for r in records] == [r.request_id for r in rows]
    assert records[0]["served_at"] is None and records[1]["served_at"] == "2026-01-01T00:00:00Z"
    export_rows([], tmp_path / "empty.json", "json")
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_export_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = make_rows(11)
    jsonl = export_rows(rows, tmp_path / "x.jsonl", "jsonl", chunk_rows=3)
    parquet = export_rows(rows, tmp_path / "x.parquet", "parquet", chunk_rows=3)
    assert jsonl.rows == parquet.rows == 11
    assert list(read_rows(tmp_path / "x.jsonl")) == rows
    assert list(read_rows(tmp_path / "x.parquet")) == rows
    assert parquet.sha256 == hashlib.sha256((tmp_path / "x.parquet").read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_chunk_size_does_not_change_text_output(tmp_path: Path, fmt: Any) -> None:
    rows = make_rows(10)
    small = export_rows(rows, tmp_path / f"a.{fmt}", fmt, chunk_rows=3)
    large = export_rows(rows, tmp_path / f"b.{fmt}", fmt, chunk_rows=1000)
    assert small.sha256 == large.sha256


def test_export_streams_from_a_generator_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def broken() -> Iterator[ExampleRow]:
        yield from make_rows(5)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        export_rows(broken(), tmp_path / "x.parquet", "parquet", chunk_rows=2)
    assert list(tmp_path.iterdir()) == []
    assert export_rows(iter(make_rows(5)), tmp_path / "x.jsonl", "jsonl", chunk_rows=2).rows == 5


def test_export_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    export_rows(make_rows(2), tmp_path / "x.jsonl", "jsonl")
    with pytest.raises(FileExistsError):
        export_rows(make_rows(3), tmp_path / "x.jsonl", "jsonl")
    assert export_rows(make_rows(3), tmp_path / "x.jsonl", "jsonl", overwrite=True).rows == 3
    with pytest.raises(ValueError, match="unknown format"):
        export_rows(make_rows(1), tmp_path / "x.xml", "xml")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inputs=st.lists(json_values, min_size=1, max_size=5), output=json_values.filter(lambda v: v is not None)
)
def test_any_json_inputs_round_trip(tmp_path: Path, inputs: list[Any], output: Any) -> None:
    rows = [
        ExampleRow(f"r{i}", "m", "1", value, output, "thumbs_up", "thumbs_up", None, T0, None, None)
        for i, value in enumerate(inputs)
    ]
    formats: tuple[Literal["parquet", "jsonl"], ...] = ("parquet", "jsonl")
    for fmt in formats:
        path = tmp_path / f"x.{fmt}"
        export_rows(rows, path, fmt, overwrite=True)
        assert list(read_rows(path)) == rows
