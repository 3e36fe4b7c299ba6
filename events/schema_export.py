"""Generate the JSON Schemas of all events (checked in under `events/schemas/`).

Run `python -m events.schema_export` after changing a model; a test fails while a checked-in schema and
its model disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from events.models import ALL_EVENTS

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schema_documents() -> dict[str, str]:
    """File name -> JSON text of every event's schema (by-alias, as on the wire)."""
    docs: dict[str, str] = {}
    for cls in ALL_EVENTS:
        schema = cls.model_json_schema(by_alias=True, mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://flywheel.dev/schemas/{cls.schema_id_value()}.json"
        file_name = cls.SCHEMA_NAME.removeprefix("flywheel.") + f".v{cls.SCHEMA_MAJOR}.json"
        docs[file_name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return docs


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
