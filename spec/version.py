"""The one version string of Cortex: read from the installed distribution's metadata (pyproject.toml's
`version`), so the server, the agent and the SDK report the same number and it is written in one place."""

from importlib import metadata

__all__ = ["VERSION"]

try:
    VERSION: str = metadata.version("cortex")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed (PYTHONPATH only)
    VERSION = "0+unknown"
