"""container-agent: follows Docker containers' logs and events and ships them as records."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("container-agent")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
