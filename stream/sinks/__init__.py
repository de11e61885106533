"""Where a running pipeline's results go: one :class:`Sink` protocol, the sinks that follow it.

    stream.sinks.base     Sink: the protocol (on_start, on_result, on_source_end; wants_images, wants_stop)
    stream.sinks.files    SourceOutputs: one source's annotated video or image, event log and summary
    stream.sinks.window   WindowSink: the live window (a mosaic for several sources)
    stream.sinks.health   SourceHealth: up / down / ended, frame rate and reconnects of one source, live
    stream.sinks.mqtt     MqttPublisher: faces, episodes and health as JSON on an MQTT broker (the ``mqtt`` extra)
    stream.sinks.metrics  PipelineMetrics: Prometheus metrics per source (``prometheus-client``, the ``serve`` extra)
    stream.sinks.progress ProgressBar: the command line's progress bar

Sinks elsewhere, beside the service they feed: the dashboard's :class:`~stream.serve.state.Dashboard`,
the fleet's ``FleetTap``, the batch job's feeder and :class:`~stream.control.SourceControl`. Only the
protocol is imported here, so this package loads without the optional extras.
"""

from __future__ import annotations

from stream.sinks.base import Sink

__all__ = ["Sink"]
