"""Delivery: the fan-out to exporters (``pipeline``), one bounded queue (``queue``) and one
owner (``runner``) per exporter, the optional disk buffer (``buffer``) and the checkpoint
file of delivered positions (``checkpoint``)."""
