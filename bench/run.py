"""Run every benchmark and write the report: docs/benchmarks.md, or bench/out/ when smoke."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import floor, load, memory, pages, peers, query, recording, repair, submission, window
from bench.harness import ROOT, Section, keep_logs, machine, table

SECTIONS: list[tuple[str, Callable[[Path, bool], Section]]] = [
    ("query", query.run),
    ("recording", recording.run),
    ("submission", submission.run),
    ("memory", memory.run),
    ("repair", repair.run),
    ("peers", peers.run),
    ("load", load.run),
    ("window", window.run),
    ("pages", pages.run),
    ("floor", floor.run),
]


def main() -> None:
    """Run the chosen sections and write the report with the machine and the targets."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds each")
    parser.add_argument("--only", nargs="*", choices=[name for name, _ in SECTIONS])
    args = parser.parse_args()
    chosen = [(n, fn) for n, fn in SECTIONS if not args.only or n in args.only]

    results: dict[str, Section] = {}
    timings: dict[str, float] = {}
    keep_logs()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name, fn in chosen:
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            results[name] = fn(Path(tmp), args.smoke)
            timings[name] = time.perf_counter() - started
            if args.smoke:
                for figure in results[name].figures:
                    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
                    shutil.copy(figure, ROOT / "bench" / "out" / figure.name)
    report = _report(results, timings, args.smoke)
    target = (
        ROOT / "bench" / "out" / "benchmarks-smoke.md"
        if args.smoke
        else ROOT / "docs" / "benchmarks.md"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report)
    raw = target.with_suffix(".json")
    raw.write_text(json.dumps({n: s.data for n, s in results.items()}, indent=1, default=str))
    print(f"wrote {target.relative_to(ROOT)} and {raw.relative_to(ROOT)}")


def _report(results: dict[str, Section], timings: dict[str, float], smoke: bool) -> str:
    facts = machine()
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmarks" + (" (smoke run: tiny sizes, numbers mean nothing)" if smoke else ""),
        f"Written by `make bench{'-smoke' if smoke else ''}` (`python -m bench.run"
        f"{' --smoke' if smoke else ''}`) on {today}. Every figure stands beside its baseline, "
        "measured in the same run on the same machine. Raw numbers: "
        f"[benchmarks.json](benchmarks.json).",
        table(["machine", ""], [[k, v] for k, v in facts.items()]),
    ]
    targets = [] if smoke else _targets(results)
    if targets:
        parts += ["## Targets", table(["target", "measured", "met"], targets)]
    for name, section in results.items():
        parts += [f"## {section.title}", section.markdown, f"_({timings[name]:.0f} s)_"]
    changes = ROOT / "bench" / "changes.md"
    if changes.exists():
        parts.append(changes.read_text().strip())
    return "\n\n".join(parts) + "\n"


def _targets(results: dict[str, Section]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    if "query" in results:
        data = results["query"].data
        key = "1000000/10000"
        if key in data:
            api, floor, raw = (_median(data[key][k]) for k in ("api", "floor", "raw"))
            rows.append(
                [
                    "status query, 10^4-job window in a 10^6-job index: at most 2x the floor",
                    f"{api * 1e3:.2f} ms vs {floor * 1e3:.2f} ms = {api / floor:.2f}x "
                    f"(against the raw read, {raw * 1e3:.2f} ms: {api / raw:.2f}x)",
                    _yes(api / floor <= 2),
                ]
            )
            small = _median(data["10000/10000"]["api"]) if "10000/10000" in data else None
            if small:
                rows.append(
                    [
                        "... and its cost grows with the window, not the index "
                        "(10^4 window: index 10^4 vs 10^6)",
                        f"{small * 1e3:.2f} ms vs {api * 1e3:.2f} ms",
                        _yes(api / small < 2),
                    ]
                )
    if "floor" in results:
        data = results["floor"].data
        for clients in (8, 64):
            key = f"100-job window/{clients}"
            if key in data:
                rows.append(
                    [
                        f"HTTP floor: a 100-job poll, {clients} connections, at least 0.5x the "
                        "bare endpoint's requests/s",
                        f"{data[key]['ratio']:.2f}x",
                        _yes(data[key]["ratio"] >= 0.5),
                    ]
                )
        key = "10^4-job window, 10^6 index/latency"
        if key in data:
            api, floor, ratio = (
                _median(data[key]["api"]),
                _median(data[key]["floor"]),
                data[key]["ratio"],
            )
            rows.append(
                [
                    "HTTP floor: a 10^4-job window in a 10^6-job index at most 1.25x the Redis "
                    "floor",
                    f"{api * 1e3:.2f} ms vs {floor * 1e3:.2f} ms = {ratio:.2f}x",
                    _yes(ratio <= 1.25),
                ]
            )
    if "recording" in results:
        for kind, sides in results["recording"].data.items():
            ratio = _median(sides["service"]) / _median(sides["plain"])
            rows.append(
                [
                    f"recording overhead ({kind} worker): at least 90% of plain RQ",
                    f"{ratio:.1%}",
                    _yes(ratio >= 0.9),
                ]
            )
    if "submission" in results:
        ratio = results["submission"].data["check_ratio_16"]
        rows.append(
            [
                "atomic 429 check, 16 submitters: at least 0.9x the throughput without a limit",
                f"{ratio:.2f}x",
                _yes(ratio >= 0.9),
            ]
        )
    if "repair" in results:
        data = results["repair"].data
        rows.append(
            [
                f"drift repaired within 60 s at {data['jobs']:,} indexed jobs "
                f"(REPAIR_INTERVAL {data['repair_interval_s']} s + one pass)",
                f"{data['bound_s']:.1f} s",
                _yes(data["bound_met"]),
            ]
        )
    if "memory" in results:
        data = results["memory"].data
        worst = max(data["settled_info"], data["settled_usage"], data["recorded"])
        rows.append(
            [
                "memory: at most 150 B per indexed job",
                f"{data['settled_usage']:.0f} B (MEMORY USAGE), "
                f"{data['settled_info']:.0f} B (INFO used_memory)",
                _yes(worst <= 150),
            ]
        )
    return rows


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


if __name__ == "__main__":
    main()
