"""What ``bench/soak.py`` measured, as figures, verdicts and one table.

How it works: :func:`analyse` takes the raw results of a run (samples, traffic
snapshots, reload and swap events, descriptors at rest) and computes, for the
supervisor and each worker, the start / end / max RSS and descriptors and the
least-squares slope of both after the warm-up (the first cycle: the allocator's
arenas, the pools and the caches fill there), and then the verdicts:

* **no failures**: every traffic kind counted zero failures (closes that the
  protocol announces, such as a WebSocket close frame, are counted apart), every
  client process reported its final counts, no client thread hung;
* **traffic**: every kind had successes;
* **reloads**: every SIGHUP ended in ``reload complete``;
* **swaps**: after every swap each worker served the new certificate;
* **processes**: the supervisor and the same workers ran from start to end;
* **error log**: no ERROR line;
* **RSS flat**: each process's slope is below 1 % of its mean RSS per 10 minutes
  (:data:`RSS_LIMIT_PER_10_MIN`), or the rise it fits over the time after the
  warm-up (slope x minutes) is within :data:`RSS_NOISE_KIB`;
* **fds flat**: at rest after the run (clients gone, pools idle) each process
  holds at most :data:`FD_SLACK` descriptors other than pipes more than at rest
  before it (after one request of every kind): a leak of one descriptor per
  thousand connections shows. Pipes are judged apart: a worker keeps emptied
  splice pipes for its next L4 session (net/l4.py, up to 256 pairs), so at rest
  it may hold 4 more per passthrough session that was ever open at once
  (``pipe_allowance``: soak.py says how many the soak can have open at once).
  The slope of the descriptors under load is reported, not judged (it follows
  the connections in flight at each sample).

Why these RSS limits: 1 % per 10 minutes of a 45-60 MiB worker is 45-60 KiB a
minute, 65-85 MiB a day: a process leaking that fast doubles within a day, which
an operator sees, so anything faster fails. Slower trends cannot be told from
the allocator's noise in half an hour here (single-kind runs of 2-6 minutes
gave slopes of 15-75 KiB/min for workers that stayed within 0.5 MiB). The floor
exists because RSS also moves in steps of up to ~2 MiB (glibc arenas, the first
4 MiB upload, a burst of connections): in a 3-minute run (2 minutes after the
warm-up) the floor makes the effective limit 512 KiB/min, so the quick run
catches only fast growth; over 30 minutes it is ~35 KiB/min, below the 1 %
limit, which is then what judges.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

RSS_LIMIT_PER_10_MIN = 0.01  # of the process's mean RSS after the warm-up
RSS_NOISE_KIB = 1024  # a fitted rise after the warm-up below this is never a verdict failure
FD_SLACK = 2  # per process, descriptors other than pipes, at rest after vs at rest before
TRAFFIC_VERDICTS = ("no failures", "traffic", "reloads", "swaps", "processes", "error log")


def log_problems(text: str) -> dict[str, Any]:
    """Counts of WARNING / ERROR lines and tracebacks in the node's error log, first lines."""
    levels: Counter[str] = Counter()
    first: list[str] = []
    for line in text.splitlines():
        level = line.split(" ", 2)[1] if line.count(" ") >= 2 else ""
        if level in ("WARNING", "ERROR", "CRITICAL"):
            levels[level] += 1
            if len(first) < 30:
                first.append(line[:300])
    return {
        "warning": levels["WARNING"],
        "error": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": text.count("Traceback (most recent call last)"),
        "first": first,
    }


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than 3 points or no spread in x."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _roles(raw: dict[str, Any]) -> dict[str, str]:
    """pid -> role: supervisor, worker 1.., and any process that appeared later."""
    roles = {str(raw["supervisor"]): "supervisor"}
    for i, pid in enumerate(raw["first_workers"], 1):
        roles[str(pid)] = f"worker {i}"
    for s in raw["samples"]:
        for pid in s["procs"]:
            roles.setdefault(pid, f"new process {pid}")
    return roles


def process_figures(raw: dict[str, Any], warmup_s: float) -> list[dict[str, Any]]:
    out = []
    for pid, role in _roles(raw).items():
        series = [(s["t"], s["procs"][pid]) for s in raw["samples"] if pid in s["procs"]]
        if not series:
            continue
        rss = [p["rss"] / 1024 for _, p in series]
        fds = [p["fds"] for _, p in series]
        after = [(t / 60, p) for t, p in series if t >= warmup_s]
        rss_after = [p["rss"] / 1024 for _, p in after]
        mean_rss = sum(rss_after) / len(rss_after) if rss_after else rss[-1]
        rss_slope = slope([(m, p["rss"] / 1024) for m, p in after])
        fd_slope = slope([(m, float(p["fds"])) for m, p in after])
        limit = mean_rss * RSS_LIMIT_PER_10_MIN / 10
        window = (after[-1][0] - after[0][0]) if after else 0.0  # minutes
        rise = rss_slope * window if rss_slope is not None else 0.0
        at_rest = {"before": raw["rest_before"].get(pid), "after": raw["rest_after"].get(pid)}
        rss_ok = rss_slope is not None and (rss_slope <= limit or rise <= RSS_NOISE_KIB)
        fd_ok = _fds_flat(at_rest["before"], at_rest["after"], raw["pipe_allowance"])
        out.append(
            {
                "pid": int(pid),
                "role": role,
                "samples": len(series),
                "samples_after_warmup": len(after),
                "rss_kib": {"start": rss[0], "end": rss[-1], "max": max(rss), "mean": mean_rss},
                "rss_slope_kib_per_min": rss_slope,
                "rss_limit_kib_per_min": limit,
                "rss_rise_after_warmup_kib": rise,
                "fds": {"start": fds[0], "end": fds[-1], "max": max(fds)},
                "fd_slope_per_min": fd_slope,
                "fds_at_rest": at_rest,
                "rss_flat": rss_ok,
                "fds_flat": fd_ok,
            }
        )
    return out


