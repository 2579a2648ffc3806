"""pytest plugin entry point (``pytest11``): makes the conformance kit importable in any project."""

from connectors.testing.kit import ConnectorKit, conformance_suite

__all__ = ["ConnectorKit", "conformance_suite"]
