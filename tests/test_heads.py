"""A classifier with a second, named head: its values reach every output with no code of their own
(issue 16 item 5): the face record, the event log, the batch dataset and the dashboard's JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream.config import SAMPLE_CLIP, Config
from stream.contract import CONTRACT_KEY, FER2013_LABELS, ModelContract
from stream.errors import ModelError
from stream.infer import EmotionClassifier
from stream.pipeline import Pipeline, RunOptions, load_models

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HEAD = ("valence_arousal", ("valence", "arousal"))


def two_head_model(path: Path, *, heads: tuple = (HEAD,), head_output: str = "valence_arousal") -> Path:
    """48x48 gray -> 7 softmax probabilities and a tanh 2-vector, from fixed random weights."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.normal(0, 0.05, (48 * 48, 7)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.05, (48 * 48, 2)).astype(np.float32), "w2")
    nodes = [helper.make_node("Flatten", ["crops"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
             helper.make_node("MatMul", ["flat", "w2"], ["va_raw"]),
             helper.make_node("Tanh", ["va_raw"], [head_output])]
    graph = helper.make_graph(
        nodes, "two_heads", [helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["n", 48, 48, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 7]),
         helper.make_tensor_value_info(head_output, TensorProto.FLOAT, ["n", 2])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48), crop_margin=0.1, heads=heads)
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_head_model(tmp_path_factory.mktemp("model") / "two_heads.onnx")


def test_contract_round_trips_its_heads(model: Path) -> None:
    contract = ModelContract.from_onnx(model)
    assert contract.heads == (HEAD,) and contract.head_names == ("valence_arousal",)
    assert ModelContract.from_json(contract.to_json()) == contract
    plain = ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48))
    assert "heads" not in json.loads(plain.to_json())  # contracts without heads stay as they were


@pytest.mark.parametrize("heads", [((("probs"), ("a",)),), (("va", ()),), (("Bad Name", ("a",)),),
                                   (HEAD, HEAD)])
def test_bad_heads_are_refused(heads: tuple) -> None:
    with pytest.raises(ModelError, match="heads must be"):
        ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48), heads=heads).validate()


def test_a_head_the_model_lacks_is_refused(tmp_path: Path) -> None:
    path = two_head_model(tmp_path / "m.onnx", head_output="something_else")
    with pytest.raises(ModelError, match="head 'valence_arousal'"):
        EmotionClassifier.from_path(path)


def test_the_second_head_reaches_every_output(model: Path, tmp_path: Path) -> None:
    from stream.serve.state import Dashboard

    config = Config().with_overrides({"classifier.model": model, "output.dir": tmp_path / "run",
                                      "output.progress": False})
    models = load_models(config)
    dashboard = Dashboard(models.classifier.labels, ["clip"])
    faces = []
    with Pipeline([str(SAMPLE_CLIP)], config, RunOptions(max_frames=15), models, sinks=[dashboard]) as p:
        for result in p:
            faces.extend(result.faces)
    # The face records: the head's values, as the model computes them from the crops the contract makes.
    assert len(faces) == 15 and all(set(f.heads) == {"valence_arousal"} for f in faces)
    values = np.stack([f.heads["valence_arousal"] for f in faces])
    assert values.shape == (15, 2) and np.all(np.abs(values) <= 1) and np.ptp(values[:, 0]) > 0
    # The event log: one key per head, its components by name.
    lines = [json.loads(line) for line in (tmp_path / "run" / "carphone_640x480.events.jsonl").read_text().splitlines()]
    logged = [line["faces"][0]["valence_arousal"] for line in lines]
    assert [list(v) for v in logged] == [["valence", "arousal"]] * 15
    assert np.allclose([[v["valence"], v["arousal"]] for v in logged], values, atol=1e-4)
    # The dashboard's JSON (the records it serves on /api/events).
    served = [record for _, record in dashboard.sources[0].events]
    assert served and all("valence_arousal" in r["faces"][0] for r in served)


def test_the_second_head_reaches_the_batch_dataset(model: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from stream.batch import BatchOptions, find_inputs, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE_CLIP, folder / "clip.mp4")
    config = Config().with_overrides({"classifier.model": model})
    inputs, _ = find_inputs([str(folder)])
    report = run_batch(inputs, tmp_path / "out", config, BatchOptions(progress=False, max_frames=10))
    assert not report.failed
    table = pq.read_table(tmp_path / "out" / "faces.parquet").to_pydict()
    assert len(table["frame"]) == 10
    assert all(-1 <= v <= 1 for v in table["valence_arousal_valence"] + table["valence_arousal_arousal"])
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.events.jsonl").read_text().splitlines()]
    assert table["valence_arousal_arousal"][0] == pytest.approx(lines[0]["faces"][0]["valence_arousal"]["arousal"])
