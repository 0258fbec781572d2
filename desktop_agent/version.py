"""The agent's version, reported in initialize and system_info."""

AGENT_VERSION = "0.1.0"
