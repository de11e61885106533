"""Camera passwords from the environment, so they never appear on a command line.

A password in the SOURCE argument (``rtsp://admin:secret@cam/stream``) is visible to
every user of the machine in ``ps``. Give the user name only and put the password
in the environment of the emostream process:

    EMOSTREAM_PASSWORD_<HOST>=secret emostream run rtsp://admin@cam.local/stream
    EMOSTREAM_PASSWORD=secret        emostream run rtsp://admin@192.168.1.20/stream

``<HOST>`` is the URL's host in capitals with every character other than a letter
or digit replaced by ``_`` (``cam.local`` -> ``EMOSTREAM_PASSWORD_CAM_LOCAL``,
``192.168.1.20`` -> ``EMOSTREAM_PASSWORD_192_168_1_20``); the per-host variable wins
over ``EMOSTREAM_PASSWORD``. A URL that already holds a password, or holds no user
name, is left as it is. Messages, logs, the event log and window titles show the URL
without the password (:func:`stream.redact.redact_url`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["PASSWORD_ENV", "password_variable", "with_password"]

#: The variable read when no per-host variable is set.
PASSWORD_ENV = "EMOSTREAM_PASSWORD"


def password_variable(host: str) -> str:
    """The per-host variable: ``cam.local`` -> ``EMOSTREAM_PASSWORD_CAM_LOCAL``."""
    return f"{PASSWORD_ENV}_{re.sub(r'[^A-Za-z0-9]', '_', host).upper()}"


def with_password(url: str, environ: Mapping[str, str] | None = None) -> str:
    """``url`` with the password from the environment inserted after its user name.

    Args:
        url: ``scheme://user@host[:port]/...``.
        environ: The environment (default ``os.environ``).

    Returns:
        ``scheme://user:password@host/...``, or ``url`` unchanged when it has no user
        name, already has a password, or no variable is set.
    """
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" in userinfo or not userinfo:
        return url
    password = env.get(password_variable(parts.hostname or "")) or env.get(PASSWORD_ENV)
    if not password:
        return url
    # As typed in a URL: FFmpeg splits the user info at the last '@' and the first ':'.
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{password}@{hostport}"))
