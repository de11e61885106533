"""Hiding credentials before a URL reaches a log line, an error or a window title.

Camera URLs carry passwords (``rtsp://admin:secret@10.0.0.5/stream``) and
some HTTP cameras take them as query parameters (``?user=admin&pwd=secret``).
Everything that shows a source to a person goes through :func:`redact_url`.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

# The authority ends at the first '/', '?', '#' or whitespace; FFmpeg splits user info at the
# *last* '@' before that, so a password may itself hold '@' (and ':').
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<password>[^/?#\s]*)@(?=[^@/?#\s]*(?:[/?#\s]|$))"
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pass|pwd|passphrase|secret|token|access_token|api_key|apikey|key|auth)=)"
    r"(?P<value>[^&;#\s'\"]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """Replace every password of every URL inside ``text`` with ``***``.

    The user name stays (it helps to tell cameras apart); a password in the user
    info (``scheme://user:password@host``) or in a query parameter named like a
    secret (``password``, ``pwd``, ``token``, ``key`` ...) does not. Text without
    a URL comes back unchanged.

    Args:
        text: Any string: a URL, a message or a log line holding URLs.

    Returns:
        The same text with the secrets replaced by ``***``.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@" if m["password"] else m[0], text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***" if m["value"] else m[0], text)
