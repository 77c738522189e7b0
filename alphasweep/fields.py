"""Reading one field of a data row, by name or by a dotted path into nested columns.

Hub datasets often keep the text inside a struct column (the paper's data: `extra_info.question`,
`extra_info.answer`), so data and benchmark specs name fields as dotted paths. A key that itself contains
dots (a flattened column) is looked up first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING", "field_value"]

MISSING = object()  # what `field_value` returns for a field the row does not have


def field_value(row: Any, path: str) -> Any:
    """`row[path]` if present, else `row[a][b]...` for `path = "a.b..."`; `MISSING` when absent."""
    if not isinstance(row, dict):
        return MISSING
    if path in row:
        return row[path]
    node: Any = row
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node
