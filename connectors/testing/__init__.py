"""The connector conformance kit (a pytest plugin shipped with textback).

A connector's whole conformance test is one line in its test module::

    from connectors.testing import conformance_suite
    from my_connector.kit import MyKit

    TestMyConnectorConformance = conformance_suite(MyKit())

``MyKit`` subclasses :class:`ConnectorKit` and tells the kit how to start the connector's
emulator, configure the connector against it, and count the records it holds.
"""

from connectors.testing.kit import ConnectorKit, conformance_suite

__all__ = ["ConnectorKit", "conformance_suite"]
