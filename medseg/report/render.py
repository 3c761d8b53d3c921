"""Self-contained HTML and Markdown reports from one sequence of calls.

A :class:`Page` collects headings, paragraphs, lists, tables, figures and preformatted blocks and
writes them twice: ``<name>.md`` (figures linked as relative PNG files) and ``<name>.html`` (one
file, figures embedded as data URIs, no external resources, so it opens offline and can be mailed).
Tables marked sortable get a few lines of inline JavaScript: click a column heading to sort.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from medseg.utils.files import write_text

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1180px;
       color: #1f2328; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem;
       margin-top: 2rem; } h3 { margin-bottom: 0.3rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { white-space: normal; min-width: 3.5rem; }
table.compact td { white-space: normal; }
.wide { overflow-x: auto; max-width: 100%; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f3f7; position: sticky; top: 0; }
table.sortable th { cursor: pointer; } table.sortable th:hover { background: #dde4ec; }
tr.failed td { background: #fdecea; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0.5rem 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; display: block; }
figcaption { font-size: 0.8rem; color: #57606a; }
.note { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.5rem 0.8rem; border-radius: 4px; }
pre { background: #f6f8fa; padding: 0.6rem; overflow-x: auto; font-size: 0.78rem; }
.scroll { max-height: 32rem; overflow: auto; }
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.title = 'click to sort';
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.order !== 'asc'; th.dataset.order = asc ? 'asc' : 'desc';
      var key = function (r) { var t = r.cells[col].textContent.trim(), v = parseFloat(t);
                               return isNaN(v) ? t : v; };
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return (typeof x === 'number' ? -1 : 1) * (asc ? 1 : -1); }
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a table cell; ``–`` for undefined values."""
    if v is None or v != v:  # None or NaN
        return "–"
    return f"{v:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
               row_classes: Sequence[str] | None = None) -> str:
    """An HTML table."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{row_classes[i] if row_classes else ""}">'
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Page:
    """A report written as Markdown and as self-contained HTML (see the module docstring)."""

    def __init__(self, title: str, out_dir: Path) -> None:
        self.title = title
        self.out_dir = Path(out_dir)
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self._figures: list[tuple[str, Path]] | None = None

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        self._flush_figures()
        self.md += ["#" * level + " " + text, ""]
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        self._flush_figures()
        self.md += [("> " if note else "") + text, ""]
        self.html.append(f'<p class="{"note" if note else ""}">{html.escape(text)}</p>')

    def bullets(self, items: Sequence[str]) -> None:
        self._flush_figures()
        self.md += [f"- {i}" for i in items] + [""]
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], sortable: bool = False,
              cls: str = "", row_classes: Sequence[str] | None = None, scroll: bool = False) -> None:
        self._flush_figures()
        self.md += [markdown_table(header, rows), ""]
        table = html_table(header, rows, f"{cls} {'sortable' if sortable else ''}".strip(), row_classes)
        self.html.append(f'<div class="{"scroll " if scroll else ""}wide">{table}</div>')

    def figure(self, caption: str, path: Path) -> None:
        """A figure; consecutive figures flow side by side in the HTML."""
        if self._figures is None:
            self._figures = []
        self._figures.append((caption, Path(path)))
        self.md += [f"**{caption}**", "", f"![{caption}]({Path(path).relative_to(self.out_dir).as_posix()})", ""]

    def preformatted(self, summary: str, text: str) -> None:
        """A collapsed block of preformatted text (e.g. the resolved config)."""
        self._flush_figures()
        self.md += [f"<details><summary>{summary}</summary>", "", "```", text.rstrip(), "```", "", "</details>", ""]
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre>"
                         "</details>")

    def raw(self, fragment: str, markdown: str, intro: str = "") -> None:
        """An HTML fragment (e.g. the interactive viewer, scripts included) after an ``intro`` paragraph;
        ``markdown`` stands for it in ``<name>.md``."""
        self._flush_figures()
        self.md += [markdown, ""]
        self.html.append((f"<p>{html.escape(intro)}</p>" if intro else "") + fragment)

    def _flush_figures(self) -> None:
        if not self._figures:
            self._figures = None
            return
        figs = "".join(
            f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,'
            f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(c)}</figcaption></figure>'
            for c, p in self._figures)
        self.html.append(f'<div class="figures">{figs}</div>')
        self._figures = None

    def write(self, name: str = "report") -> tuple[Path, Path]:
        """Write ``<name>.md`` and ``<name>.html`` into the output folder (atomically)."""
        self._flush_figures()
        md_path = write_text(self.out_dir / f"{name}.md", "\n".join(self.md).rstrip() + "\n")
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>\n"
                + "\n".join(self.html) + f"\n<script>{SORT_JS}</script>\n</body></html>\n")
        html_path = write_text(self.out_dir / f"{name}.html", page)
        return md_path, html_path
