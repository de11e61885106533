"""Observers of a running pipeline that send its results elsewhere (see :class:`stream.pipeline.Observer`).

    stream.sinks.health   SourceHealth: up / down / ended, frame rate and reconnects of one source, live
    stream.sinks.mqtt     MqttPublisher: faces, episodes and health as JSON on an MQTT broker (the ``mqtt`` extra)

Nothing is imported here, so this package loads without the optional extras.
"""

from __future__ import annotations

__all__: list[str] = []
