"""Metrics: per-container state and counters (``inventory``), stats readings from cgroup
files or the engine (``stats``, ``cgroup``), and the Prometheus collectors that read them at
scrape time (``collectors``)."""
