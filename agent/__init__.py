"""container-agent: follows Docker containers' logs and events and ships them as records."""

# The one place the version is written: pyproject.toml reads it from here (dynamic), so
# the agent needs no importlib.metadata (20 ms and half a megabyte at every start).
__version__ = "0.1.0"
