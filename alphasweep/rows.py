"""Rows of a dataset, for SFT data and benchmarks alike, numbered as the user sees them; what an SFT row holds.

A path is local (`looks_local`) when it starts with `/`, `.` or `~`, ends in a data-file suffix, or has
more than one `/` (a hub id is `name` or `org/name`); anything else is a hub id. Local paths are a
.jsonl/.json/.parquet file (or a named pipe), or a folder holding `<split>.jsonl|json|parquet`.

Local files are read as written, without type coercion: `datasets`' JSON loader infers a column's type
from the first rows and converts (or rejects) later ones, so it blames the wrong row; here a row keeps its
own values and its place in the file (`line N` in JSON Lines, `row N` in a JSON list or Parquet, 1-based).
Hub ids load through `datasets`. Torch-free: `alphasweep validate` reads every row with this module.

A row's field is named by its key or by a dotted path into nested columns (`field_value`): hub datasets
often keep the text inside a struct column (the paper's data: `extra_info.question`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from alphasweep.config import DataSpec

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


MISSING = object()  # what `field_value` returns for a field the row does not have


class DataError(ValueError):
    """A problem with data that the user must fix (or skip with `skip_bad_rows: true`)."""


class Row(NamedTuple):
    where: str  # "line 7" in a JSON Lines file, "row 7" in a JSON list, a Parquet file or a hub dataset
    value: Any  # as parsed: a dict when the row is well formed


def describe(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (the type alone when empty)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def found(value: Any) -> str:
    """A value as an error message shows what it found: its type and a short repr (JSON's null as null)."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def looks_local(path: str) -> bool:
    """Whether `path` names a local file or folder rather than a hub id (whether or not it exists)."""
    return path.startswith(("/", ".", "~")) or Path(path).suffix in LOCAL_SUFFIXES or path.count("/") > 1


def field_value(row: object, path: str) -> object:
    """`row[path]` if the row has that key (a flattened column), else `row[a][b]...` for `path = "a.b..."`;
    `MISSING` when absent."""
    if not isinstance(row, dict):
        return MISSING
    if path in row:
        return row[path]
    node: object = row
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


# ---------------------------------------------------------------- local files


def _decode(raw: bytes, path: Path, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {where}not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"expected JSON") from None


def _read_jsonl(path: Path, limit: int | None) -> list[Row]:
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = _decode(raw, path, f"line {lineno}: ").rstrip("\r\n")
            if not text.strip():
                continue
            try:
                rows.append(Row(f"line {lineno}", json.loads(text)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _read_json(path: Path, limit: int | None) -> list[Row]:
    text = _decode(path.read_bytes(), path, "")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and e.lineno > 1:  # JSON Lines in a .json file, as `datasets` accepts
            return _read_jsonl(path, limit)
        raise DataError(f"{path}: not valid JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"split": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or an object holding one list)")
    return [Row(f"row {i}", row) for i, row in enumerate(data[:limit], 1)]


def _read_parquet(path: Path, limit: int | None) -> list[Row]:
    import pyarrow  # heavy; only Parquet files need it
    import pyarrow.parquet as pq

    try:  # a named pipe cannot seek: read it whole first
        table = pq.read_table(path if path.is_file() else pyarrow.BufferReader(path.read_bytes()))
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file: {describe(e)}") from None
    return [Row(f"row {i}", row) for i, row in enumerate(table.slice(0, limit).to_pylist(), 1)]


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def read_local(path: Path, limit: int | None = None) -> list[Row]:
    """The rows of a local .jsonl / .json / .parquet file (the first `limit`); a file with none is an error."""
    reader = _READERS.get(path.suffix)
    if reader is None:
        raise DataError(f"{path}: expected a {', '.join(LOCAL_SUFFIXES)} file")
    rows = reader(path, limit)
    if not rows:
        raise DataError(f"{path}: no rows" + (" (the file is empty)" if path.stat().st_size == 0 else ""))
    return rows


def load_rows(path: str, *, split: str = "train", subset: str | None = None, what: str = "data") -> list[Row]:
    """Every row with its place. `what` ("data", "benchmark") names the source in errors: FileNotFoundError
    for a missing local file, `DataError` for one that does not parse or a hub dataset that does not load."""
    local = Path(path).expanduser()
    if local.is_dir():
        for suffix in LOCAL_SUFFIXES:
            if (local / f"{split}{suffix}").is_file():
                return read_local(local / f"{split}{suffix}")
        raise FileNotFoundError(f"{what} folder {path} holds no {split}.jsonl, {split}.json or {split}.parquet")
    if looks_local(path):
        if not local.exists():  # a file, or a named pipe / process substitution
            raise FileNotFoundError(f"{what} file not found: {path}")
        return read_local(local)
    import datasets  # heavy; a hub id: the real code path, needs the network or a warm HF cache

    try:
        rows = list(datasets.load_dataset(path, subset, split=split))
    except Exception as e:  # noqa: BLE001 — datasets raises many types; one line for the user
        raise DataError(f"cannot load {what} dataset {path!r} (subset {subset}, split {split}): "
                        f"{describe(e)}") from None
    if not rows:
        raise DataError(f"{what} dataset {path!r} (subset {subset}, split {split}): no rows")
    return [Row(f"row {i}", row) for i, row in enumerate(rows, 1)]


# ---------------------------------------------------------------- SFT rows


def check_sft_row(row: Any, spec: DataSpec) -> None:
    """Raise a DataError naming the field, what it should hold and what it holds."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, found {found(row)}")
    if spec.format == "prompt_completion":
        for name in (spec.prompt_field, spec.completion_field):
            value = field_value(row, name)
            if value is MISSING:
                raise DataError(f"missing field {name!r} (the row has {', '.join(map(repr, row)) or 'no fields'})")
            if not isinstance(value, str):
                raise DataError(f"field {name!r}: expected a string, found {found(value)}")
        completion = field_value(row, spec.completion_field)
        if not completion.strip():
            raise DataError(f"field {spec.completion_field!r}: expected a non-empty completion, found {completion!r}")
        return
    messages = row.get(spec.messages_field)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"field {spec.messages_field!r}: expected a non-empty list of messages, found "
                        f"{found(messages) if spec.messages_field in row else 'no such field'}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"field {spec.messages_field!r}[{i}]: expected {{role: str, content: str}}, "
                            f"found {found(m)}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"field {spec.messages_field!r}: expected a non-empty assistant message, found none")
