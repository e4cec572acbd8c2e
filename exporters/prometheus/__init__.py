"""The prometheus exporter: ``/metrics`` for Prometheus to scrape, and the agent's health
and operator endpoints on the same listener.

- ``config``: its settings;
- ``listener``: the accept loop that cannot starve the agent;
- ``exposition``: a scrape's copy of the state and the text built from it;
- ``views``: ``/status`` and ``/tap``;
- ``exporter``: the exporter that ties them together.
"""

from exporters.prometheus.config import PrometheusConfig
from exporters.prometheus.exporter import PrometheusExporter

__all__ = ["PrometheusConfig", "PrometheusExporter"]
