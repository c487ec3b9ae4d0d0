"""Proscribe endpoint agent and the shared core (policy model, signatures, matchers, wire schema).

The agent never imports :mod:`proscribe.collector`; the collector may import
:mod:`proscribe.agent.policy`, :mod:`proscribe.agent.events` and :mod:`proscribe.agent.wire`.
"""

__version__ = "0.1.0"
