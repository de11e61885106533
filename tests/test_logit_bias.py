"""The contract's per-class logit bias (prior correction), its fit, and the cross-dataset scorecard.

Everything but the last test runs on hand-made numbers and the shipped mini-Xception; the last
re-scores the shipped default model where ``../shared/datasets`` exists (skipped elsewhere).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stream.config import MODELS_DIR
from stream.contract import FER2013_LABELS, ModelContract, calibrated
from stream.errors import ModelError
from stream.infer.classify import EmotionClassifier
from training.calibrate import calibrate_predictor, write_logit_bias, write_temperature
from training.evaluate import load_predictor
from training.prior import FitPart, fit_logit_bias, macro_recall
from training.scorecard import NOT_FOUND, row_from_predictions

MODEL = MODELS_DIR / "emotion_minixception.onnx"
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
BIAS = (0.5, 1.0, 1.5, -0.25, 0.0, 0.2, 0.0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_bias_is_added_after_the_temperature() -> None:
    z = np.random.default_rng(0).normal(0, 2, (5, 7))
    b = np.array(BIAS)
    expected = softmax(z / 0.6 + b)
    np.testing.assert_allclose(calibrated(z, output="logits", temperature=0.6, logit_bias=b), expected, atol=1e-5)
    # A probability output gives the same thing (log of a softmax is its logits less a constant).
    np.testing.assert_allclose(calibrated(softmax(z), temperature=0.6, logit_bias=b), expected, atol=1e-5)
    # No bias, T = 1: probabilities untouched.
    p = softmax(z).astype(np.float32)
    assert calibrated(p) is not None and np.array_equal(calibrated(p), p)


def test_contract_round_trip_and_old_contracts_unchanged() -> None:
    base = ModelContract(FER2013_LABELS, (48, 48), temperature=0.64)
    assert "logit_bias" not in json.loads(base.to_json())
    assert ModelContract.from_json(base.to_json()).logit_bias is None
    biased = ModelContract(FER2013_LABELS, (48, 48), temperature=0.64, logit_bias=BIAS)
    again = ModelContract.from_json(biased.to_json())
    assert again == biased and again.logit_bias == BIAS


@pytest.mark.parametrize("bias", [[0.0] * 6, [0.0] * 8, [math.nan] + [0.0] * 6, [1e9] + [0.0] * 6,
                                  ["1"] + [0.0] * 6, [True] + [0.0] * 6, "0,0,0", {"angry": 1}])
def test_bad_logit_bias_is_refused(bias: object) -> None:
    data = json.loads(ModelContract(FER2013_LABELS, (48, 48)).to_json())
    data["logit_bias"] = bias
    with pytest.raises(ModelError, match="logit_bias"):
        ModelContract.from_json(json.dumps(data))


def test_the_stream_applies_the_bias_from_the_onnx_file(tmp_path: Path) -> None:
    out = tmp_path / "biased.onnx"
    contract = write_logit_bias(MODEL, out, BIAS)
    assert contract.logit_bias == BIAS
    plain = EmotionClassifier.from_path(MODEL)
    biased = EmotionClassifier.from_path(out)
    assert biased.contract.logit_bias == BIAS
    crops = np.random.default_rng(1).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    p = plain.classify(crops)
    np.testing.assert_allclose(biased.classify(crops), calibrated(p, logit_bias=BIAS), atol=1e-5)
    # write_temperature keeps the bias; a model with a bias is not calibrated again.
    write_temperature(out, tmp_path / "t.onnx", 0.8)
    assert load_predictor(tmp_path / "t.onnx").contract.logit_bias == BIAS
    with pytest.raises(ModelError, match="logit bias"):
        calibrate_predictor(load_predictor(out), None)


def test_fit_corrects_a_prior_shift() -> None:
    rng = np.random.default_rng(0)
    n, k = 3000, 3
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), true] += 2.0
    logits[:, 2] += 2.5  # the model learned to favour class 2
    log_p = np.log(softmax(logits))
    part = FitPart("shifted", log_p, true)
    before = macro_recall(log_p, true, np.zeros(k))
    bias = fit_logit_bias([part], k, fixed=2)
    assert bias[2] == 0.0
    assert macro_recall(log_p, true, bias) > before + 0.15
    # The two others are pushed up by about the shift.
    assert 1.5 < bias[0] < 3.5 and 1.5 < bias[1] < 3.5
    # The guard: the anchor part's accuracy may not fall below its own floor.
    anchor = FitPart("anchor", np.log(softmax(rng.normal(0, 1, (500, k)) + 3 * np.eye(k)[np.zeros(500, int)])),
                     np.zeros(500, np.int64))
    guarded = fit_logit_bias([part, anchor], k, fixed=2, max_drop=0.0, anchor="anchor")
    acc = np.mean(np.argmax(anchor.log_probs + guarded, axis=1) == 0)
    assert acc >= np.mean(np.argmax(anchor.log_probs, axis=1) == 0) - 1e-12


def test_scorecard_row_counts_a_missed_face_as_wrong() -> None:
    labels = FER2013_LABELS
    neutral, happy = labels.index("neutral"), labels.index("happy")
    true = np.array([happy, happy, neutral, neutral])
    predicted = np.array([happy, NOT_FOUND, neutral, happy])
    row = row_from_predictions("set", true, predicted, labels)
    assert row.n == 4 and row.found == 0.75 and row.accuracy == 0.5
    assert row.recall == {"happy": 0.5, "neutral": 0.5}
    assert row.neutral_predicted == 0.25 and row.neutral_true == 0.5
    assert row.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)  # happy P = R = 1/2; neutral P = 1, R = 1/2


@pytest.mark.skipif(not all((SHARED / name).is_dir() for name in ("ferplus", "taiwanese", "lfw_expressions",
                                                                    "sfew", "london_faces")),
                    reason="../shared/datasets (ferplus, taiwanese, lfw_expressions, sfew, london_faces) is "
                           "absent: research data, never in the repository")
@pytest.mark.parametrize("name", ["emotion_ferplus_resnet.onnx", "emotion_mix64_resnet.onnx"])
def test_shipped_scorecard_as_documented(name: str) -> None:
    from training.scorecard import scorecard

    documented = json.loads((REPO / "models" / "scorecard.json").read_text())
    rows, _ = scorecard(MODELS_DIR / name, SHARED)
    got = {r.name: r.accuracy for r in rows}
    for row_name, accuracy in documented[name].items():
        assert abs(100 * got[row_name] - 100 * accuracy) <= 0.5, (row_name, got[row_name], accuracy)


def test_scorecard_row_scores_the_uncertain_option() -> None:
    labels = FER2013_LABELS
    happy, sad = labels.index("happy"), labels.index("sad")
    true = np.array([happy, happy, sad, sad, sad])
    predicted = np.array([happy, sad, sad, NOT_FOUND, happy])
    confidence = np.array([0.9, 0.3, 0.8, 0.0, 0.4])
    row = row_from_predictions("set", true, predicted, labels, confidence=confidence, uncertain_below=0.5)
    assert row.extra["held_back"] == 0.5  # 2 of the 4 faces found
    assert row.extra["accuracy_rest"] == 1.0
    assert row.accuracy == 0.4  # the option does not change the plain accuracy
