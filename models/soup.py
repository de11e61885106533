"""Average the weights of two Keras checkpoints of one network (a "model soup", as in WiSE-FT).

Both must be the same architecture, the second usually fine-tuned from the first; every weight
(batch-norm statistics included) becomes ``(1 - w) * first + w * second``:

    .venv/bin/python models/soup.py models/mix_resnet/model.keras runs/cw/run/model.keras 0.5 --out soup.keras

Then export, quantise and calibrate it as any trained model (models/README.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("w", type=float, help="the second checkpoint's share, 0..1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0.0 <= args.w <= 1.0:
        parser.error(f"w must be in 0..1, got {args.w}")
    import keras

    first = keras.models.load_model(args.first, compile=False)
    second = keras.models.load_model(args.second, compile=False)
    if [v.path for v in first.weights] != [v.path for v in second.weights]:
        parser.error(f"'{args.first}' and '{args.second}' are not the same network")
    for a, b in zip(first.weights, second.weights, strict=True):
        a.assign((1.0 - args.w) * a.numpy() + args.w * b.numpy())
    first.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
