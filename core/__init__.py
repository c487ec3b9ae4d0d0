"""The shared core of Proscribe: what the agent, the collector and the CLI all speak.

* :mod:`proscribe.core.policy` — the policy format (TOML model, loader, lint checks), signatures
  and trust (DSSE envelope, M-of-N, rotation, anti-rollback state) and the compiled matchers;
* :mod:`proscribe.core.events` — the event schema both ends validate against;
* :mod:`proscribe.core.wire` — how an agent signs its requests and the collector checks them;
* :mod:`proscribe.core.errors` — the error hierarchy every user-facing message comes from.

The core imports neither the agent nor the collector (``lint-imports`` checks it in CI).
"""

__version__ = "0.1.0"
