"""Does `edgekit inspect` point at the layers the accuracy search puts back in float, and does its profile agree with
bench's timing of the same file?

    python benchmarks/bench_inspect.py                         # zoo Lite0 (ImageNet weights) on real photo crops
    python benchmarks/bench_inspect.py --run runs/demo/run     # a fine-tuned run (its own calibration and val images)
    python benchmarks/bench_inspect.py --openvino --executorch # also the OpenVINO and ExecuTorch int8 files

1. The accuracy search (`edgekit export --quantize int8`, defaults) records the layers it returned to float, in order.
2. `edgekit inspect` on the file the search starts from (the same export with the search off: the same calibration
   ranges, only the first Conv and the last Gemm in float) gives each layer's own SQNR (its input taken from float)
   and the search's own ranking score, on 32 held-out images and on the 32 calibration images the search ranks on.
3. The overlap between inspect's three worst layers by own error (and by the search's score) and the first three
   layers the search returned to float is the figure; so are the ranks of the search's picks in inspect's orders.
   With --openvino / --executorch, the same for NNCF's accuracy control and the pt2e search (the layers each
   returned to float, ranked by inspect on that format's plain int8 file).
4. The same process runs `edgekit.bench` on each int8 file, then `inspect`'s profile, and reports the profile's
   total (its ops' sum) / bench p50, and the profiled run's time / bench p50.

Results: benchmarks/results/inspect-<model>-<isa>-<date>.json and .md (CPU, ISA class, versions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _search_order(result) -> tuple[list[str], list[str], dict]:
    """(layers the search returned to float, in order; the ones float from the start; the search's summary)."""
    int8 = next(v for v in result.variants if v.variant == "int8").int8
    search = int8.search
    order = [step.action.removeprefix("keep ").removesuffix(" in float") for step in search.steps[1:]]
    summary = {
        "within_budget": search.within_budget,
        "kept_float": len(search.kept_float),
        "steps": len(search.steps),
        "seconds": search.seconds,
    }
    return order, list(search.steps[0].kept_float), summary


def _overlap(run, plain, order: list[str], data: Path) -> dict:
    from edgekit.inspection import inspect
    from edgekit.inspection.ranking import RANKING_IMAGES

    result = inspect(run, plain, data, profile=False, max_images=32)
    layers = [layer for layer in result.numerics.layers if layer.own is not None]
    by_own = [layer.node for layer in sorted(layers, key=lambda layer: layer.own.sqnr_db)]
    by_channel = [layer.node for layer in sorted(layers, key=lambda layer: layer.own.channel_sqnr_db)]
    by_search = [layer.node for layer in sorted(layers, key=lambda layer: layer.search_error if layer.search_error is not None else 1e9)]
    names = {layer.node: layer.layer for layer in result.numerics.layers}
    first = order[:3]
    return {
        "search_first_three": [names.get(n, n) for n in first],
        "inspect_top_three_own": [names.get(n, n) for n in by_own[:3]],
        "inspect_top_three_own_channel": [names.get(n, n) for n in by_channel[:3]],
        "inspect_top_three_search_score": [names.get(n, n) for n in by_search[:3]],
        "overlap_own": len(set(first) & set(by_own[:3])),
        "overlap_own_channel": len(set(first) & set(by_channel[:3])),
        "first_pick_rank_by_own_channel": by_channel.index(order[0]) + 1 if order and order[0] in by_channel else None,
        "first_pick_rank_by_search_score": by_search.index(order[0]) + 1 if order and order[0] in by_search else None,
        "overlap_search_score": len(set(first) & set(by_search[:3])),
        "search_picks_ranks_by_search_score": [by_search.index(n) + 1 if n in by_search else None for n in first],
        "search_picks_ranks_by_own": [by_own.index(n) + 1 if n in by_own else None for n in first],
        "first_pick_rank_by_own": by_own.index(order[0]) + 1 if order and order[0] in by_own else None,
        "first_diverging": result.numerics.first_diverging,
        "worst": result.numerics.worst,
        "inspect_seconds": result.seconds,
        "ranking_images": min(RANKING_IMAGES, result.numerics.images),
    }


ROUNDS = 5  # bench and profile take turns this often per file: a neighbour's load drifts between them
THREADS = 1  # on 2 shared cores, two intra-op threads wait on each other under a neighbour's load; one thread does not


def _profile_vs_bench(run, artifact: Path, runtime: str, data: Path) -> dict:
    """bench, then inspect's profile, on the same file in this process, ROUNDS times in turn; the median ratio."""
    import statistics

    from edgekit import bench
    from edgekit.inspection import inspect

    rounds = []
    for _ in range(ROUNDS):
        row = bench([artifact], runtimes=[runtime], iterations=200, warmup=20, threads=THREADS, save=False).measurements[0]
        profile = inspect(run, artifact, data, numerics=False, runtime=runtime, runs=100, max_images=4, threads=THREADS).profile
        rounds.append({"bench_p50_ms": row.p50_ms, "contended": row.contended, "contention_share": row.contention_share,
                       "profile_total_ms": profile.total_ms, "profiled_run_ms": profile.profiled_run_ms,
                       "profile_unprofiled_p50_ms": profile.unprofiled_p50_ms})  # fmt: skip
    ratios = [r["profile_total_ms"] / r["bench_p50_ms"] for r in rounds]  # the per-op profile's total (its ops' sum)
    return {
        "artifact": artifact.name,
        "runtime": runtime,
        "threads": THREADS,
        "rounds": rounds,
        "bench_p50_ms": statistics.median(r["bench_p50_ms"] for r in rounds),
        "profile_total_ms": statistics.median(r["profile_total_ms"] for r in rounds),
        "profiled_run_ms": statistics.median(r["profiled_run_ms"] for r in rounds),
        "total_over_bench_p50": statistics.median(ratios),
        "profiled_run_over_bench_p50": statistics.median(r["profiled_run_ms"] / r["bench_p50_ms"] for r in rounds),
        # the same file timed as bench times it, alternating run by run with the profiled session inside inspect
        "total_over_unprofiled_p50": statistics.median(r["profile_total_ms"] / r["profile_unprofiled_p50_ms"] for r in rounds),
        "ratio_range": [min(ratios), max(ratios)],
        "contended_rounds": sum(r["contended"] for r in rounds),
        "flags": [flag.message for flag in profile.flags],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a fine-tuned run (default: zoo efficientnet_lite0 on photo crops)")
    parser.add_argument("--openvino", action="store_true", help="also time OpenVINO int8 (NNCF, plain)")
    parser.add_argument("--executorch", action="store_true", help="also time ExecuTorch int8 (pt2e, plain)")
    parser.add_argument("--work", type=Path, help="keep the exports here and reuse them on a second run (default: a temporary folder)")
    parser.add_argument("--exports-only", action="store_true", help=argparse.SUPPRESS)  # the child process below
    args = parser.parse_args(argv)
    from edgekit.hardware import isa_class
    from edgekit.version import __version__

    started = time.perf_counter()
    report: dict = {"cpu": _cpu(), "isa": isa_class(), "edgekit": __version__, "date": datetime.date.today().isoformat()}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-inspect-") as workdir:
        work = args.work or Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        if args.exports_only:
            _export_all(args, work, report)
            return 0
        # Every export first, in a child process: an export checks its .pte in-process, and ExecuTorch's threadpool
        # keeps the thread count of the first program a process runs, so the 1-thread timing needs a process that
        # ran none. Here the exports are then read back from ``work``.
        forwarded = (["--run", str(args.run)] if args.run else []) + [f"--{f}" for f in ("openvino", "executorch") if getattr(args, f)]
        subprocess.run([sys.executable, __file__, *forwarded, "--work", str(work), "--exports-only"], check=True)
        run, calib, search, order, plain, files = _export_all(args, work, report)
        report["overlap"] = _overlap(run, plain, order, search)
        report["overlap_on_ranking_images"] = _overlap(run, plain, order, _ranking_images(calib, work))
        print(json.dumps({k: report[k] for k in ("overlap", "overlap_on_ranking_images")}, indent=2), flush=True)
        report["other_searches"] = {}
        report["profile_vs_bench"] = [_profile_vs_bench(run, path, runtime, search) for path, runtime in files]
        for path, runtime in files[2:]:
            report["other_searches"][runtime] = _other_search(run, path, calib, search, work, runtime)
            print(json.dumps(report["other_searches"][runtime], indent=2), flush=True)
    report["seconds"] = round(time.perf_counter() - started)
    RESULTS.mkdir(exist_ok=True)
    subject = "zoo-lite0" if args.run is None else args.run.name if args.run.name != "run" else args.run.parent.name
    stem = RESULTS / f"inspect-{subject}-{report['isa']}-{report['date']}"  # one file per model and day
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


def _export_all(args, work: Path, report: dict):
    """Every file the measurement needs, exported once into ``work`` (read back when there): (the run, its
    calibration and search folders, the search's order, the file the search starts from, [(int8 file, runtime)])."""
    run, calib, search = _subject(args.run, work, report)
    order = _searched(run, calib, search, work, report)
    plain = Path(_exported(run, calib, search, work / "start", "onnx", accuracy_aware=False).path)  # the search's step 0
    files = [(run.exports_dir / "model.int8.onnx", "ort-cpu"), (plain, "ort-cpu")]
    for fmt in [f for f in ("openvino", "executorch") if getattr(args, f)]:
        # plain int8 in a copy of the run: a run's own file may be a searched one (auto, a default export)
        files.append((Path(_exported(run, calib, search, work / f"{fmt}-plain", fmt, accuracy_aware=False).path), fmt))
        _exported(run, calib, search, work / f"{fmt}-search", fmt, accuracy_aware=True, seconds=OTHER_SEARCH_SECONDS)
    return run, calib, search, order, plain, files


def _subject(run_dir: Path | None, work: Path, report: dict):
    """(the run, its calibration folder, the folder the search validates on and inspect compares on)."""
    from bench_export import write_crops

    from edgekit.runs import Run, run_from_zoo

    if run_dir is not None:
        run = Run.load(run_dir)
        report["model"] = f"{run_dir} ({run.card.model})"
        return run, Path(run.card.data_dir), Path(run.card.val_dir or run.card.data_dir)
    calib = work / "calib" if (work / "calib").is_dir() else write_crops(work / "calib", 100, 2)
    search = work / "search" if (work / "search").is_dir() else write_crops(work / "search", 200, 1)
    run = (
        Run.load(work / "lite0")
        if (work / "lite0" / "edgekit.json").is_file()
        else run_from_zoo("efficientnet_lite0", "DEFAULT", work / "lite0")
    )
    report["model"] = "zoo efficientnet_lite0, ImageNet weights; 100 calibration crops, 200 search crops (real photos)"
    return run, calib, search


def _searched(run, calib: Path, search: Path, work: Path, report: dict) -> list[str]:
    """The layers the accuracy search returned to float, in order (exported once, then read from search.json)."""
    from edgekit.exporting import export

    saved = work / "search.json"
    if not saved.is_file() or not (run.exports_dir / "model.int8.onnx").is_file():
        exported = export(
            run, formats="onnx", quantize="none,int8", calib_data=calib, calib_size=100, parity_data=search, speed_check=False
        )
        order, start, summary = _search_order(exported)
        saved.write_text(json.dumps({"order": order, "start": start, "summary": summary}))
    recorded = json.loads(saved.read_text())
    report["search"] = {**recorded["summary"], "start_float": recorded["start"], "order": recorded["order"]}
    print(json.dumps(report["search"]), flush=True)
    return recorded["order"]


OTHER_SEARCH_SECONDS = 300.0  # NNCF's and pt2e's searches: their first picks are what is compared, not their end


def _exported(run, calib: Path, search: Path, copy: Path, fmt: str, accuracy_aware: bool, seconds: float | None = None):
    """The int8 variant of ``fmt`` exported into a copy of ``run`` (kept in ``copy`` and reused), as the search's
    export is (same calibration and validation images), with the search on or off."""
    import shutil

    from edgekit.exporting import export
    from edgekit.runs import Run

    saved = copy / "int8.json"
    if saved.is_file():
        from edgekit.exporting.results import VariantResult

        return VariantResult.model_validate_json(saved.read_text())
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("exports"))
    exported = export(
        Run.load(copy), formats=fmt, quantize="int8", calib_data=calib, calib_size=100, parity_data=search,
        accuracy_aware=accuracy_aware, speed_check=False,
        **({"max_fallback_seconds": seconds} if seconds is not None else {}),
    )  # fmt: skip
    (int8,) = [v for v in exported.variants if v.int8 is not None]
    saved.write_text(int8.model_dump_json())
    return int8


def _ranking_images(calib: Path, work: Path) -> Path:
    """The calibration images the ONNX search ranks layers on (the first RANKING_IMAGES, as export orders them)."""
    import shutil

    from edgekit.exporting.quantize.fallback import RANKING_IMAGES
    from edgekit.parity_check import images_in

    folder = work / "ranking-images"
    if not folder.is_dir():
        folder.mkdir()
        for path in images_in(calib, max_images=100).paths[:RANKING_IMAGES]:
            shutil.copy(path, folder / Path(path).name)
    return folder


def _other_search(run, plain: Path, calib: Path, search: Path, work: Path, fmt: str) -> dict:
    """The layers NNCF's accuracy control (openvino) or the pt2e search (executorch) returned to float, and where
    inspect ranks them on that format's plain int8 file (held-out images)."""
    from edgekit.inspection import inspect

    searched = _exported(run, calib, search, work / f"{fmt}-search", fmt, accuracy_aware=True, seconds=OTHER_SEARCH_SECONDS).int8.search
    result = inspect(run, plain, search, profile=False, max_images=32).numerics
    names = {layer.node: layer.layer for layer in result.layers}
    start = {layer.layer for layer in result.layers if layer.precision != "int8"}
    if searched is None:
        picks = []  # plain int8 was within the budget: nothing to return to float
    elif fmt == "openvino":
        from edgekit.inspection.openvino_numerics import onnx_node_name

        picks = [names.get(onnx_node_name(n), onnx_node_name(n)) for n in searched.kept_float]
        picks = [p for p in picks if p not in start]  # NNCF reports the final set, not the order
    else:
        picks = [step.action.removeprefix("keep ").removesuffix(" in float") for step in searched.steps[1:]]
    ranked = {
        "own": [layer.layer for layer in sorted((x for x in result.layers if x.own is not None), key=lambda x: x.own.sqnr_db)],
        "search_score": [
            layer.layer for layer in sorted((x for x in result.layers if x.search_error is not None), key=lambda x: x.search_error)
        ],
    }
    return {
        "search": {
            "within_budget": searched.within_budget if searched else True,
            "steps": len(searched.steps) if searched else 0,
            "seconds": searched.seconds if searched else 0,
            "returned_to_float": picks,
        },
        "ranks_by_own": [ranked["own"].index(p) + 1 if p in ranked["own"] else None for p in picks],
        "ranks_by_search_score": [ranked["search_score"].index(p) + 1 if p in ranked["search_score"] else None for p in picks],
        "inspect_top_three_own": ranked["own"][:3],
        "inspect_top_three_search_score": ranked["search_score"][:3],
        "int8_layers": len(ranked["search_score"]),
    }


def _markdown(report: dict) -> str:
    overlap = report["overlap"]
    lines = [
        f"# edgekit inspect vs the accuracy search and bench ({report['date']})",
        "",
        f"- machine: {report['cpu']}, ISA class `{report['isa']}`; edgekit {report['edgekit']}; {report['seconds']} s in all",
        f"- model: {report['model']}",
        f"- search: {report['search']}",
        f"- the search's first three layers returned to float: {', '.join(overlap['search_first_three'])}",
        f"- inspect's three worst by own error (plain int8): {', '.join(overlap['inspect_top_three_own'])} "
        f"(overlap {overlap['overlap_own']} of {len(overlap['search_first_three'])}; the search's picks rank "
        f"{overlap.get('search_picks_ranks_by_own')} by own error)",
        f"- inspect's three worst by own error, every channel weighing the same: {', '.join(overlap['inspect_top_three_own_channel'])} "
        f"(overlap {overlap['overlap_own_channel']} of 3; the search's first pick is #{overlap['first_pick_rank_by_own_channel']})",
        f"- inspect's three worst by the search's own score: {', '.join(overlap['inspect_top_three_search_score'])} "
        f"(overlap {overlap['overlap_search_score']} of {len(overlap['search_first_three'])}; the search's picks rank "
        f"{overlap.get('search_picks_ranks_by_search_score')} by it; scored on {overlap.get('ranking_images')} images, as many as the search ranks on)",
        f"- first diverging layer (plain int8): {overlap['first_diverging']}; worst accumulated: {', '.join(overlap['worst'])}",
    ]
    own_images = report.get("overlap_on_ranking_images")
    if own_images:
        lines.append(
            f"- on the {own_images['ranking_images']} calibration images the search itself ranks on: its picks rank "
            f"{own_images['search_picks_ranks_by_search_score']} by the search's score (overlap {own_images['overlap_search_score']} of "
            f"{len(own_images['search_first_three'])}), {own_images['search_picks_ranks_by_own']} by own error (overlap {own_images['overlap_own']})"
        )
    for fmt, other in report.get("other_searches", {}).items():
        picks = other["search"]["returned_to_float"]
        lines.append(
            f"- {fmt}: its search returned {', '.join(picks) or 'no layer'} to float ({other['search']['steps']} steps, within budget: "
            f"{other['search']['within_budget']}); on its plain int8 ({other['int8_layers']} int8 layers) they rank "
            f"{other['ranks_by_search_score']} by the search's score, {other['ranks_by_own']} by own error; inspect's top three: "
            f"{', '.join(other['inspect_top_three_search_score'])} (score), {', '.join(other['inspect_top_three_own'])} (own)"
        )
    lines += [
        "",
        f"| file | runtime | bench p50 ms | profile total ms (ops' sum) | profiled run ms | profile total / bench p50 (median of {ROUNDS}) | range | "
        "profiled run / bench p50 | profile total / unprofiled p50 alternating with it | contended rounds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["profile_vs_bench"]:
        low, high = row["ratio_range"]
        lines.append(
            f"| {row['artifact']} | {row['runtime']} | {row['bench_p50_ms']:.3f} | {row['profile_total_ms']:.3f} | {row['profiled_run_ms']:.3f} | "
            f"{row['total_over_bench_p50']:.2f} | {low:.2f}-{high:.2f} | {row['profiled_run_over_bench_p50']:.2f} | "
            f"{row['total_over_unprofiled_p50']:.2f} | {row['contended_rounds']} of {ROUNDS} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
