"""Inference stage: batched face detection and emotion classification on ONNX Runtime."""

from stream.infer.classify import CropSpec, EmotionClassifier, crop_faces
from stream.infer.detect import Detection, FaceDetector, blazeface_anchors
from stream.infer.session import create_session, resolve_providers
from stream.infer.stage import InferenceThread, infer_batch

__all__ = [
    "CropSpec",
    "Detection",
    "EmotionClassifier",
    "FaceDetector",
    "InferenceThread",
    "blazeface_anchors",
    "create_session",
    "crop_faces",
    "infer_batch",
    "resolve_providers",
]
