"""Turning row results into the terminal table, Markdown, JSON, and docs/benchmarks.md.

How it works: every :class:`rows.RowResult` carries its table lines already
(medians, ratios, targets, verdicts as text); this module only lays them out.
:func:`text_table` pads columns for a terminal, :func:`markdown` writes the
same table with the machine, versions, method and notes around it, and
:func:`update_docs` replaces what is between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` in docs/benchmarks.md with that Markdown. :func:`to_json`
keeps everything, raw samples included, for bench/results/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rows import COLUMNS, RowResult

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
HEADERS = ("row", "measurement", *COLUMNS, "ratio", "target", "met")

METHOD = """\
One proxy at a time on core 0 (`taskset -c 0`; tlsgate `[node] workers = 1`, HAProxy
`nbthread 1`, nginx `worker_processes 1`); the backend (nginx, 100-byte body, keep-alive,
no access log), the load generator and the benchmark itself on core 1. Same certificate
(ECDSA P-256 unless a row says RSA), same backend, same client, same run; the targets of
a row are interleaved (A B C A B C ...) over the rounds, each started fresh for each
measurement. Figures are medians over rounds; ratios are medians of the per-round
ratios. CPU is the proxy's whole process tree (utime+stime from /proc/PID/stat) over
the measured interval, divided by the work done. Clients: wrk (rows 1-3, 6, 9),
`openssl s_time` processes side by side (rows 4-5; wrk resumes sessions, so it cannot
measure full handshakes), a raw-socket download (row 7), a Python client holding idle
TLS connections (row 8)."""


def _cells(line_cells: dict[str, str]) -> list[str]:
    return [line_cells.get(c, "") for c in COLUMNS]


def table_rows(results: Sequence[RowResult]) -> list[tuple[str, list[str]]]:
    """(kind, cells) per output line: kind "title" spans the table, "line" is a figure."""
    out: list[tuple[str, list[str]]] = []
    for r in results:
        out.append(("title", [r.key, r.title]))
        if r.error is not None:
            out.append(("title", ["", f"not run: {r.error}"]))
            continue
        for ln in r.lines:
            out.append(("line", ["", ln.measure, *_cells(ln.cells), ln.ratio, ln.target, ln.met]))
    return out


def text_table(results: Sequence[RowResult]) -> str:
    body = table_rows(results)
    widths = [len(h) for h in HEADERS]
    for kind, cells in body:
        if kind == "line":
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(HEADERS), "  ".join("-" * w for w in widths)]
    for kind, cells in body:
        lines.append(f"{cells[0]:<{widths[0]}}  {cells[1]}" if kind == "title" else fmt(cells))
    return "\n".join(lines)


def notes_text(results: Sequence[RowResult]) -> list[str]:
    return [f"row {r.key}: {n}" for r in results for n in r.notes]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: Sequence[RowResult], meta: dict[str, Any]) -> str:
    """The report as Markdown: machine, versions, method, the table, notes, knobs."""
    machine = meta["machine"]
    versions = meta["versions"]
    settings = meta["settings"]
    out = [
        f"Run of {machine['date']} on `{machine['host']}`: {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['load_average'])}; "
        f"{machine['platform']}, Python {machine['python']}.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in versions.items()) + ".",
        "",
        f"Settings: `{meta['command']}` -- {settings['rounds']} round(s), "
        f"{settings['duration_s']:g} s per measurement after {settings['warmup_s']:g} s of "
        f"warm-up, wrk -c{settings['wrk_connections']}, "
        f"{settings['handshake_clients']} s_time clients, "
        f"{settings['idle_connections']:,} idle connections x {settings['bursts']} burst(s), "
        f"{settings['bulk_size'] / (1 << 30):g} GiB bulk download. CPU split: "
        f"{meta['cpu_split']}.",
        "",
        METHOD,
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---" for _ in HEADERS) + "|",
    ]
    for kind, cells in table_rows(results):
        if kind == "title":
            row = [f"**{cells[0]}**", f"**{_md_escape(cells[1])}**"] + [""] * (len(HEADERS) - 2)
        else:
            row = [_md_escape(c) for c in cells]
        out.append("| " + " | ".join(row) + " |")
    notes = notes_text(results)
    if notes:
        out += ["", "Notes:", ""] + [f"- {_md_escape(n)}" for n in notes]
    out += ["", "Peer configuration (what each server is told to do):", ""]
    for server, knobs in meta["knobs"].items():
        for what, text in knobs.items():
            out.append(f"- **{server}** ({what}): {text}")
    return "\n".join(out) + "\n"


def update_docs(path: Path, md: str) -> None:
    """Replace the text between the bench markers in ``path`` (append them if missing)."""
    text = path.read_text()
    block = f"{BEGIN}\n{md}{END}"
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Latest `make bench` run\n\n" + block + "\n"
    path.write_text(text)


def to_json(results: Sequence[RowResult], meta: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for r in results:
        d = dataclasses.asdict(r)
        for key, samples in r.samples.items():
            for i, s in enumerate(samples):
                d["samples"][key][i].update(
                    cpu_per_unit=s.cpu_per_unit, proxy_busy=s.proxy_busy, load_busy=s.load_busy
                )
        rows.append(d)
    return {**meta, "rows": rows}
