"""Does the deployment card's choice hold in a fresh measurement? Every candidate the card lists (each file within
budget, on its runtime, at each setting auto tried) is timed again, in a new process, alone in alternating blocks,
and the card's choice is compared with the fastest of them.

    python benchmarks/bench_deploy_card.py runs/demo/run [--iterations 100] [--out benchmarks/results]

It passes when no candidate is faster than the card's choice beyond the noise of both medians (its whole 95%
interval below the choice's). Writes benchmarks/results/deploy-card-<isa>-<date>.json and .md. Not a pytest benchmark.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    from edgekit import runtimes
    from edgekit.benchmarking.stats import median_ci
    from edgekit.card import read_card
    from edgekit.device import contention, timing
    from edgekit.hardware import isa_class
    from edgekit.runs import Run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    run = Run.load(args.run)
    card = read_card(run.exports_dir)
    if card is None:
        print(f"{run.exports_dir} has no deploy.json; run `edgekit export {args.run} --quantize auto` first", file=sys.stderr)
        return 2
    candidates = [c for c in card.candidates if c.within_budget and not c.error]
    sessions = [runtimes.load(run.exports_dir / c.file, c.runtime, c.threads, **c.options) for c in candidates]
    batches = [s.example_batch(card.batch_size) for s in sessions]
    calls = [lambda s=s, b=b: s.run(b) for s, b in zip(sessions, batches)]
    timed = timing.alternating_blocks(calls, args.iterations, contention.Monitor())
    rows = []
    for c, t in zip(candidates, timed):
        ms = (np.asarray(t.times) * 1000).tolist()
        low, high = median_ci(ms)
        chosen = (c.file, c.runtime, c.setting) == (card.file, card.runtime, card.setting)
        rows.append(
            {
                "file": c.file,
                "runtime": c.runtime,
                "setting": c.setting,
                "p50_ms": float(np.median(ms)),
                "ci": [low, high],
                "chosen": chosen,
            }
        )
        rows[-1]["contended"] = any(chunk.contended for chunk in t.chunks)
    mine = next(r for r in rows if r["chosen"])
    beats = [r for r in rows if r["ci"][1] < mine["ci"][0]]
    verdict = "holds: no candidate is faster beyond noise" if not beats else f"does not hold: {len(beats)} candidate(s) faster beyond noise"
    stamp, isa = _dt.date.today().isoformat(), isa_class().value
    lines = [
        f"## The deployment card's choice, re-measured ({run.card.model}, {isa}, batch {card.batch_size})",
        "",
        f"`python benchmarks/bench_deploy_card.py {args.run}`: every candidate alone, in alternating blocks, {args.iterations} "
        f"calls each, in a fresh process. The card chose **{card.file} on {card.runtime}, {card.setting}**: {verdict}.",
        "",
        "| file | runtime | setting | p50 ms (95% CI) | |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["p50_ms"]):
        mark = "chosen" if r["chosen"] else ("faster beyond noise" if r in beats else "")
        lines.append(f"| {r['file']} | {r['runtime']} | {r['setting']} | {r['p50_ms']:.2f} ({r['ci'][0]:.2f}-{r['ci'][1]:.2f}) | {mark} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"deploy-card-{isa}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({"card": card.model_dump(mode="json"), "remeasured": rows}, indent=2))
    base.with_suffix(".md").write_text(text)
    print(text)
    return 0 if not beats else 1


if __name__ == "__main__":
    raise SystemExit(main())
