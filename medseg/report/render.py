"""Markdown and self-contained HTML evaluation reports."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.utils.files import write_text


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or v != v:  # NaN
        return "–"
    return f"{v:.{digits}f}"


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of the summary table: structure, Dice mean ± std (median), HD95 mean (median)."""
    rows = []
    for name, m in summary.items():
        d, h = m["dice"], m["hd95"]
        rows.append([name, f"{_fmt(d['mean'])} ± {_fmt(d['std'])}", _fmt(d["median"]),
                     f"{_fmt(h['mean'], 2)}", _fmt(h["median"], 2)])
    return rows


SUMMARY_HEADER = ["structure", "Dice mean ± std", "Dice median", "HD95 mean (mm)", "HD95 median (mm)"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_reports(out_dir: Path, title: str, summary: dict[str, Any], case_header: Sequence[str],
                  case_rows: Sequence[Sequence[str]], figures: Sequence[tuple[str, Path]],
                  notes: Sequence[str]) -> tuple[Path, Path]:
    """Write ``report.md`` (figures linked) and ``report.html`` (figures embedded)."""
    rows = summary_rows(summary)
    md = [f"# {title}", "", *[f"- {n}" for n in notes], "", "## Summary", "",
          markdown_table(SUMMARY_HEADER, rows), "", "## Figures", ""]
    for caption, path in figures:
        md += [f"**{caption}**", "", f"![{caption}]({path.relative_to(out_dir).as_posix()})", ""]
    md += ["## Per case", "", markdown_table(case_header, case_rows), ""]
    md_path = write_text(out_dir / "report.md", "\n".join(md))
    figs = "".join(
        f'<figure><img alt="{html.escape(c)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for c, p in figures)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ background: #f0f3f7; }}
figure {{ margin: 1rem 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85rem; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1><ul>{notes_html}</ul>
<h2>Summary</h2>{html_table(SUMMARY_HEADER, rows, "summary")}
<h2>Figures</h2>{figs}
<h2>Per case</h2>{html_table(case_header, case_rows, "cases")}
</body></html>
"""
    html_path = write_text(out_dir / "report.html", page)
    return md_path, html_path
