"""Faces across frames: stable ids by IoU matching and smoothed probabilities.

Greedy IoU matching is enough for the speeds and face counts of a camera view:
each detection takes the free track it overlaps most (above a threshold),
unmatched detections open new tracks, and a track survives a few missed frames
so a blink of the detector does not change a person's id. Probabilities are
smoothed per track with an exponential moving average so labels do not flicker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream.boxes import box_iou, pairwise_iou
from stream.records import Face

if TYPE_CHECKING:
    from stream.config import TrackingConfig

__all__ = ["IouTracker"]


@dataclass(slots=True)
class _Track:
    id: int
    box_xyxy: np.ndarray
    probs: np.ndarray
    missed: int = 0


class IouTracker:
    """Assigns track ids to faces and smooths their probabilities.

    Args:
        iou_threshold: Minimum overlap for a face to continue a track.
        max_missed_frames: A track with no face for more frames than this is dropped.
        smoothing_alpha: Weight of the new probabilities in the moving average; 1 disables smoothing.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed_frames: int = 10, smoothing_alpha: float = 1.0) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed_frames = max_missed_frames
        self.alpha = smoothing_alpha
        self._tracks: list[_Track] = []
        self._next_id = 0

    @classmethod
    def from_config(cls, tracking: TrackingConfig, *, still_images: bool = False) -> IouTracker:
        """The tracker ``tracking:`` describes; ``smoothing: auto`` smooths video and live sources, not images."""
        smooth = tracking.smoothing == "on" or (tracking.smoothing == "auto" and not still_images)
        return cls(tracking.iou_threshold, tracking.max_missed_frames, tracking.smoothing_alpha if smooth else 1.0)

    def update(self, faces: list[Face]) -> list[Face]:
        """Set ``id`` on each face of one frame and smooth its ``probs`` in place. Returns ``faces``."""
        matches = self._match(faces)
        matched_tracks = set()
        for face_index, face in enumerate(faces):
            track = matches.get(face_index)
            if track is None:
                track = _Track(self._next_id, face.box_xyxy, face.probs.copy())
                self._next_id += 1
                self._tracks.append(track)
            else:
                if track.probs.shape == face.probs.shape:
                    track.probs = self.alpha * face.probs + (1.0 - self.alpha) * track.probs
                else:
                    track.probs = face.probs.copy()
                track.box_xyxy, track.missed = face.box_xyxy, 0
            matched_tracks.add(track.id)
            face.id = track.id
            face.probs = track.probs
        for track in self._tracks:
            if track.id not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed_frames]
        return faces

    def _match(self, faces: list[Face]) -> dict[int, _Track]:
        if not faces or not self._tracks:
            return {}
        if len(faces) == 1 and len(self._tracks) == 1:  # one face, one track: the common case
            track = self._tracks[0]
            return {0: track} if box_iou(faces[0].box_xyxy, track.box_xyxy) >= self.iou_threshold else {}
        iou = pairwise_iou(np.array([f.box_xyxy for f in faces]), np.array([t.box_xyxy for t in self._tracks]))
        matches: dict[int, _Track] = {}
        taken: set[int] = set()
        # Greedy: best overlaps first, each face and track used once.
        for flat in np.argsort(-iou, axis=None).tolist():
            face_index, track_index = divmod(flat, iou.shape[1])
            if iou[face_index, track_index] < self.iou_threshold:
                break
            if face_index in matches or track_index in taken:
                continue
            matches[face_index] = self._tracks[track_index]
            taken.add(track_index)
        return matches
