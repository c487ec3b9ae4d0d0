"""Data only: the policy packs shipped with Proscribe (no code lives here)."""
