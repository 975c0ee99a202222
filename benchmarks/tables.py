"""The benchmarks' Markdown tables: one row per dict, the columns that some row has."""

from __future__ import annotations


def print_table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    """Print rows as a right-aligned Markdown table; `cols` = [(key, format)], a missing or
    None value shows as "-"."""
    cols = [(c, f) for c, f in cols if any(c in r for r in rows)]
    cells = [[c for c, _ in cols]] + [[f.format(r[c]) if r.get(c) is not None else "-" for c, f in cols]
                                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for k, row in enumerate(cells):
        print("| " + " | ".join(v.rjust(wd) for v, wd in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
