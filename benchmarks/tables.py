"""The tables of measured numbers in README and docs, generated from ``benchmarks/results/*.csv``.

A table in Markdown is a marker, then the table this module renders, then an end marker::

    <!-- table: peers.csv columns=model,form,batch_size,median_ms where=batch_size:1 -->
    | model | form | ... |
    <!-- end table -->

Options (all optional; quote a value with spaces): ``columns=a,b`` (these columns, in this order),
``where=col:value;col:value`` (rows whose cell equals the value, as written in the CSV),
``match="col:regex"`` (rows whose cell the regular expression finds), ``median_by=a,b`` (one row per group:
the median of every numeric column over it, e.g. over seeds; the group's row count is column
``n``). Cells are the CSV's text as written; medians are printed with 4 significant digits.

``python -m benchmarks.tables`` rewrites every table in place after a benchmark wrote new results;
``--check`` exits 1 naming each table that differs from its CSV (``tests/test_docs.py`` runs it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- table: (?P<spec>[^>]*?) -->\n.*?^[ \t]*<!-- end table -->$", re.M | re.S)

__all__ = ["RESULTS", "documents", "render", "rendered", "stale_tables"]


def documents() -> list[Path]:
    """The Markdown files that may hold tables: the README and the documentation site."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def _options(spec: str) -> tuple[str, dict[str, str]]:
    name, *parts = shlex.split(spec)
    options = dict(part.split("=", 1) for part in parts)
    unknown = set(options) - {"columns", "where", "match", "median_by"}
    if unknown:
        raise ValueError(f"table {name}: unknown option(s) {', '.join(sorted(unknown))}")
    return name, options


def table_frame(spec: str) -> pd.DataFrame:
    """The rows and columns ``spec`` selects from its CSV, as text."""
    name, options = _options(spec)
    frame = pd.read_csv(RESULTS / name, dtype=str, keep_default_na=False)
    for condition in filter(None, options.get("where", "").split(";")):
        column, value = condition.split(":", 1)
        frame = frame[frame[column] == value]
    for condition in filter(None, options.get("match", "").split(";")):
        column, pattern = condition.split(":", 1)
        frame = frame[[re.search(pattern, cell) is not None for cell in frame[column]]]
    if "median_by" in options:
        frame = _medians(frame, options["median_by"].split(","))
    if "columns" in options:
        frame = frame[options["columns"].split(",")]
    return frame.reset_index(drop=True)


def _medians(frame: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    numeric = [c for c in frame.columns if c not in group and pd.to_numeric(frame[c], errors="coerce").notna().all()]
    values = frame[group].join(frame[numeric].apply(pd.to_numeric))
    grouped = values.groupby(group, sort=False)
    medians = grouped[numeric].median().map(lambda v: f"{v:.4g}")
    medians["n"] = grouped.size().astype(str)
    return medians.reset_index()


def render(spec: str) -> str:
    """The Markdown table of ``spec`` (a marker's text after ``table:``)."""
    frame = table_frame(spec)

    def row(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([row(frame.columns), row(["---"] * len(frame.columns)), *map(row, frame.itertuples(index=False))])


def rendered(text: str) -> str:
    """``text`` with every table between markers rendered afresh."""

    def replace(match: re.Match) -> str:
        indent, spec = match["indent"], match["spec"]
        table = "\n".join(indent + line for line in render(spec).splitlines())
        return f"{indent}<!-- table: {spec} -->\n\n{table}\n\n{indent}<!-- end table -->"

    return MARKER.sub(replace, text)


def stale_tables() -> list[str]:
    """``file: spec`` of every table whose text differs from what its CSV renders."""
    stale = []
    for path in documents():
        text = path.read_text()
        for match, fresh in zip(MARKER.finditer(text), MARKER.finditer(rendered(text)), strict=True):
            if match.group(0) != fresh.group(0):
                stale.append(f"{path.relative_to(REPO_ROOT)}: {match['spec']}")
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from its CSV; change nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_tables()
        for line in stale:
            print(f"stale table: {line} (run python -m benchmarks.tables)", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path in documents():
        text = path.read_text()
        if (fresh := rendered(text)) != text:
            path.write_text(fresh)
            print(f"updated {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
