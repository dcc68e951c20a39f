"""The `flowvq evaluate` table on SynthTalk held-out speakers, for the pipelines given, with the
source-copy and ground-truth rows and the papers' reported MEAD rows.

    python benchmarks/evaluate_synthtalk.py --data DIR --syncnet CKPT --classifier CKPT \
        --pipeline "name=path/to/pipeline.yaml" [--pipeline ...] [--limit N] [--samples 3]

Each pipeline is scored by :func:`flowvq.pipeline.evaluate.evaluate` on the same clips (the
reference rows once); the rows are merged into ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from flowvq.pipeline.evaluate import COLUMNS, REPORTED, evaluate
from flowvq.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--pipeline", action="append", default=[], help="name=pipeline.yaml (repeatable)")
    parser.add_argument("--syncnet", type=Path)
    parser.add_argument("--classifier", type=Path)
    parser.add_argument("--coefficient-classifier", type=Path)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flowvq_evaluate_synthtalk"))
    parser.add_argument("--name", default="evaluate_synthtalk")
    args = parser.parse_args()

    common = {
        "split": args.split,
        "syncnet": args.syncnet,
        "emotion_classifier": args.classifier,
        "coefficient_classifier": args.coefficient_classifier,
        "weights": args.weights,
        "samples": args.samples,
        "limit": args.limit,
        "seed": args.seed,
        "overwrite": True,
        "progress": False,
    }
    tables = []
    timings = {}
    start = time.perf_counter()
    tables.append(evaluate(None, args.data, out=args.work / "reference", **common))
    timings["reference rows"] = time.perf_counter() - start
    for spec in args.pipeline:
        name, _, path = spec.partition("=")
        start = time.perf_counter()
        tables.append(evaluate(path, args.data, out=args.work / name, name=name, baselines=False, **common))
        timings[name] = time.perf_counter() - start

    keys = [k for k, _ in COLUMNS]
    titles = dict(COLUMNS)
    rows, reasons = [], set()
    for table in tables[1:] + tables[:1]:  # pipelines first, then the reference rows
        for row_name, values in table.rows.items():
            row = {"row": row_name}
            for key in keys:
                value = values.get(key)
                if isinstance(value, str):
                    reasons.add(value)
                    value = "n/c"
                elif isinstance(value, float) and math.isinf(value):
                    value = "inf"
                row[titles[key]] = value
            counts = table.counts.get(row_name, {})
            row["clips"] = counts.get("clips")
            row["frames without landmarks"] = counts.get("frames_without_landmarks")
            rows.append(row)
    for name, values in REPORTED.items():
        rows.append({"row": f"*{name} (other data)*", **{titles[k]: values.get(k) for k in keys}})
    notes = [
        f"Protocol: {tables[0].protocol}",
        "Rows in italics are the papers' reported figures on MEAD (a secondary summary, unverified), with "
        "their own evaluation networks: figures on other data, not comparable with the rows above.",
        "LSE-D/LSE-C come from the SyncNet trained here (unit embeddings, distances 0-2); Acc_emo from the frame "
        "emotion classifier trained here; both on the train speakers of the same data.",
        *[f"n/c: {reason}" for reason in sorted(reasons)],
        *[n for table in tables for n in table.notes],
        "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    extra = {"tables": [t.to_dict() for t in tables]}
    write_report(
        args.name, rows, title="flowvq evaluate on SynthTalk held-out speakers", notes=notes, extra=extra, digits=3
    )


if __name__ == "__main__":
    main()
