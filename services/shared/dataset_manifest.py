"""The contract of a dataset version on disk: its manifest and how to verify it.

Written by the feedback aggregation service (`feedback_aggregation/dataset_writer.py`), verified by the
retrainer before anything learns from it. A version directory holds the example files and
`manifest.json`, which lists each file in the shape of `events.DatasetFile` (name, format, SHA-256,
size, rows); `inputs` and `output` are JSON text in every format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from events import DatasetFile
from services.shared.jsontext import loads

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
JSON_COLUMNS = ("inputs", "output")


class ManifestMismatch(ValueError):
    """The files on disk are not the ones the manifest describes."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def file_digest(path: Path) -> tuple[str, int, int]:
    """(sha256 hex, size in bytes, newline count) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = newlines = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
            newlines += block.count(b"\n")
    return digest.hexdigest(), size, newlines


def verify_manifest(directory: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Check a dataset directory against its manifest; returns the manifest, raises ManifestMismatch.

    Checked: the manifest's own SHA-256 (when the publisher's value is given, e.g. from
    DatasetPublished), each listed file's presence, size, SHA-256 and row count, and that no unlisted
    file was added. File names must be plain names inside the directory (a manifest cannot point out).
    """
    directory = Path(directory)
    raw = (directory / MANIFEST).read_bytes()
    problems: list[str] = []
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        problems.append(f"{MANIFEST}: sha256 differs from the published {expected_sha256}")
    manifest: dict[str, Any] = loads(raw)
    listed = {MANIFEST}
    for entry in manifest.get("files", []):
        problems += _check_file(directory, DatasetFile.model_validate(entry))
        listed.add(entry["path"])
    unlisted = sorted(p.name for p in directory.iterdir() if p.name not in listed)
    if unlisted:
        problems.append(f"files not in the manifest: {unlisted}")
    if problems:
        raise ManifestMismatch(problems)
    return manifest


def _check_file(directory: Path, entry: DatasetFile) -> list[str]:
    name = entry.path
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        return [f"{name!r}: not a plain file name"]
    path = directory / name
    if not path.is_file():
        return [f"{name}: missing"]
    sha256, size, newlines = file_digest(path)
    problems = []
    if size != entry.size_bytes:
        problems.append(f"{name}: {size} bytes, manifest says {entry.size_bytes}")
    if sha256 != entry.sha256:
        problems.append(f"{name}: sha256 {sha256}, manifest says {entry.sha256}")
    rows = _count_rows(path, entry.format, newlines)
    if rows is not None and rows != entry.rows:
        problems.append(f"{name}: {rows} rows, manifest says {entry.rows}")
    return problems


def _count_rows(path: Path, fmt: str, newlines: int) -> int | None:
    """Rows where counting is cheap (JSONL lines, Parquet metadata); None for CSV/JSON."""
    if fmt == "jsonl":
        return newlines
    if fmt == "parquet":
        try:
            return int(pq.ParquetFile(str(path)).metadata.num_rows)
        except (pa.ArrowInvalid, OSError):
            return -1
    return None
