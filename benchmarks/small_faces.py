"""Emotion accuracy against face size: FERPlus test faces shrunk to what a small face gives the stream.

A face box ``s`` pixels tall reaches the classifier as a crop about ``1.21 s`` pixels wide
(the default model's ``crop_margin`` 0.105 on each side) resized to the model's 48x48. Each
FER2013Test face (48x48, the FER crop) is shrunk to that many pixels with area averaging and
resized back with bilinear interpolation, as the stream resizes a small crop; accuracy is
scored against the FERPlus plurality labels (contempt as neutral). What ``classifier.min_face_px``
(faces below it are labelled ``too_small``) is chosen from.

    python benchmarks/small_faces.py [--ferplus-dir ../shared/datasets/ferplus] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.config import MODELS_DIR
from stream.infer import EmotionClassifier

REPO = Path(__file__).resolve().parent.parent
SIZES = (8, 10, 12, 16, 20, 24, 32, 40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferplus-dir", type=Path, default=REPO.parent / "shared" / "datasets" / "ferplus")
    ap.add_argument("--model", type=Path, default=MODELS_DIR / "emotion_ferplus_resnet.onnx")
    ap.add_argument("--limit", type=int, default=0, help="use the first N test faces (0: all)")
    args = ap.parse_args()
    if not (args.ferplus_dir / "FER2013Test").is_dir():
        sys.exit(f"{args.ferplus_dir}/FER2013Test not found (FERPlus is not part of the repository)")
    from training.data import load_ferplus_dir

    test = load_ferplus_dir(args.ferplus_dir, splits=("test",)).split("test")
    faces = test.images[..., 0]
    truth = np.asarray(test.targets)
    truth = truth.argmax(axis=1) if truth.ndim == 2 else truth
    if args.limit:
        faces, truth = faces[:args.limit], truth[:args.limit]
    classifier = EmotionClassifier.from_path(args.model, ("cpu",), 1)
    side = classifier.contract.input_size_wh[0]
    margin = classifier.contract.crop_margin
    rows = {}
    for s in (*SIZES, None):
        if s is None:
            crops = np.stack([cv2.resize(f, (side, side)) for f in faces])
        else:
            px = max(2, round(s * (1 + 2 * margin)))
            crops = np.stack([cv2.resize(cv2.resize(f, (px, px), interpolation=cv2.INTER_AREA), (side, side),
                                         interpolation=cv2.INTER_LINEAR) for f in faces])
        pred = np.concatenate([classifier.classify(crops[i:i + 256]).argmax(axis=1) for i in range(0, len(crops), 256)])
        key = "full (48x48 FER crop)" if s is None else f"{s} px"
        rows[key] = round(float((pred == truth).mean()), 4)
        print(key, rows[key], flush=True)
    print(json.dumps({"faces": len(faces), "model": args.model.name, "accuracy": rows}))


if __name__ == "__main__":
    main()
