"""Plain-text tables for the console (`alphasweep report`, `alphasweep eval`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = (),
               footer: Sequence[str] | None = None) -> str:
    """Columns padded to their widest cell (those in `right` right-aligned), a rule under the header, and
    a rule above the `footer` row when there is one."""
    body = [*rows, *([footer] if footer else [])]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *map(line, rows), *([rule, line(footer)] if footer else [])])
