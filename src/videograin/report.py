"""One results table for many edits: results.csv, results.md and report.html of a folder of output folders.

Rows come from every ``<folder>/<name>/run.json`` (a batch's jobs or single edits alike; metrics from
its edit --eval or a later ``videograin eval`` of the folder, its metrics.json) and from the failed and
skipped jobs a batch recorded in ``<folder>/batch.json``. Files that are not what they should be
(junk JSON, a FIFO) are left out, never read blocking. report.html is a static page: per
edit its comparison GIF, prompts and metrics, in a table sortable by any column (a few lines of script).
"""

from __future__ import annotations

import csv
import html
import json
import logging
from io import StringIO
from pathlib import Path
from typing import Any

from . import media

logger = logging.getLogger("videograin")

FIXED = ("name", "status", "seconds", "peak_memory_mb", "prompt", "error")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is no regular file (a FIFO would block) or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _numbers(record: Any) -> dict[str, float]:
    """The numeric metrics of an eval record ({"metrics": {...}, ...}); {} for anything else."""
    metrics = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(metrics, dict):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _edit_row(folder: Path) -> dict[str, Any] | None:
    """The row of an output folder: its run.json (None without a readable one), with the metrics of its
    edit --eval, replaced by those of a later `videograin eval` of the folder (its metrics.json)."""
    record = _read_json(folder / "run.json")
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        return None
    timings, regions = record.get("timings"), config.get("regions")
    regions = [r for r in regions if isinstance(r, dict)] if isinstance(regions, list) else []
    row = {"name": folder.name, "status": "done", "seconds": timings.get("total") if isinstance(timings, dict) else None,
           "peak_memory_mb": record.get("peak_memory_mb"), "prompt": config.get("prompt"),
           "regions": "; ".join(f"{r.get('name')}: {r.get('prompt') or '(kept)'}" for r in regions)}
    row.update(_numbers(record.get("eval")))
    row.update(_numbers(_read_json(folder / "metrics.json")))
    return row


def _batch_jobs(folder: Path) -> list[dict[str, Any]]:
    """The jobs a batch recorded in ``folder``'s batch.json (each with a name and a status); [] when there
    is none, and a warning when it is not a batch record."""
    path = folder / "batch.json"
    if not path.exists():
        return []
    record = _read_json(path)
    jobs = record.get("jobs") if isinstance(record, dict) else None
    if not isinstance(jobs, list):
        logger.warning("%s is not a batch record (a mapping with a list of jobs): left out of the report", path)
        return []
    return [job for job in jobs if isinstance(job, dict) and isinstance(job.get("name"), str)
            and job.get("status") in ("done", "skipped", "failed")]


def collect(folder: str | Path) -> list[dict[str, Any]]:
    """Rows of the edits under ``folder`` (sorted by name), with the batch's failed jobs and the status it
    gave each job (a skipped job's row keeps the metrics of its earlier run)."""
    folder = Path(folder)
    rows = {p.name: row for p in folder.iterdir() if p.is_dir() and (row := _edit_row(p)) is not None}
    for job in _batch_jobs(folder):
        if job["status"] == "failed" or job["name"] not in rows:
            rows[job["name"]] = {"name": job["name"], "status": job["status"], "error": job.get("error")}
        else:
            rows[job["name"]]["status"] = job["status"]
    return sorted(rows.values(), key=lambda row: media.natural_key(row["name"]))


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
    table = StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: _cell(row.get(k)) for k in columns} for row in rows])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(k)).replace("|", "/") for k in columns) + " |" for row in rows]
    for name, text in (("results.csv", table.getvalue()), ("results.md", "\n".join(lines) + "\n"),
                       ("report.html", _html(folder, rows, columns))):
        media.write_text(folder / name, text)
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
