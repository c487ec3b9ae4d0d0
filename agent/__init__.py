"""The Proscribe endpoint agent: sensors, enforcement, the durable spool and the reporter.

The agent builds on :mod:`proscribe.core` and never imports the collector or the CLI; its
composition root is :func:`proscribe.agent.daemon.build`.
"""
