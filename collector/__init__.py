"""The Proscribe collector (the ``collector`` extra): FastAPI service, storage, dashboard.

The collector builds on :mod:`proscribe.core` and never imports the agent or the CLI; its
composition root is :func:`proscribe.collector.app.create_app`.
"""
