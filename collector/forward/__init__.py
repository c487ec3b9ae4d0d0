"""Forwarding stored events to syslog, webhooks and Splunk HEC (``[[forward]]`` tables).

* ``settings`` — the ``[[forward]]`` schema and checked settings
* ``store``    — cursor, lease, counts, dead letters (tables ``forward_state``,
  ``forward_dead_letters``)
* ``runner``   — one thread per destination: lease, batch, render, send, advance
* ``render``   — the event as a dict, its summary line, its ECS document
* ``syslog``, ``webhook``, ``splunk`` — one module per kind
* ``status``   — lag, counts and errors for /metrics, the Admin page and the CLI
"""
