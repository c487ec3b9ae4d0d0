"""Where local model runtimes keep their models, per user and system-wide (documented layouts).

:func:`user_stores` takes one user's home and environment (the environment of that user's own
processes where the agent can read it: ``HF_HOME`` and ``OLLAMA_MODELS`` are often set there and
nowhere else) and lists the directories to watch; :data:`SYSTEM_STORES` are the system services'
stores. Nothing here touches the file system; callers keep the directories that exist.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ENV_KEYS", "SWEPT_ONLY", "SYSTEM_STORES", "user_stores"]

# Variables read from a user's processes that move a store.
ENV_KEYS = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "OLLAMA_MODELS",
    "LLAMA_CACHE",
    "LMSTUDIO_HOME",
    "RAMALAMA_STORE",
    "VLLM_CACHE_ROOT",
)

SYSTEM_STORES: tuple[tuple[str, str], ...] = (
    ("/usr/share/ollama/.ollama/models", "Ollama (system service)"),
    ("/var/lib/ollama", "Ollama (system service)"),
    ("/var/lib/ramalama", "ramalama (root)"),
    ("/var/lib/docker/volumes/docker-model-runner-models/_data", "Docker Model Runner"),
    ("/root/.cache/huggingface", "Hugging Face cache (root)"),
)

# Where models are put by hand (`vllm serve /srv/models/x`): swept, not watched (a recursive
# watch of /opt could use up the inotify watches); a program loading from them is seen by what
# it maps.
SWEPT_ONLY: tuple[tuple[str, str], ...] = (("/srv", "/srv"), ("/opt", "/opt"))


def user_stores(home: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(directory, what)`` for one user; duplicates removed, order kept."""
    home = home.rstrip("/") or "/"
    xdg_cache = env.get("XDG_CACHE_HOME") or f"{home}/.cache"
    xdg_data = env.get("XDG_DATA_HOME") or f"{home}/.local/share"
    found: list[tuple[str, str]] = []
    hf_home = env.get("HF_HOME") or f"{xdg_cache}/huggingface"
    found.append((hf_home, "Hugging Face cache"))
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        if env.get(key):
            found.append((env[key], "Hugging Face cache"))
    found.append((env.get("OLLAMA_MODELS") or f"{home}/.ollama/models", "Ollama"))
    found.append((env.get("LMSTUDIO_HOME") or f"{home}/.lmstudio", "LM Studio"))
    found.append((f"{xdg_cache}/lm-studio", "LM Studio (old layout)"))
    found.append((env.get("LLAMA_CACHE") or f"{xdg_cache}/llama.cpp", "llama.cpp"))
    found.append((env.get("RAMALAMA_STORE") or f"{xdg_data}/ramalama", "ramalama"))
    found.append((env.get("VLLM_CACHE_ROOT") or f"{xdg_cache}/vllm", "vLLM"))
    found.append((f"{home}/.docker/models", "Docker Model Runner"))
    found.append((f"{xdg_cache}/gpt4all", "GPT4All"))
    found.append((f"{xdg_data}/nomic.ai/GPT4All", "GPT4All"))
    found.append((f"{home}/.local/share/jan", "Jan"))
    found.append((f"{home}/jan", "Jan"))
    seen: set[str] = set()
    out = []
    for path, what in found:
        path = path.rstrip("/")
        if path and path.startswith("/") and path not in seen:
            seen.add(path)
            out.append((path, what))
    return out