def _fds_flat(
    before: dict[str, int] | None, after: dict[str, int] | None, pipe_allowance: int
) -> bool:
    if before is None or after is None:
        return False
    others_ok = after["fds"] - after["pipes"] <= before["fds"] - before["pipes"] + FD_SLACK
    return others_ok and after["pipes"] <= before["pipes"] + pipe_allowance


def _since_reload(events: list[dict[str, Any]], when: float) -> float | None:
    before = [e["wall"] for e in events if e["wall"] <= when]
    return round(when - max(before), 2) if before else None


def traffic_figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, snap in raw["traffic"].items():
        events = [
            {
                "t": round(wall - raw["wall_start"], 2),
                "what": what,
                "reason": reason,
                "since_reload_s": _since_reload(raw["events"], wall),
            }
            for wall, what, reason in snap.get("events", [])
        ]
        out[kind] = {
            "ok": snap["ok"],
            "failed": sum(snap["failed"].values()),
            "failed_reasons": snap["failed"],
            "on_purpose": sum(snap["on_purpose"].values()),
            "on_purpose_reasons": snap["on_purpose"],
            "extra": snap["extra"],
            "distinct_certificates": {k: len(v) for k, v in snap.get("fingerprints", {}).items()},
            "final": bool(snap.get("final")),
            "threads_stuck": snap.get("threads_stuck", 0),
            "events": events,
        }
    return out


def analyse(raw: dict[str, Any], cycle: float, judge: str) -> dict[str, Any]:
    """Figures and verdicts; ``judge == "traffic"`` leaves RSS/fd out of ``passed``."""
    traffic = traffic_figures(raw)
    procs = process_figures(raw, warmup_s=cycle)
    reloads = raw["events"]
    swaps = raw["swaps"]
    failed = sum(t["failed"] for t in traffic.values())
    stuck = sum(t["threads_stuck"] for t in traffic.values())
    unreported = raw["kinds_unreported"]
    counts = [len(s["procs"]) for s in raw["samples"]]
    same_workers = raw["first_workers"] == raw["last_workers"] and raw["alive_at_end"]
    log = raw["error_log"]
    verdicts = {
        "no failures": (
            failed == 0 and not unreported and stuck == 0,
            f"{failed} failed"
            + (f", no final count from {unreported}" if unreported else "")
            + (f", {stuck} client threads hung" if stuck else ""),
        ),
        "traffic": (
            bool(traffic) and all(t["ok"] > 0 for t in traffic.values()),
            ", ".join(f"{k} {t['ok']}" for k, t in traffic.items() if t["ok"] == 0) or "every kind",
        ),
        "reloads": (
            bool(reloads) and all(e["completed"] for e in reloads),
            f"{sum(e['completed'] for e in reloads)} of {len(reloads)} completed",
        ),
        "swaps": (
            bool(swaps) and all(s["verified"] for s in swaps),
            f"{sum(bool(s['verified']) for s in swaps)} of {len(swaps)} verified on every worker",
        ),
        "processes": (
            same_workers and bool(counts) and min(counts) == max(counts) == 3,
            f"{min(counts, default=0)}-{max(counts, default=0)} processes, workers "
            + ("unchanged" if same_workers else f"{raw['first_workers']} -> {raw['last_workers']}"),
        ),
        "error log": (
            log["error"] == 0 and log["tracebacks"] == 0,
            f"{log['error']} ERROR, {log['tracebacks']} tracebacks, {log['warning']} WARNING",
        ),
        "RSS flat": (
            bool(procs) and all(p["rss_flat"] for p in procs),
            f"slope < 1 % of RSS per 10 min, or fitted rise < {RSS_NOISE_KIB // 1024} MiB "
            "after the warm-up",
        ),
        "fds flat": (
            bool(procs) and all(p["fds_flat"] for p in procs),
            f"at rest after <= before + {FD_SLACK} (pipes: + {raw['pipe_allowance']}, the "
            "L4 pipe cache)",
        ),
    }
    judged = [k for k in verdicts if judge == "all" or k in TRAFFIC_VERDICTS]
    return {
        "traffic": traffic,
        "processes": procs,
        "reloads": reloads,
        "swaps": swaps,
        "verdicts": {
            k: {"pass": ok, "detail": detail, "judged": k in judged}
            for k, (ok, detail) in verdicts.items()
        },
        "passed": all(verdicts[k][0] for k in judged),
    }


