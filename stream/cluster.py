"""What emostream's Ray services share: the connection to a cluster and the actor base.

:func:`connect` joins the cluster at an address (or ``RAY_ADDRESS``, or starts a local Ray),
bounded in time; :class:`ModelActor` is the base of the batch workers
(:mod:`stream.batch.ray_workers`) and the fleet workers (:mod:`stream.fleet`): the models
loaded once per actor process, a failure to load them kept for the first call to report.
Imported only with ``--ray``; ``ray`` itself is imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from stream.config import Config
from stream.contract import printable
from stream.errors import ConfigError, StreamError

__all__ = ["NAMESPACE", "ModelActor", "connect"]

log = logging.getLogger(__name__)

#: The Ray namespace of every emostream actor.
NAMESPACE = "emostream"


class ModelActor:
    """The base of emostream's Ray actors: the models loaded once in the actor's process.

    Args:
        config: The driver's configuration (model paths absolute: actors run in other folders).

    Attributes:
        models: The loaded models (absent when loading failed).
        error: Why the models could not be loaded ("" when they were): the actor's first call reports it.
    """

    def __init__(self, config: Config) -> None:
        from stream.pipeline import load_models

        self.config = config
        self.error = ""
        try:
            self.models: Any = load_models(config)
        except StreamError as err:  # reported by the first call: the driver ends the run with this message
            self.error = str(err)

    def pid(self) -> int:
        """The actor's process id."""
        return os.getpid()

    def where(self) -> str:
        """``host:pid``, for health lines."""
        return f"{socket.gethostname()}:{os.getpid()}"


def _connect(address: str) -> bool:
    """``ray.init``: the given address, else ``RAY_ADDRESS``, else a new local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "configure_logging": False}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def _probe(address: str, timeout_s: float) -> None:
    """Fail at once when nothing listens at a ``host:port`` (or ``ray://host:port``) address.

    ``ray.init`` retries an unreachable cluster for minutes and ignores signals meanwhile.
    """
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in text:
        return  # "auto", "local", a bare host: left to Ray (still bounded by the timeout)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except TimeoutError:
        raise ConfigError(f"--ray: no answer from '{address}' within {timeout_s:g} s (ray.timeout_s)") from None
    except (OSError, ValueError, OverflowError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ConfigError(f"--ray: cannot reach Ray at '{address}': {why}") from None


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def connect(address: str | None, *, timeout_s: float = 30.0, interrupt: threading.Event | None = None) -> bool:
    """Connect to Ray for ``--ray [ADDRESS]`` (see :func:`_connect`). True if this call started a local Ray.

    Bounded, for a cluster's address: where nothing listens it fails at once, and a connection
    not made within ``timeout_s`` (``ray.timeout_s``) fails with one line; ``interrupt`` (Ctrl-C,
    SIGTERM) ends the wait with ``KeyboardInterrupt``. ``ray.init`` runs in a daemon thread for
    this: a hung one is left behind, it does not keep the process alive. A new local Ray (no
    address) is started on the calling thread.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached in time.
        KeyboardInterrupt: ``interrupt`` was set while waiting.
    """
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ConfigError("--ray needs Ray, which is not installed: pip install 'emostream[ray]'") from err
    target = address or os.environ.get("RAY_ADDRESS") or ""
    shown = printable(target)[:200]
    if target and target != "local":
        _probe(target, timeout_s)
    else:
        # A new local Ray: started on this thread. Its processes die with the thread that started
        # them (PR_SET_PDEATHSIG), so not on a helper thread; nothing remote to wait for either.
        # Ray replaces the SIGTERM handler with sys.exit: ours (Ctrl-C semantics) is put back.
        handler = signal.getsignal(signal.SIGTERM)
        try:
            return _connect(address or "")
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
            raise ConfigError(f"--ray: a local Ray could not start: "
                              f"{printable(str(err).splitlines()[0])[:200] if str(err) else type(err).__name__}"
                              ) from err
        finally:
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)
    result: dict[str, Any] = {}

    def init() -> None:
        try:
            result["started"] = _connect(address or "")
        except BaseException as err:  # handed to the waiting thread
            result["error"] = err

    # Off the main thread Ray sets no SIGTERM handler of its own (on it, it replaces ours with sys.exit),
    # and says so in a warning: not news to the user.
    logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)
    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        if interrupt is not None and interrupt.is_set():
            raise KeyboardInterrupt
        if time.monotonic() >= deadline:
            raise ConfigError(f"--ray: could not connect to Ray at '{shown}' within {timeout_s:g} s (ray.timeout_s)")
        thread.join(0.1)
    failure = result.get("error")
    if isinstance(failure, (ConnectionError, RuntimeError, ValueError, TimeoutError)):
        why = printable(str(failure).splitlines()[0])[:200] if str(failure) else type(failure).__name__
        raise ConfigError(f"--ray: could not connect to Ray at '{shown}': {why}") from failure
    if failure is not None:
        raise failure
    return bool(result.get("started"))
