"""The DNS package's public surface: fails when ``__all__`` drifts from what is importable."""

from __future__ import annotations

import proscribe.agent.sensors.dns as dns_sensors

EXPECTED = {
    "CANARY",
    "Attribution",
    "Decide",
    "DnsCapture",
    "DnsMessageFacts",
    "DnsObservation",
    "DnsProxy",
    "DnsSensor",
    "DnsSensorUnavailable",
    "DnsSettings",
    "MalformedDnsMessage",
    "NameVerdict",
    "ObservationSink",
    "ProcessAttributor",
    "ProcessRef",
    "blocked_response",
    "build_dns_sensor",
    "open_sender_map",
    "parse_host_port",
    "parse_message",
    "system_upstreams",
}


def test_public_names() -> None:
    assert set(dns_sensors.__all__) == EXPECTED
    for name in dns_sensors.__all__:
        assert hasattr(dns_sensors, name), name
