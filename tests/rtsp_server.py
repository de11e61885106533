"""A live RTSP camera for tests and benchmarks, served by GStreamer's RTSP server.

Run it with the *system* Python (``/usr/bin/python3``): PyGObject and the
GStreamer typelibs come from Debian packages and do not import in a venv::

    /usr/bin/python3 tests/rtsp_server.py --port 0 --path /cam --clip clip.mp4 --fps 30

The frames (a clip decoded once into memory, or ``videotestsrc``) are pushed
at ``--fps`` by a clock-driven thread into ``appsrc is-live=true``, so the
stream behaves like a camera: frames exist only when they are sent, a slow
reader misses them, and the clip loops forever. Every frame carries a *stamp*
in its top rows: a 64-bit barcode of the wall-clock send time (ms) and a
sequence number, which :func:`read_stamp` decodes on the client side to measure
true end-to-end frame age and to detect a frame delivered twice.

Prints ``READY <port>`` on stdout once serving; exits cleanly on SIGTERM/SIGINT.

This module also imports without ``gi`` (``read_stamp`` only needs NumPy), so
the venv's tests and benchmark can use it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

__all__ = ["STAMP_BITS", "read_stamp"]

#: Bits in a frame stamp: 40 bits of wall-clock milliseconds, 24 bits of sequence number.
STAMP_BITS = 64
_TIME_BITS = 40
_STAMP_ROWS = 16
_DARK, _LIGHT = 16, 235


def _stamp_cell_px(width: int) -> int:
    return width // STAMP_BITS


def _stamp_value(t_unix_ms: int, seq: int) -> int:
    return ((t_unix_ms % (1 << _TIME_BITS)) << 24) | (seq % (1 << 24))


def stamp_i420(frame: bytearray, width: int, height: int, t_unix_ms: int, seq: int) -> None:
    """Draw the stamp into an I420 frame in place (luma bars, neutral chroma)."""
    cell = _stamp_cell_px(width)
    value = _stamp_value(t_unix_ms, seq)
    row = bytearray(width)
    for bit in range(STAMP_BITS):
        on = (value >> (STAMP_BITS - 1 - bit)) & 1
        row[bit * cell : (bit + 1) * cell] = bytes([_LIGHT if on else _DARK]) * cell
    for y in range(_STAMP_ROWS):
        frame[y * width : (y + 1) * width] = row
    chroma_w = width // 2
    u_off = width * height
    v_off = u_off + chroma_w * (height // 2)
    for off in (u_off, v_off):
        frame[off : off + chroma_w * (_STAMP_ROWS // 2)] = b"\x80" * (chroma_w * (_STAMP_ROWS // 2))


def read_stamp(image_bgr) -> tuple[int, int] | None:
    """Decode the stamp of a received BGR frame.

    Args:
        image_bgr: HxWx3 uint8 frame as read by OpenCV.

    Returns:
        ``(t_unix_ms, seq)`` where ``t_unix_ms`` is the send time in Unix milliseconds
        (reconstructed from its low 40 bits against the local clock), or None when the
        frame carries no readable stamp.
    """
    import numpy as np

    width = image_bgr.shape[1]
    cell = _stamp_cell_px(width)
    if cell < 2 or image_bgr.shape[0] < _STAMP_ROWS:
        return None
    band = image_bgr[4 : _STAMP_ROWS - 4, : cell * STAMP_BITS].mean(axis=(0, 2))
    cells = band.reshape(STAMP_BITS, cell)[:, cell // 4 : cell - cell // 4].mean(axis=1)
    mid = (_DARK + _LIGHT) / 2
    if np.any(np.abs(cells - mid) < (_LIGHT - _DARK) / 4):  # a smeared bar: not a stamp
        return None
    value = 0
    for on in cells > mid:
        value = (value << 1) | int(on)
    low_ms, seq = value >> 24, value & 0xFFFFFF
    now_ms = int(time.time() * 1000)
    period = 1 << _TIME_BITS
    t_ms = now_ms - ((now_ms - low_ms) % period)
    return t_ms, seq


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 64 or h < 32 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"--size must be even and at least 64x32, got {text!r}")
    return w, h


def _load_frames(Gst, args: argparse.Namespace) -> list[bytes]:
    """Decode the clip (or a test pattern) once into I420 frames of the requested size."""
    w, h = args.size
    caps = f"video/x-raw,format=I420,width={w},height={h},pixel-aspect-ratio=1/1"
    if args.clip:
        src = f'filesrc location="{args.clip}" ! decodebin ! videoconvert ! videoscale'
    else:
        src = f"videotestsrc pattern=ball num-buffers={args.testsrc_frames} ! videoconvert ! videoscale"
    pipe = Gst.parse_launch(f"{src} ! {caps} ! appsink name=sink sync=false max-buffers=0")
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    while len(frames) < args.max_frames:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            frames.append(bytes(info.data))
            buf.unmap(info)
    pipe.set_state(Gst.State.NULL)
    if not frames:
        raise SystemExit(f"rtsp_server: no frames could be decoded from {args.clip or 'videotestsrc'}")
    return frames


class _Feeder:
    """Pushes frames into the appsrc of each prepared media at the frame rate."""

    def __init__(self, Gst, frames: list[bytes], args: argparse.Namespace) -> None:
        self.Gst = Gst
        self.frames = frames
        self.width, self.height = args.size
        self.fps = args.fps
        self.stamp = not args.no_stamp
        self.lock = threading.Lock()
        self.sources: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def on_media_configure(self, _factory, media) -> None:
        appsrc = media.get_element().get_by_name("src")
        with self.lock:
            self.sources.append(appsrc)
        media.connect("unprepared", self._on_unprepared, appsrc)

    def _on_unprepared(self, _media, appsrc) -> None:
        with self.lock:
            if appsrc in self.sources:
                self.sources.remove(appsrc)

    def _run(self) -> None:
        Gst = self.Gst
        period = 1.0 / self.fps
        t_next = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            delay = t_next - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            t_next += period
            if time.monotonic() - t_next > 1.0:  # fell far behind (suspended): do not burst
                t_next = time.monotonic()
            with self.lock:
                targets = list(self.sources)
            if not targets:
                continue
            data = bytearray(self.frames[seq % len(self.frames)])
            if self.stamp:
                stamp_i420(data, self.width, self.height, int(time.time() * 1000), seq)
            seq += 1
            for appsrc in targets:
                buf = Gst.Buffer.new_wrapped(bytes(data))
                buf.duration = int(Gst.SECOND * period)
                appsrc.emit("push-buffer", buf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554, help="0 picks a free port (printed)")
    parser.add_argument("--path", default="/stream")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--clip", help="video file to loop forever")
    source.add_argument("--testsrc", action="store_true", help="moving test pattern (the default)")
    parser.add_argument("--size", type=_parse_size, default=(640, 480), help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--max-frames", type=int, default=600, help="frames of the clip kept in memory")
    parser.add_argument("--testsrc-frames", type=int, default=60)
    parser.add_argument("--no-stamp", action="store_true", help="do not draw the time/sequence barcode")
    parser.add_argument("--bitrate-kbps", type=int, default=2000)
    args = parser.parse_args(argv)
    if bool(args.user) != bool(args.password):
        parser.error("--user and --password go together")

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    frames = _load_frames(Gst, args)
    w, h = args.size
    fps_frac = f"{round(args.fps * 1000)}/1000"
    launch = (
        f"( appsrc name=src is-live=true do-timestamp=true format=time "
        f"caps=video/x-raw,format=I420,width={w},height={h},framerate={fps_frac} "
        f"! queue max-size-buffers=2 leaky=downstream "
        f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={args.bitrate_kbps} "
        f"key-int-max={max(1, round(args.fps))} "
        f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    feeder = _Feeder(Gst, frames, args)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.connect("media-configure", feeder.on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", args.user)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        role = Gst.Structure.new_from_string(
            f"{args.user}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(role)
    server.get_mount_points().add_factory(args.path, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        print(f"rtsp_server: could not listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    def _quit(*_: object) -> bool:
        loop.quit()
        return False

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, _quit)
    feeder.thread.start()
    print(f"READY {server.get_bound_port()}", flush=True)
    try:
        loop.run()
    finally:
        feeder.stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
