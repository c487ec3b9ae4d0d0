"""The one seam between the reporter and the network: a pinned-CA ``requests.Session``.

- ``Session.trust_env = False``: ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, proxies and netrc
  from the environment are ignored, so nothing outside the agent's config can replace the pinned
  CA (psf/requests #2998: with trust_env on, the environment bundle wins over ``verify=``).
- ``verify=`` the configured CA file on every call; an https URL without one is a ConfigError.
- Every call has a (connect, read) timeout and an overall deadline while reading the body, and
  the response body is capped, so a stalled or endless server cannot hang the reporter.
- Plain ``http://`` is allowed only for a loopback collector (127.0.0.0/8, ::1, ``localhost``).
- Redirects are not followed: a signed request is bound to its path.

Network failures (refused, reset, TLS verification, timeouts) surface as :class:`TransportError`;
HTTP statuses are returned as a :class:`Reply` for the reporter to interpret.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from proscribe.core.errors import ConfigError
from proscribe.core.netaddr import is_loopback

log = logging.getLogger(__name__)

Signer = Callable[[str, str, bytes], dict[str, str]]
"""``(method, path_and_query, body_as_sent) -> headers`` (see ``proscribe.core.wire.auth``)."""

DEFAULT_TIMEOUT = (5.0, 30.0)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class TransportError(Exception):
    """The request did not get an HTTP answer (connection, TLS, timeout, oversized reply)."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers (case-insensitive lookups) and the raw body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or {} when it is not one."""
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def error(self) -> str | None:
        err = self.json().get("error")
        return str(err) if err is not None else None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)


def _reason(err: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error, for one-line status messages."""
    inner: BaseException = err
    for _ in range(6):  # requests → urllib3 MaxRetryError → .reason → OSError / SSLError
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif inner.args and isinstance(inner.args[0], BaseException):
            inner = inner.args[0]
        else:
            break
    text = str(inner)
    for marker in ("certificate verify failed:", "Errno "):
        if marker in text:
            text = text[text.index(marker) :]
            break
    if text.startswith("Errno ") and "] " in text:
        text = text.split("] ", 1)[1]
    text = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", text)
    return text.strip(" ')\"") or type(inner).__name__


def check_collector_url(url: str, ca_file: Path | None) -> None:
    """Refuse URLs the agent must not talk to; ConfigError naming the key and the fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"collector.url: {url!r} is not an http(s) URL "
            '(fix: write e.g. url = "https://collector.example:8443")'
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            f"collector.url: plain http is allowed only to a loopback collector, not "
            f"{parts.hostname!r} (fix: use https:// and set collector.ca_file)"
        )
    if parts.scheme == "https":
        if ca_file is None:
            raise ConfigError(
                "collector.ca_file: required for an https collector "
                "(fix: point it at the PEM file of the CA that signed the collector's certificate)"
            )
        if not ca_file.is_file():
            raise ConfigError(
                f"collector.ca_file: {ca_file} does not exist or is not a file "
                "(fix: install the collector's CA certificate there)"
            )


class Transport:
    """Talks to one collector base URL through one pinned, environment-blind Session."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_collector_url(url, ca_file)
        self.url = url.rstrip("/")
        self._prefix = urlsplit(self.url).path
        self.ca_file = ca_file
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._clock = clock
        self.session = session or requests.Session()
        self.session.trust_env = False
        self.session.verify = str(ca_file) if ca_file is not None else True

    def close(self) -> None:
        self.session.close()

    def post_json(
        self,
        path: str,
        payload: Any,
        *,
        signer: Signer | None = None,
        compress: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        extra = {"Content-Type": "application/json", **(headers or {})}
        if compress:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            extra["Content-Encoding"] = "gzip"
        return self.request("POST", path, body, signer=signer, headers=extra)

    def get(
        self, path: str, *, signer: Signer | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        return self.request("GET", path, b"", signer=signer, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        signer: Signer | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One HTTP exchange; the signature covers the path as the server sees it."""
        full_path = self._prefix + path
        all_headers = {"Accept": "application/json", **(headers or {})}
        if signer is not None:
            all_headers.update(signer(method, full_path, body))
        deadline = self._clock() + sum(self.timeout)
        try:
            response = self.session.request(
                method,
                self.url + path,
                data=body or None,
                headers=all_headers,
                timeout=self.timeout,
                verify=self.session.verify,
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.SSLError as err:
            raise TransportError(
                f"TLS verification failed for {self.url}: {_reason(err)} "
                "(fix: collector.ca_file must hold the CA of the collector's certificate, "
                "and the certificate must name the host in collector.url)"
            ) from err
        except requests.exceptions.Timeout as err:
            raise TransportError(f"timed out talking to {self.url}: {_reason(err)}") from err
        except requests.exceptions.RequestException as err:
            raise TransportError(f"cannot reach {self.url}: {_reason(err)}") from err
        try:
            content = self._read_capped(response, deadline)
        finally:
            response.close()
        return Reply(response.status_code, response.headers, content)

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                total += len(chunk)
                if total > self.max_response_bytes:
                    raise TransportError(
                        f"{self.url}: reply larger than {self.max_response_bytes} bytes; aborted"
                    )
                if self._clock() > deadline:
                    raise TransportError(f"{self.url}: reply took too long; aborted")
                chunks.append(chunk)
        except requests.exceptions.RequestException as err:
            raise TransportError(f"reply from {self.url} broke off: {err}") from err
        return b"".join(chunks)
