"""A results table (CSV) as one self-contained HTML page, for the Snakemake report.

Snakemake's HTML report shows HTML results inline (in an iframe) but offers CSV and Markdown only as
downloads, so each table is also rendered here: a plain ``<table>`` with inline CSS, no scripts and
no external resources (the report must open offline, from one file).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from spo.io import write_text_atomic

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #222; }
h1 { font-size: 1.2rem; }
table.spo-table { border-collapse: collapse; font-size: 0.85rem; }
table.spo-table th, table.spo-table td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; }
table.spo-table th { background: #f0f0f0; text-align: left; }
table.spo-table td { text-align: right; font-variant-numeric: tabular-nums; }
"""


def table_html(frame: pd.DataFrame, title: str, note: str = "") -> str:
    body = frame.to_html(index=False, classes="spo-table", border=0, na_rep="-",
                         float_format=lambda v: f"{v:.4g}")
    note_html = f"<p>{html.escape(note)}</p>\n" if note else ""
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{note_html}{body}\n</body>\n</html>\n")


def csv_to_html(csv: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Render ``csv`` to ``out`` (atomically). The title defaults to the Markdown sibling's heading."""
    csv = Path(csv)
    if title is None:
        md = csv.with_suffix(".md")
        first = md.read_text(encoding="utf-8").splitlines()[:1] if md.is_file() else []
        title = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else csv.stem
    write_text_atomic(out, table_html(pd.read_csv(csv), title, note=f"Data: {csv.name}"))
    return Path(out)
