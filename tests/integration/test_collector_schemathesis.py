"""Property-based API fuzzing from the collector's own OpenAPI spec (schemathesis): whatever
the generated request, the answer is never a 5xx, and every 4xx is JSON with an ``error``.

Agent operations are signed with an enrolled key (so the fuzzing gets past authentication
into validation) and people's operations carry an admin token. Bounded: a few dozen examples
per operation.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage.users import add_user
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import sign_request

pytestmark = pytest.mark.slow

_STATE: dict[str, Any] = {}


def _app(tmp: Path) -> Any:
    signer = Ed25519PrivateKey.generate()
    config = settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{tmp / 'fuzz.db'}"},
            "policy": {"trusted_keys": [public_key_string(signer.public_key())]},
            "enroll": {"per_ip_burst": 1000, "global_burst": 1000},
        }
    )
    return create_app(config)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = _app(tmp_path_factory.mktemp("fuzz"))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        state = app.state.collector
        key = Ed25519PrivateKey.generate()
        with state.db.write() as conn:
            _p, token = add_user(conn, "fuzzer", "admin", 0)
            agent_id = agent_store.enroll_agent(
                conn,
                public_key=public_key_string(key.public_key()),
                hostname="fuzz",
                os_name="linux",
                agent_version="1",
                secret_id="x",
                now_us=0,
            )
        _STATE.update(token=token, agent_id=agent_id, key=key)
        yield test_client


def _spec() -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec: dict[str, Any] = _app(Path(tmp)).openapi()
    return spec


schema = schemathesis.openapi.from_dict(_spec())
# Valid and invalid inputs both; NUL bytes allowed (they must be refused, not crash).
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    allow_x00=True,
)

SIGNED = {"/api/v1/events", "/api/v1/heartbeat", "/api/v1/policy"}


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_anywhere(case: Any, client: TestClient) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    method = kwargs["method"].upper()
    url = urllib.parse.urlsplit(kwargs["url"])
    path = url.path
    params = kwargs.get("params") or {}
    query = urllib.parse.urlencode(params, doseq=True)
    target = path + ("?" + query if query else "")
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
    else:
        data = kwargs.get("data") or b""
        body = data.encode() if isinstance(data, str) else bytes(data)
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "host"}
    headers.setdefault("Content-Type", "application/json")
    if path in SIGNED and (method, path) != ("PUT", "/api/v1/policy"):
        headers.update(
            sign_request(_STATE["key"], _STATE["agent_id"], method, target, body, now=time.time())
        )
    else:
        headers["Authorization"] = f"Bearer {_STATE['token']}"
    try:
        resp = client.request(method, target, content=body, headers=headers)
    except UnicodeEncodeError:
        return  # a header value the HTTP client itself cannot send; never reaches the server
    assert resp.status_code < 500, (method, target, body[:300], resp.text[:500])
    if resp.status_code >= 400:
        assert "error" in resp.json(), resp.text
