"""``proscribe agent check``: every check ``agent run`` makes before it starts, and nothing else.

Installers run it (from the environment they just built) against the configuration they are
about to install, so a host is never handed a config its agent refuses: the same loader, the
same trusted-key parsing, the same collector-URL rule (plain http only to loopback, https
with a CA file) and a readable enroll secret. Nothing is started, created or contacted.

Exit 0 with one ``ok:`` line; 2 with the agent's own one-line message otherwise. The policy
file is not judged here: ``proscribe policy verify`` does that (the agent starts without a
valid policy and reports the rejection).
"""

from __future__ import annotations

import argparse
from typing import Any

from proscribe.agent.config import AgentConfig, load_agent_config
from proscribe.core.errors import ConfigError

__all__ = ["check_agent_config", "cmd_check"]


def check_agent_config(config: AgentConfig) -> str:
    """Raise the ConfigError ``agent run`` would raise; else one line saying what was checked."""
    from proscribe.agent.daemon import load_trust
    from proscribe.agent.reporter import check_collector_url
    from proscribe.agent.reporter.identity import check_secret_file_private

    trust = load_trust(config)
    parts = [
        f"mode {config.agent.mode}",
        f"{len(trust.keys)} trusted key{'s' if len(trust.keys) != 1 else ''} "
        f"(threshold {trust.threshold})",
    ]
    collector = config.collector
    if collector is None:
        parts.append("no collector (events stay in the spool)")
    else:
        try:
            check_collector_url(collector.url, collector.ca_file)
        except ConfigError as err:
            raise ConfigError(f"{config.source}: {err}") from err
        secret = collector.enroll_secret_file
        if secret is not None:
            try:
                readable = bool(secret.read_bytes().strip())
            except OSError as err:
                raise ConfigError(
                    f"{config.source}: collector.enroll_secret_file {secret}: cannot read it: "
                    f"{err.strerror} (fix: install the enroll secret there, mode 0600)"
                ) from err
            if not readable:
                raise ConfigError(
                    f"{config.source}: collector.enroll_secret_file {secret} is empty "
                    "(fix: write the secret from 'proscribe collector enroll-secret create')"
                )
            try:
                check_secret_file_private(secret)  # agent run refuses a secret others can read
            except ConfigError as err:
                raise ConfigError(f"{config.source}: {err}") from err
        parts.append(f"collector {collector.url}")
    parts.append(f"state dir {config.state_dir}")
    return f"ok: {config.source}: {', '.join(parts)}"


def cmd_check(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    print(check_agent_config(config))
    return 0


def register_check(verbs: Any, config_arg: Any) -> None:
    check = verbs.add_parser(
        "check",
        help="check the config as 'agent run' would, without starting anything",
        description="Load the config, the trusted keys, the collector URL (and its CA) and the "
        "enroll secret exactly as 'agent run' does. Exit 0 when it would start, 2 otherwise.",
    )
    config_arg(check)
    check.set_defaults(func=cmd_check)
