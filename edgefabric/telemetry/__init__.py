"""Observability: Prometheus metrics per component, optional OpenTelemetry tracing, JSON logs.

- :mod:`.endpoint`: a stoppable ``/metrics`` HTTP endpoint over one registry;
- :mod:`.gateway`, :mod:`.agent`, :mod:`.store`: metric definitions of each component, fed by
  small hooks (callables) so the components never import ``prometheus_client`` themselves;
- :mod:`.tracing`: W3C trace context and spans; a no-op that never imports OpenTelemetry until
  :func:`.tracing.configure` turns it on;
- :mod:`.logs`: one JSON object per log line, carrying correlation and trace ids.

Every metric name is listed in the README's "Metrics" table.
"""

from __future__ import annotations

__all__: list[str] = []
