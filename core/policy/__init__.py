"""The policy core: TOML model, signature envelope, trust, compiled matchers.

Nothing in this package touches sockets or processes. The parsing, verification and matching
work on bytes and objects; files are touched only by the functions and classes that say so and
take their paths as arguments: the ``load_*``/``read_*`` functions read, ``keys.generate_keypair``
writes a key pair (never over an existing file), ``state.save_state`` and ``bundle.PolicyStore``
keep the accepted policy and the anti-rollback state in the directory they are given, and
``trustchain``'s store keeps the accepted trust versions in its directory. Every replacement of
a file goes through :func:`proscribe.core.fs.atomic_write`.
"""
