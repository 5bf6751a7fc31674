"""The one table renderer: rows of dicts shown as aligned text, HTML (Jupyter) and Markdown.

    Table([{"dtype": "fp32", "bytes": 4}, {"dtype": "bf16", "bytes": 2}], title="one number")

Every table the course shows goes through ``Table``: the lessons' result tables, the claims table
(``course_utils.claims``), the profile settings (``course_utils.env``), side-by-side samples and memory
tables. Headers are left-aligned over left-aligned cells. ``cell_style(column, value)`` may return extra
CSS for one HTML cell (the claims table colours its verdicts that way); text and Markdown ignore it.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence

CELL_CSS = "text-align:left;vertical-align:top"


def format_value(v: object) -> str:
    """Numbers for people: 3 significant digits under 1,000, thousands separators above; ints with separators."""
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


class Table:
    """Rows of dicts; ``columns`` defaults to the first row's keys; missing cells are empty."""

    def __init__(self, rows: Sequence[dict], title: str = "", columns: Sequence[str] | None = None,
                 note: str = "", cell_style: Callable[[str, object], str] | None = None,
                 html_columns: Sequence[str] = ()):
        self.rows = [dict(r) for r in rows]
        self.title = title
        self.note = note  # one line under the title: hardware, profile, model actually used
        self.columns = list(columns) if columns is not None else (list(self.rows[0]) if self.rows else [])
        self.cell_style = cell_style
        self.html_columns = set(html_columns)  # columns whose values are already HTML (not escaped)

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; the columns are {self.columns}")
        return [r.get(name) for r in self.rows]

    def _cells(self) -> list[list[str]]:
        return [[format_value(r.get(c, "")) for c in self.columns] for r in self.rows]

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]

        def line(vals):
            return "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()

        head = [self.title] if self.title else []
        head += [self.note] if self.note else []
        return "\n".join(head + [line(self.columns), line(["-" * w for w in widths])] + [line(r) for r in cells])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        e = html.escape

        def td(col: str, value: object) -> str:
            text = str(value) if col in self.html_columns else e(format_value(value))
            extra = self.cell_style(col, value) if self.cell_style else ""
            return f"<td style='{CELL_CSS}{';' + extra if extra else ''}'>{text}</td>"

        head = "".join(f"<th style='{CELL_CSS}'>{e(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(td(c, r.get(c, "")) for c in self.columns) + "</tr>" for r in self.rows)
        title = f"<h4>{e(self.title)}</h4>" if self.title else ""
        note = f"<p>{e(self.note)}</p>" if self.note else ""
        return f"{title}{note}<table><tr>{head}</tr>{body}</table>"

    def to_markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        rows = ["| " + " | ".join(esc(c) for c in self.columns) + " |", "|" + "---|" * len(self.columns)]
        rows += ["| " + " | ".join(esc(v) for v in r) + " |" for r in self._cells()]
        head = (f"### {self.title}\n\n" if self.title else "") + (f"{self.note}\n\n" if self.note else "")
        return head + "\n".join(rows) + "\n"
