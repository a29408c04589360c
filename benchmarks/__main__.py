"""``python -m benchmarks [--quick]``: run the comparisons, print the tables, save the JSON."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.config import FULL, QUICK
from benchmarks.report import RESULTS_DIR, check_targets, git_commit, machine_info, save
from benchmarks.tables import render

# Run order: the sections that reuse docflow's echo runs follow the one that makes them.
ORDER = (
    "overhead",
    "completion",
    "scaling",
    "model",
    "serving",
    "sessions",
    "constrained",
    "scaleout",
    "extraction",
)
# --quick leaves out the SmolLM2 sections (serving, sessions, constrained) and the million-document
# scale-out unless asked for.
QUICK_ORDER = tuple(s for s in ORDER if s not in ("serving", "sessions", "constrained", "scaleout"))


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes; finishes in a few minutes"
    )
    parser.add_argument(
        "--sections",
        help=f"comma-separated subset of {','.join(ORDER)} (default: all; --quick: all but serving, sessions, constrained)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile docflow's runs with pyinstrument (text under <results-dir>/profiles/)",
    )
    parser.add_argument("--sizes", help="override the overhead sizes, e.g. 2000 (comma-separated)")
    parser.add_argument(
        "--naive-budget-s",
        type=float,
        help="stop the naive client after this many seconds (its rate is projected; default 300, quick 15)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs of docflow and the hand-written client per size; the median is reported",
    )
    parser.add_argument(
        "--scaleout-sizes",
        help="scale-out corpus sizes, comma-separated (default 100000,1000000)",
    )
    parser.add_argument(
        "--shard-size", type=int, help="scale-out documents per shard (default 50000)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    parser.add_argument(
        "--extraction",
        action="store_true",
        help="only time text extraction per format on generated files (benchmarks/extraction.py)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit 1 when any section failed (the others are still reported)."""
    args = build_parser().parse_args(argv)
    if args.extraction:
        from benchmarks.extraction import main as extraction

        return extraction(["--files", "10" if args.quick else "50"])
    cfg = QUICK if args.quick else FULL
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
        cfg = replace(cfg, overhead_sizes=sizes, scaling_sizes=sizes, name=f"{cfg.name}-custom")
    if args.repeat:
        cfg = replace(cfg, repeat=args.repeat)
    if args.naive_budget_s:
        cfg = replace(cfg, naive_budget_s=args.naive_budget_s)
    if args.scaleout_sizes or args.shard_size:
        scaleout = cfg.scaleout
        if args.scaleout_sizes:
            sizes = tuple(int(x) for x in args.scaleout_sizes.split(","))
            scaleout = replace(scaleout, sizes=sizes)
        if args.shard_size:
            scaleout = replace(scaleout, shard_size=args.shard_size)
        cfg = replace(cfg, scaleout=scaleout, name=f"{cfg.name}-custom")
    default = QUICK_ORDER if args.quick else ORDER
    wanted = [s.strip() for s in (args.sections or ",".join(default)).split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(ORDER))
    if unknown:
        print(f"unknown sections {unknown}; choose from {list(ORDER)}", file=sys.stderr)
        return 2
    if set(wanted) != set(default) and not args.sizes:
        cfg = replace(cfg, name=f"{cfg.name}-partial")  # keep latest-<mode>.json a complete run
    console = Console(stderr=True)
    started = time.monotonic()

    def log(message: str) -> None:
        console.log(f"[{time.monotonic() - started:7.1f} s] {message}")

    from benchmarks.environment import BenchEnvironment
    from benchmarks.sections import SECTIONS, Bench

    results: dict[str, Any] = {
        "meta": {
            "mode": cfg.name,
            "config": asdict(cfg),
            "machine": machine_info(),
            "commit": git_commit(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "errors": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="docflow-bench-") as tmp,
        BenchEnvironment(cfg.cap) as env,
    ):
        profile_dir = args.results_dir / "profiles" if args.profile else None
        bench = Bench(env, cfg, Path(tmp), log, profile_dir)
        for name in (s for s in ORDER if s in wanted):
            log(f"section {name}")
            try:
                results[name] = SECTIONS[name](bench)
            except Exception as exc:  # report the others; say which failed and why
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
                console.print(traceback.format_exc())
    results["meta"]["wall_s"] = time.monotonic() - started
    results["targets"] = check_targets(results)
    path = save(results, args.results_dir)
    render(results, Console(width=max(Console().width, 140)))
    print(f"results: {path}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
