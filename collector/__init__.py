"""Proscribe collector: FastAPI service, storage, dashboard (the ``collector`` extra)."""
