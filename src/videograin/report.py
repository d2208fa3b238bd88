"""One results table for many edits: results.csv, results.md and report.html of a folder of output folders.

Rows come from every ``<folder>/<name>/run.json`` (a batch's jobs or single edits alike) and from the
failed and skipped jobs a batch recorded in ``<folder>/batch.json``. report.html is a static page: per
edit its comparison GIF, prompts and metrics, in a table sortable by any column (a few lines of script).
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from . import io

FIXED = ("name", "status", "seconds", "peak_memory_mb", "prompt", "error")


def _edit_row(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        config = record["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    row = {"name": folder.name, "status": "done", "seconds": record.get("timings", {}).get("total"),
           "peak_memory_mb": record.get("peak_memory_mb"), "prompt": config.get("prompt"),
           "regions": "; ".join(f"{r.get('name')}: {r.get('prompt') or '(kept)'}" for r in config.get("regions", []))}
    metrics = (record.get("eval") or {}).get("metrics", {})
    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return row


def collect(folder: str | Path) -> list[dict[str, Any]]:
    """Rows of the edits under ``folder`` (sorted by name), with the batch's failed jobs and the status it
    gave each job (a skipped job's row keeps the metrics of its earlier run)."""
    folder = Path(folder)
    rows = {p.name: row for p in folder.iterdir() if p.is_dir() and (row := _edit_row(p)) is not None}
    batch = folder / "batch.json"
    if batch.is_file():
        for job in json.loads(batch.read_text(encoding="utf-8")).get("jobs", []):
            if job["status"] == "failed" or job["name"] not in rows:
                rows[job["name"]] = {"name": job["name"], "status": job["status"], "error": job.get("error")}
            else:
                rows[job["name"]]["status"] = job["status"]
    return sorted(rows.values(), key=lambda row: io.natural_key(row["name"]))


def _columns(rows: list[dict]) -> list[str]:
    extra = sorted({k for row in rows for k in row} - set(FIXED) - {"regions"})
    return [*FIXED, "regions", *extra]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(folder: str | Path) -> list[dict[str, Any]]:
    """Write results.csv, results.md and report.html into ``folder`` from its output folders."""
    folder = Path(folder)
    rows = collect(folder)
    columns = _columns(rows)
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: _cell(row.get(k)) for k in columns} for row in rows])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(k)).replace("|", "/") for k in columns) + " |" for row in rows]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(_html(folder, rows, columns), encoding="utf-8")
    return rows


_SORT = """<script>
document.querySelectorAll('th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = [...body.rows], up = th.dataset.up !== '1';
  const key = r => { const t = r.cells[i].dataset.v ?? r.cells[i].innerText; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  th.dataset.up = up ? '1' : '0'; rows.forEach(r => body.appendChild(r));
}));
</script>"""


def _html(folder: Path, rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["comparison", *columns])
    body = []
    for row in rows:
        gif = folder / row["name"] / "comparison.gif"
        picture = f'<img src="{html.escape(row["name"])}/comparison.gif" height="96">' if gif.is_file() else ""
        cells = "".join(f'<td data-v="{html.escape(_cell(row.get(c)))}">{html.escape(_cell(row.get(c)))}</td>'
                        for c in columns)
        body.append(f'<tr class="{html.escape(str(row["status"]))}"><td>{picture}</td>{cells}</tr>')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>videograin results</title><style>"
            "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;font-size:13px;vertical-align:middle}th{cursor:pointer;background:#f3f3f3}"
            "tr.failed{background:#fde8e8}tr.skipped{color:#666}</style></head><body>"
            f"<h1>videograin results</h1><p>{len(rows)} edits in {html.escape(str(folder))}; click a column to sort.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{_SORT}</body></html>\n")
