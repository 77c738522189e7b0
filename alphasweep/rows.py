"""Rows of a dataset, for SFT data and benchmarks alike: a local file or a hub dataset, read with `datasets`.

A path is local (`looks_local`) when it starts with `/`, `.` or `~`, ends in a data-file suffix, or has
more than one `/` (a hub id is `name` or `org/name`); anything else is a hub id. Local paths are a
.jsonl/.json/.parquet file, or a folder holding `<split>.jsonl|json|parquet`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # suffix -> `datasets` builder


class DataError(ValueError):
    """Data the user must fix (an unreadable file, a bad row, an unknown hub dataset): one line, exit code 2."""


def looks_local(path: str) -> bool:
    """Whether `path` names a local file or folder rather than a hub id (whether or not it exists)."""
    return path.startswith(("/", ".", "~")) or Path(path).suffix in LOCAL_FORMATS or path.count("/") > 1


def _local_file(path: str, split: str, what: str) -> Path:
    """The file a local path names (a folder names its `<split>` file); FileNotFoundError when there is none."""
    local = Path(path).expanduser()
    if local.is_dir():
        for suffix in LOCAL_FORMATS:
            if (local / f"{split}{suffix}").is_file():
                return local / f"{split}{suffix}"
        raise FileNotFoundError(f"{what} folder {path} holds no {split}.jsonl, {split}.json or {split}.parquet")
    if not local.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if local.suffix not in LOCAL_FORMATS:
        raise DataError(f"{what} file {path}: expected a .jsonl, .json or .parquet file")
    return local


def _unwrap(rows: list[dict]) -> list[dict]:
    """A .json file holding an object with one list of rows (`{"data": [...]}`) loads as one row: its rows."""
    if len(rows) == 1:
        lists = [v for v in rows[0].values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
            return lists[0]
    return rows


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), "")


def load_rows(path: str, *, split: str = "train", subset: str | None = None, what: str = "data") -> list[dict]:
    """Every row as a dict. `what` ("data", "benchmark") names the source in errors: FileNotFoundError for a
    missing local file, `DataError` for one `datasets` cannot read or a hub dataset it cannot load."""
    import datasets  # ~0.5 s and pyarrow: only paths that read rows pay for it (config validation does not)

    def read(file: Path) -> list[dict]:
        rows = list(datasets.load_dataset(LOCAL_FORMATS[file.suffix], data_files=str(file), split="train"))
        return _unwrap(rows) if file.suffix == ".json" else rows

    local = _local_file(path, split, what) if looks_local(path) else None
    try:
        if local is None:  # a hub id: the real code path, needs the network or a warm HF cache
            return list(datasets.load_dataset(path, subset, split=split))
        if local.is_file():
            return read(local)
        with tempfile.TemporaryDirectory() as tmp:  # a named pipe: `datasets` reads regular files only
            copy = Path(tmp) / local.name
            with local.open("rb") as pipe, copy.open("wb") as f:
                shutil.copyfileobj(pipe, f)
            return read(copy)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs the cause in one line
        cause = e.__cause__ or e  # `DatasetGenerationError` wraps the parser's message
        where = path if local else f"{path} (subset {subset}, split {split})"
        raise DataError(f"cannot load {what} {where}: {type(cause).__name__}: {_first_line(cause)}") from None