# --------------------------------------------------------------------------- the table


def _n(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _rest(r: dict[str, int] | None) -> str:
    return "-" if r is None else f"{r['fds']} ({r['pipes']}p)"


def _extra(kind: str, t: dict[str, Any]) -> str:
    e = t["extra"]
    if kind == "handshake":
        return (
            f"full {e.get('full', 0):,}, resumed {e.get('resumed', 0):,} of "
            f"{e.get('resume_tried', 0):,} tried; certificates seen per name: "
            + ", ".join(f"{k} {v}" for k, v in sorted(t["distinct_certificates"].items()))
        )
    if kind == "upload":
        return f"{e.get('bytes', 0) / 2**20:,.0f} MiB checked"
    if kind in ("websocket", "passthrough-long"):
        return f"{e.get('connections', 0)} connections opened"
    if kind == "passthrough":
        return ", ".join(f"{k} {v:,}" for k, v in sorted(e.items()))
    return ""


def text(result: dict[str, Any], meta: dict[str, Any]) -> str:
    plan = meta["plan"]
    lines = [
        f"tlsgate soak: {plan['seconds'] / 60:g} min, cycle {plan['cycle']:g} s, 2 workers, "
        f"load x{plan['load']:g}, seed {meta['seed']}; {meta['versions']['tlsgate']}, "
        f"Python {meta['versions']['Python']}; {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{'traffic':<17} {'ok':>9} {'failed':>7} {'on purpose':>11}  notes",
    ]
    for kind, t in result["traffic"].items():
        lines.append(
            f"{kind:<17} {t['ok']:>9,} {t['failed']:>7,} {t['on_purpose']:>11,}  {_extra(kind, t)}"
        )
        for reason, n in sorted(t["failed_reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"{'':<17} {'':>9} {n:>7,}  failed: {reason}")
        for reason, n in sorted(t["on_purpose_reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"{'':<17} {'':>9} {'':>7} {n:>11,}  {reason}")
    reloads, swaps = result["reloads"], result["swaps"]
    config = [e for e in reloads if e["what"] == "config"]
    longest = max((e["seconds"] for e in reloads), default=0.0)
    lines += [
        "",
        f"reloads: {len(reloads)} ({len(config)} config changes, {len(swaps)} certificate "
        f"swaps), {sum(not e['completed'] for e in reloads)} failed, longest {longest:.2f} s",
    ]
    for s in swaps:
        workers = ", ".join(f"{pid} {v}" for pid, v in s.get("workers", {}).items())
        lines.append(
            f"  t={s['t']:>7.1f} s  {s['certificate']:<10} {s['old'][:12]} -> {s['new'][:12]}  "
            f"{'verified' if s['verified'] else 'NOT VERIFIED'} ({workers}; "
            f"{s.get('probes', 0)} probes)"
        )
    lines += [
        "",
        f"{'process':<11} {'RSS MiB start':>13} {'end':>5} {'max':>5} {'slope KiB/min':>13} "
        f"{'limit':>5} {'rise MiB':>8}    {'fds start':>9} {'end':>3} {'max':>3} {'/min':>5}  "
        "at rest before / after",
    ]
    for p in result["processes"]:
        r = p["rss_kib"]
        rest = p["fds_at_rest"]
        lines.append(
            f"{p['role']:<11} {r['start'] / 1024:>13.1f} {r['end'] / 1024:>5.1f} "
            f"{r['max'] / 1024:>5.1f} {_n(p['rss_slope_kib_per_min'], 1):>13} "
            f"{p['rss_limit_kib_per_min']:>5.0f} {p['rss_rise_after_warmup_kib'] / 1024:>8.2f} "
            f"{'ok' if p['rss_flat'] else '!!':>2} {p['fds']['start']:>9} {p['fds']['end']:>3} "
            f"{p['fds']['max']:>3} {_n(p['fd_slope_per_min'], 2):>5}  "
            f"{_rest(rest['before'])} / {_rest(rest['after'])} {'ok' if p['fds_flat'] else '!!'}"
        )
    lines.append(
        "  (slope and rise: least squares after the warm-up, the first cycle; "
        "'Np': N of the descriptors are pipes)"
    )
    lines += ["", "verdicts:"]
    for name, v in result["verdicts"].items():
        mark = (
            ("PASS" if v["pass"] else "FAIL") if v["judged"] else ("pass" if v["pass"] else "fail")
        )
        judged = "" if v["judged"] else "  (reported, not judged: --judge traffic)"
        lines.append(f"  {mark}  {name:<12} {v['detail']}{judged}")
    lines.append("")
    lines.append("PASSED" if result["passed"] else "FAILED")
    return "\n".join(lines)
