"""Local AI models: what a file is (:mod:`.identity`, :mod:`.gguf`) and where stores are
(:mod:`.stores`). Shared by the agent's model sensor, ``proscribe scan`` and the policy checks."""
