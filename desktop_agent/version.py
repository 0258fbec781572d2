"""The agent's version, reported in initialize and system_info (one source: `spec.version`)."""

from spec.version import VERSION as AGENT_VERSION

__all__ = ["AGENT_VERSION"]
