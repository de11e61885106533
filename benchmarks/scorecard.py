"""The cross-dataset scorecard of emotion models (issue 15): FERPlus test and four other face sets, end to end.

For each model, one Markdown table (``training/scorecard.py`` says what each row and column
is): FERPlus test under both label rules, then taiwanese valid, lfw_expressions valid, sfew and
london_faces through the stream's detector, crop, alignment and classifier (largest face per
image; an image without a face found counts as wrong). Sets absent under ``--root`` are left
out, and the output says so.

    .venv/bin/python benchmarks/scorecard.py stream/models/emotion_ferplus_resnet.onnx \\
        stream/models/emotion_minixception.onnx --out runs/scorecard.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.scorecard import format_table, scorecard  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL.onnx")
    p.add_argument("--root", type=Path, default=REPO.parent / "shared" / "datasets",
                   help="folder holding ferplus/, taiwanese/, lfw_expressions/, sfew/, london_faces/")
    p.add_argument("--out", type=Path, help="write every row of every model as JSON here")
    p.add_argument("--uncertain-below", type=float, metavar="P",
                   help="also score the stream's 'uncertain' option: faces whose top probability is below P "
                        "held back (share), accuracy on the rest")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"scorecard: '{args.root}' does not exist: no labelled sets to score", file=sys.stderr)
        return 2
    results = {}
    for model in args.models:
        t0 = time.perf_counter()
        rows, notes = scorecard(model, args.root, uncertain_below=args.uncertain_below,
                                log=lambda name: print(f"  {name} ...", file=sys.stderr, flush=True))
        print(f"\n### {model.name}\n")
        print(format_table(rows))
        for note in notes:
            print(f"\n- {note}")
        print(f"\n({time.perf_counter() - t0:.0f} s)", flush=True)
        results[str(model)] = {"rows": [r.to_dict() for r in rows], "notes": notes}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
