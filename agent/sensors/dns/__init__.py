"""DNS sensors: passive capture (Linux) and an enforcing resolver proxy (everywhere).

Public surface; everything else in this package is an implementation detail.
"""

from proscribe.agent.sensors.dns.attribution import Attribution, ProcessAttributor
from proscribe.agent.sensors.dns.capture import DnsCapture
from proscribe.agent.sensors.dns.message import DnsMessageFacts, MalformedDnsMessage, parse_message
from proscribe.agent.sensors.dns.observation import (
    Decide,
    DnsObservation,
    NameVerdict,
    ObservationSink,
)
from proscribe.agent.sensors.dns.proxy import CANARY, DnsProxy, blocked_response
from proscribe.agent.sensors.dns.sensor import (
    DnsSensor,
    DnsSensorUnavailable,
    DnsSettings,
    build_dns_sensor,
    open_sender_map,
    parse_host_port,
    system_upstreams,
)
from proscribe.agent.sensors.enrich import ProcessRef

__all__ = [
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
]
