"""Writers of the outputs: the annotated video or image, and the JSON Lines event log.

Each writes under a temporary name and publishes its file on ``close`` (see
:mod:`stream.render.outputs`); ``abort`` gives up without touching an earlier
file of the same name. Both are idempotent, so the pipeline's ``finally``
leaves a playable video and a complete log whatever happened. A write error
(full disk, ``/dev/full``) raises :class:`OutputError` at once.

The video codecs ``mpeg4`` (the default: MPEG-4 Part 2, today's mp4v codec, the
cheapest per frame) and ``h264`` (plays in browsers) are written through PyAV as
*fragmented* MP4: a header followed by self-contained fragments of one second
each, so a run killed without warning (SIGKILL, power cut) leaves a partial file
that plays up to its last whole fragment. OpenCV FourCCs (``mp4v`` ...) are still
accepted; their MP4 index is written only at the end. Costs: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from stream.errors import OutputError
from stream.labels import TOO_SMALL, face_label
from stream.records import Face, Frame, FrameResult
from stream.render.outputs import OutputFile

__all__ = ["PYAV_CODECS", "EventLog", "ImageWriter", "VideoRecorder", "check_writable", "event_record", "frame_event",
           "result_of_event"]

log = logging.getLogger(__name__)

#: ``output.codec`` values written with PyAV as fragmented (crash-safe) video, and their FFmpeg encoders.
PYAV_CODECS = {"h264": "libx264", "mpeg4": "mpeg4"}
_PYAV_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
#: Fragment at every keyframe; a keyframe every second (see ``_AvWriter``). ``default_base_moof``
#: makes each fragment self-contained, as players of fragmented MP4 (and MSE) expect.
_FRAGMENTED = "frag_keyframe+empty_moov+default_base_moof"


def check_writable(path: Path, what: str) -> Path:
    """Create the parent folder and check that ``path`` can be written, before any work starts.

    Raises:
        OutputError: The folder cannot be created or written, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} '{path}' could not be written: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} '{path}' could not be written: {err.strerror or err}") from err
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} '{path}' could not be written: permission denied")
    return path


