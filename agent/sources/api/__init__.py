"""The logs-API source: ``GET /containers/{id}/logs`` (``source``) and its frame decoder
(``decoder``)."""
