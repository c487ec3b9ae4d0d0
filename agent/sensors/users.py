"""uid → account name, cached: a name lookup goes through NSS, which can be slow (LDAP, SSSD).

One :class:`UserNames` per reader, bounded (least recently used names are forgotten) and safe to
share between threads. A uid without an account is named by its number, as ``ps`` does, so an
event always says who ran the program.
"""

from __future__ import annotations

import pwd
import threading
from collections import OrderedDict

__all__ = ["UserNames"]


class UserNames:
    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._names: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()

    def name(self, uid: int | None) -> str:
        """The account name of ``uid``; its number when it has none; "" for ``None``."""
        if uid is None:
            return ""
        with self._lock:
            name = self._names.get(uid)
            if name is not None:
                self._names.move_to_end(uid)
                return name
        try:
            name = pwd.getpwuid(uid).pw_name  # outside the lock: NSS may take a while
        except KeyError:
            name = str(uid)
        with self._lock:
            self._names[uid] = name
            self._names.move_to_end(uid)
            while len(self._names) > self.capacity:
                self._names.popitem(last=False)
        return name

    def __len__(self) -> int:
        return len(self._names)
