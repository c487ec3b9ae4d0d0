"""Pure policy core: TOML model, signature envelope, trust, compiled matchers.

Nothing in this package touches sockets or processes; files are read only by the explicit
``load_*`` functions, which take paths or bytes.
"""
