"""The http exporter: records POSTed to a backend in one of four formats (``formats/``).

``exporter`` is the exporter (batching and the linger), ``config`` its options, ``auth``
its headers and secrets, ``sender`` one request's delivery (retries, 413 splits, ``_bulk``
items), ``deadletter`` the dead-letter file and ``compress`` the gzip of request bodies.
"""

from exporters.http.exporter import HttpExporter

__all__ = ["HttpExporter"]