def _text_path(path: Path, what: str, final: Path) -> str:
    """``path`` as the text OpenCV takes; a name that is not valid UTF-8 crashes OpenCV, so refuse it."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OutputError(f"{what} {str(final)!a}: the name is not valid UTF-8, which OpenCV cannot "
                          f"write (rename it, or use output.codec mpeg4)") from None
    return text


def _even_size(size_wh: tuple[int, int]) -> tuple[int, int]:
    # 4:2:0 chroma needs even sizes; an odd row or column is padded (nothing is cut).
    return size_wh[0] + size_wh[0] % 2, size_wh[1] + size_wh[1] % 2


class _AvWriter:
    """Fragmented MP4 (or MKV) through PyAV, written through a Python file so errors surface."""

    def __init__(self, target: OutputFile, size_wh: tuple[int, int], fps: float, codec: str) -> None:
        import av  # the import costs ~0.1 s: only when a PyAV codec is chosen

        self._av = av
        fmt = _PYAV_FORMATS.get(target.path.suffix.lower())
        if fmt is None:
            raise OutputError(f"output video '{target.path}': codec {codec!r} writes "
                              f"{', '.join(_PYAV_FORMATS)} files, not '{target.path.suffix}'")
        self.size_wh = size_wh
        self._enc_wh = _even_size(size_wh)
        self._what = f"output video '{target.path}'"
        try:
            # Unbuffered: FFmpeg's own buffer batches the writes; each fragment reaches the disk whole.
            self._file: IO[bytes] | None = open(target.write_path, "wb", buffering=0)  # noqa: SIM115
        except OSError as err:
            raise OutputError(f"{self._what} could not be written: {err.strerror or err}") from err
        try:
            options = {"movflags": _FRAGMENTED} if fmt in ("mp4", "mov") else {}
            self._container: Any = av.open(self._file, mode="w", format=fmt, options=options)
            rate = Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)
            stream: Any = self._container.add_stream(PYAV_CODECS[codec], rate=rate)  # a VideoStream
            stream.width, stream.height = self._enc_wh
            stream.pix_fmt = "yuv420p"
            # A keyframe (so a fragment) every second: a crash loses at most the last second.
            stream.codec_context.gop_size = max(1, round(float(rate)))
            if codec == "h264":
                # ultrafast: about the CPU cost of OpenCV's mp4v at 640x480 (benchmarks/RESULTS.md).
                stream.options = {"preset": "ultrafast", "crf": "23"}
            else:
                stream.codec_context.bit_rate = int(self._enc_wh[0] * self._enc_wh[1] * float(rate) * 0.2)
            self._stream: Any = stream
        except (OSError, ValueError, av.FFmpegError) as err:
            self._file.close()
            raise OutputError(f"{self._what} could not be written: {err}") from err

    def write(self, image_bgr: np.ndarray) -> None:
        if image_bgr.shape[1::-1] != self._enc_wh:
            pad_w, pad_h = self._enc_wh[0] - image_bgr.shape[1], self._enc_wh[1] - image_bgr.shape[0]
            image_bgr = cv2.copyMakeBorder(image_bgr, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        # OpenCV's colour conversion is cheaper than FFmpeg's swscale from bgr24 (1.7 vs 2.4 ms per frame).
        yuv: Any = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420)  # uint8, (h * 3/2, w)
        frame = self._av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        self._mux(frame)

    def _mux(self, frame: Any) -> None:
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (OSError, ValueError, self._av.FFmpegError) as err:
            raise OutputError(f"{self._what} could not be written: {_reason(err)}") from err

    def close(self, *, flush: bool = True) -> None:
        if self._file is None:
            return
        try:
            if flush:
                self._mux(None)
            self._container.close()
        except (OSError, ValueError, self._av.FFmpegError) as err:
            if flush:
                raise OutputError(f"{self._what} could not be written: {_reason(err)}") from err
        finally:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()


def _reason(err: BaseException) -> str:
    # PyAV wraps the Python file's OSError; say "No space left on device", not the FFmpeg call.
    inner = err.__context__ if isinstance(err.__context__, OSError) else err
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return str(err)


class _CvWriter:
    """OpenCV's VideoWriter (FourCC codecs such as mp4v): the MP4 index is written only on close."""

    def __init__(self, target: OutputFile, size_wh: tuple[int, int], fps: float, codec: str) -> None:
        self._path = _text_path(target.write_path, "output video", target.path)
        self._what = f"output video '{target.path}'"
        self.size_wh = size_wh
        self.frames = 0
        self._writer: cv2.VideoWriter | None = cv2.VideoWriter(
            self._path, cv2.VideoWriter.fourcc(*codec), fps, size_wh)
        if not self._writer.isOpened():
            self._writer = None
            raise OutputError(f"{self._what} could not be written: codec {codec!r} or container "
                              f"'{target.path.suffix}' not supported by OpenCV")

    def write(self, image_bgr: np.ndarray) -> None:
        self._writer.write(image_bgr)  # type: ignore[union-attr]  # VideoRecorder never writes after close
        self.frames += 1

    def close(self, *, flush: bool = True) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if flush and self.frames:
            # OpenCV reports no write error: read the index back (cheap) to catch a full disk.
            cap = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            cap.release()
            if n != self.frames:
                raise OutputError(f"{self._what} could not be written: the file holds {n} of {self.frames} "
                                  f"frames (disk full?)")


