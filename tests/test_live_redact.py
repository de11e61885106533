"""Passwords in URLs never reach a person: stream.redact.redact_url."""

from __future__ import annotations

import pytest

from stream.redact import redact_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://admin:s3cret@cam.local", "rtsp://admin:***@cam.local"),
        ("rtsp://:s3cret@cam/x", "rtsp://:***@cam/x"),
        ("rtsp://admin:p@ss:w@rd@cam/x", "rtsp://admin:***@cam/x"),  # '@' in the password
        ("rtsp://admin:pa%40ss@cam/x?a=1", "rtsp://admin:***@cam/x?a=1"),
        ("source 'rtsp://u:pw@h/p': gave up", "source 'rtsp://u:***@h/p': gave up"),
        ("a http://u:one@h/x and rtmp://v:two@k/y", "a http://u:***@h/x and rtmp://v:***@k/y"),
        ("http://cam/video.cgi?user=admin&pwd=s3cret&res=hd", "http://cam/video.cgi?user=admin&pwd=***&res=hd"),
        ("http://cam/mjpg?password=s3cret", "http://cam/mjpg?password=***"),
        ("http://cam/snap?token=abc123", "http://cam/snap?token=***"),
        # Nothing to hide: unchanged.
        ("rtsp://admin@cam/x", "rtsp://admin@cam/x"),
        ("rtsp://admin:@cam/x", "rtsp://admin:@cam/x"),
        ("rtsp://cam:554/path@v2", "rtsp://cam:554/path@v2"),
        ("rtsp://127.0.0.1:8554/cam", "rtsp://127.0.0.1:8554/cam"),
        ("clip.mp4", "clip.mp4"),
        ("webcam 0", "webcam 0"),
        ("", ""),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_redact_is_idempotent() -> None:
    once = redact_url("rtsp://admin:s3cret@cam/x")
    assert redact_url(once) == once
