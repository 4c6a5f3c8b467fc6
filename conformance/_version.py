"""The installed distribution's version (one source: pyproject.toml)."""

from importlib import metadata

try:
    __version__ = metadata.version("tunerspec")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
