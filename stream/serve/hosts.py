"""Which host names and addresses are this machine's loopback (no web framework needed to ask)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and every loopback address (127.0.0.0/8, ``::1``, ``::ffff:127.x.y.z``).

    Used twice with one meaning: ``serve --host`` bound to loopback needs no token, and then
    the dashboard answers only requests whose ``Host`` names a loopback host (DNS rebinding).
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