class VideoRecorder:
    """The annotated video at the source's size and frame rate.

    Args:
        path: Final name (``.mp4``, ``.mov``, ``.mkv``, ``.avi``).
        size_wh: Frame size; frames of another size (a camera after a reconnect) are resized.
        fps: Frame rate.
        codec: ``h264`` or ``mpeg4`` (PyAV, fragmented: playable after a crash) or an OpenCV FourCC.

    Raises:
        OutputError: The file cannot be written, is being written by another run, or the codec
            does not fit the container.
    """

    def __init__(self, path: Path, size_wh: tuple[int, int], fps: float, codec: str = "mpeg4") -> None:
        self._target = OutputFile(path, "output video")
        self.path = self._target.path
        self.size_wh = size_wh
        self.frames = 0
        self.published = False
        self._failed = False
        self._closed = False
        self._fps, self._codec = fps, codec
        self._impl: _AvWriter | _CvWriter | None = None
        if 0 not in size_wh:  # else the first frame gives the size (some streams say it only then)
            self._impl = self._open_impl(size_wh)

    def _open_impl(self, size_wh: tuple[int, int]) -> _AvWriter | _CvWriter:
        try:
            return (_AvWriter(self._target, size_wh, self._fps, self._codec) if self._codec in PYAV_CODECS
                    else _CvWriter(self._target, size_wh, self._fps, self._codec))
        except BaseException:
            self._closed = True
            self._target.discard(keep=False)
            raise

    def write(self, image_bgr: np.ndarray) -> None:
        """Append one frame.

        Raises:
            OutputError: The disk is full or the file cannot be written.
        """
        if self._closed:
            raise OutputError(f"output video '{self.path}' written after close")
        if self._impl is None:
            self.size_wh = (image_bgr.shape[1], image_bgr.shape[0])
            self._impl = self._open_impl(self.size_wh)
        if (image_bgr.shape[1], image_bgr.shape[0]) != self.size_wh:
            # A live source may change resolution after a reconnect; keep the file consistent.
            image_bgr = cv2.resize(image_bgr, self.size_wh)
        try:
            self._impl.write(image_bgr)
        except OutputError:
            self._failed = True
            raise
        self.frames += 1

    def close(self) -> None:
        """Finalise the video and give it its final name (idempotent).

        A video without frames, or one whose writing failed, is not published: an earlier
        file with the final name stays as it was.

        Raises:
            OutputError: The last frames could not be written; the final name is left untouched.
        """
        if self._failed or self.frames == 0:
            self.abort()
            return
        if self._closed or self._impl is None:
            return
        self._closed = True
        impl, self._impl = self._impl, None
        try:
            impl.close()
        except BaseException:
            self._target.discard(keep=self.frames > 0)
            raise
        self._target.commit()
        self.published = True

    def abort(self) -> None:
        """End after a failure: the final name keeps what it held; frames written stay in the partial file."""
        if self._closed:
            return
        self._closed = True
        impl, self._impl = self._impl, None
        try:
            if impl is not None:
                impl.close()
        except OutputError as err:
            log.debug("%s", err)
        finally:
            self._target.discard(keep=self.frames > 0)

    def __enter__(self) -> VideoRecorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ImageWriter:
    """The annotated still image (image mode)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._ext = self.path.suffix.lower()
        if not self._ext.isascii() or not cv2.haveImageWriter(f"x{self._ext}"):
            kind = f"'{self._ext}' files" if self._ext.isascii() and self._ext else "files of this name"
            raise OutputError(f"output image {str(path)!a}: OpenCV cannot write {kind}")
        self._target: OutputFile | None = OutputFile(self.path, "output image")
        self.frames = 0
        self.published = False

    def write(self, image_bgr: np.ndarray) -> None:
        """Encode and write the image (to the partial file, published by ``close``).

        Raises:
            OutputError: Encoding or writing failed.
        """
        if self._target is None:
            raise OutputError(f"output image '{self.path}' written after close")
        ok, data = cv2.imencode(self._ext, image_bgr)
        if not ok:
            raise OutputError(f"output image '{self.path}' could not be encoded as '{self._ext}'")
        try:
            with open(self._target.write_path, "wb") as f:
                f.write(data.tobytes())
        except OSError as err:
            raise OutputError(f"output image '{self.path}' could not be written: {err.strerror or err}") from err
        self.frames += 1

    def close(self) -> None:
        """Give the image its final name (idempotent)."""
        if self._target is not None:
            target, self._target = self._target, None
            if self.frames:
                target.commit()
                self.published = True
            else:
                target.discard(keep=False)

    def abort(self) -> None:
        """End after a failure: an earlier file with the final name is left as it was."""
        if self._target is not None:
            target, self._target = self._target, None
            target.discard(keep=False)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def event_record(result: FrameResult, labels: Sequence[str], *, uncertain_below: float = 0.0,
                 heads: Sequence[tuple[str, Sequence[str]]] = ()) -> dict:
    """The event-log line of one frame (boxes in source pixels).

    A face's ``label`` is :func:`stream.labels.face_label`'s: ``uncertain`` when its
    top probability is below ``uncertain_below``, ``too_small`` for a face too small to
    classify; its ``probs`` are always all there. Each extra head of the classifier
    (``heads``: the contract's) is a key of its own: ``"valence_arousal": {"valence": 0.2, ...}``.
    """
    head_parts = dict(heads)
    faces = []
    for face in result.faces:
        # (tolist: plain floats at once, not one NumPy scalar per number)
        faces.append({
            "id": face.id,
            "box_xyxy": [round(v, 1) for v in face.box_xyxy.tolist()],
            "score": round(face.score, 4),
            "label": face_label(face.probs, labels, uncertain_below, too_small=face.too_small),
            "probs": {label: round(p, 4) for label, p in zip(labels, face.probs.tolist(), strict=True)},
            "keypoints_xy": [[round(x, 1), round(y, 1)] for x, y in face.keypoints_xy.tolist()],
        })
        for name, values in face.heads.items():  # the classifier's extra heads, by the contract's names
            faces[-1][name] = {part: round(v, 4) for part, v in zip(head_parts[name], values.tolist(), strict=True)}
    return {
        "source": result.frame.source,
        "source_id": result.frame.source_id,
        "frame": result.frame.index,
        "t": round(result.frame.t_media_s, 4),
        "latency_ms": round(result.latency_ms, 2),
        "faces": faces,
    }


def frame_event(result: FrameResult, labels: Sequence[str], *, uncertain_below: float = 0.0,
                heads: Sequence[tuple[str, Sequence[str]]] = ()) -> dict:
    """The event record of ``result`` (:func:`event_record`), built once per frame and shared by every
    output that shows it (the event log, the dashboard, MQTT, a fleet's driver): the first call
    builds it and keeps it in ``result.event``, the others get the same dict."""
    if result.event is None:
        result.event = event_record(result, labels, uncertain_below=uncertain_below, heads=heads)
    return result.event


_FACE_KEYS = {"id", "box_xyxy", "score", "label", "probs", "keypoints_xy"}


def result_of_event(record: dict, now_s: float) -> FrameResult:
    """A :class:`FrameResult` rebuilt from its event record (:func:`event_record`), without the pixels,
    so the sinks of a pipeline also serve where only records arrive (a fleet's driver).

    Each face's ``probs`` come in the record's order, which :func:`event_record` writes in the
    classifier's label order. The image is empty (0x0), ``t_done_s`` is ``now_s`` and the capture
    time is set back by the record's latency; ``result.event`` is the record itself, so every sink
    shows the same line.
    """
    faces = []
    for f in record["faces"]:
        faces.append(Face(
            box_xyxy=np.asarray(f["box_xyxy"], np.float32), score=float(f["score"]),
            probs=np.asarray(list(f["probs"].values()), np.float32), id=int(f["id"]),
            keypoints_xy=np.asarray(f["keypoints_xy"], np.float32).reshape(-1, 2), too_small=f["label"] == TOO_SMALL,
            heads={k: np.asarray(list(v.values()), np.float32) for k, v in f.items() if k not in _FACE_KEYS}))
    latency_s = float(record.get("latency_ms", 0.0)) / 1000.0
    frame = Frame(str(record["source"]), int(record["frame"]), float(record["t"]), now_s - latency_s,
                  np.zeros((0, 0, 3), np.uint8), int(record.get("source_id", 0)))
    return FrameResult(frame, faces, now_s, event=record)


class EventLog:
    """JSON Lines, one line per processed frame, in order; each line flushed, so a crash loses at most one.

    A FIFO or character device (``/dev/stdout``) is written in place; a file is published on ``close``.

    Raises:
        OutputError: The file cannot be written or is being written by another run.
    """

    def __init__(self, path: Path) -> None:
        self._target = OutputFile(path, "event log", allow_stream=True)
        self.path = self._target.path
        self.lines = 0
        self.published = False
        self._failed = False
        try:
            self._file: IO[str] | None = open(  # noqa: SIM115
                self._target.write_path, "w", encoding="utf-8", buffering=1)
        except OSError as err:
            self._target.discard(keep=False)
            raise OutputError(f"event log '{path}' could not be written: {err.strerror or err}") from err

    def write_record(self, record: dict) -> None:
        """Append one line.

        Raises:
            OutputError: The disk is full or the file cannot be written.
        """
        if self._file is None:
            raise OutputError(f"event log '{self.path}' written after close")
        try:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as err:
            self._failed = True
            raise OutputError(f"event log '{self.path}' could not be written: {err.strerror or err}") from err
        self.lines += 1

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def close(self) -> None:
        """Flush, close and give the log its final name (idempotent).

        A log without lines, or one whose writing failed, is not published.

        Raises:
            OutputError: The last lines could not be written; the final name is left untouched.
        """
        if self._failed or (self.lines == 0 and not self._target.direct):
            self.abort()
            return
        if self._file is None:
            return
        try:
            self._close_file()
        except OSError as err:
            self._target.discard(keep=self.lines > 0)
            raise OutputError(f"event log '{self.path}' could not be written: {err.strerror or err}") from err
        self._target.commit()
        self.published = True

    def abort(self) -> None:
        """End after a failure: an earlier file with the final name is left as it was."""
        if self._file is None:
            return
        try:
            self._close_file()
        except OSError:
            pass
        finally:
            self._target.discard(keep=self.lines > 0)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
