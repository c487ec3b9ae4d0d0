"""OpenAPI conformance of the collector's API (schemathesis, every check): whatever the request
generated from the collector's own document, valid or not, the answer is the one the document
declares — status, content type, body schema, headers — never a 5xx, valid data accepted,
invalid data refused, authentication enforced.

The agent operations are exercised signed, not only as 401s: a ``before_call`` hook gives the
request a ``requests`` auth that signs the prepared request (method, path with query, body
bytes as sent) with an enrolled agent's key, as the agent does. People's operations carry an
admin token; ``/metrics`` its own token. In positive mode, ``PUT /api/v1/policy`` uploads a
really signed policy pack with a fresh serial (a ``map_case`` hook), so the upload path is
exercised past the signature check. Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

from proscribe.collector.app import create_app
from proscribe.collector.config import settings_from_mapping
from proscribe.collector.storage import agents as agent_store
from proscribe.collector.storage.users import add_user
from proscribe.core.policy.envelope import sign_payload
from proscribe.core.policy.keys import public_key_string
from proscribe.core.wire.auth import H_SIGNATURE, sign_request

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACK = (REPO / "policies" / "us-navy-deepseek-2025.toml").read_bytes()
SIGNED = {"/api/v1/events", "/api/v1/heartbeat", "/api/v1/policy"}
SERIALS = itertools.count(2)
TITLE = "Proscribe collector"


class AgentSignature(requests.auth.AuthBase):
    """Signs the prepared request exactly as sent, like the agent's transport."""

    def __init__(self, key: Ed25519PrivateKey, agent_id: str) -> None:
        self.key = key
        self.agent_id = agent_id

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        data = body.encode() if isinstance(body, str) else bytes(body)
        target = request.path_url
        request.headers.update(
            sign_request(
                self.key, self.agent_id, request.method or "GET", target, data, now=time.time()
            )
        )
        return request


def _signed_operation(case: Any) -> bool:
    return case.path in SIGNED and not (case.method == "PUT" and case.path == "/api/v1/policy")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.schema.raw_schema.get("info", {}).get("title") != TITLE:
        return  # another API's test (hooks are global)
    if _signed_operation(case):
        kwargs["auth"] = _AGENT[-1]
    elif (case.method, case.path) == ("PUT", "/api/v1/policy") and _positive(case):
        # A schema-valid upload is still refused unless the trusted key signed it: upload
        # a really signed pack, with a fresh serial, so the storing path runs too.
        serial = next(SERIALS)
        data = PACK.replace(b"serial  = 1\n", f"serial  = {serial}\n".encode(), 1)
        case.body = {
            "policy": base64.b64encode(data).decode(),
            "signature": base64.b64encode(sign_payload(data, SIGNER).to_bytes()).decode(),
        }
    elif (case.method, case.path) == ("PUT", "/api/v1/inventory") and _positive(case):
        # Any string is schema-valid; only a CSV with the right header is an inventory.
        case.body = {"csv": "hostname,asset_id,owner,group\nws-0001,A-1,alice,finance\n"}


def _positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def _collector() -> tuple[Any, Path, Ed25519PrivateKey, str]:
    """The collector under test, in-process: SQLite in a private folder (removed at exit),
    policy uploads trusted from a throwaway key, /metrics behind a token."""
    tmp = Path(tempfile.mkdtemp(prefix="proscribe-conformance-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    signer = Ed25519PrivateKey.generate()
    metrics_token = secrets.token_urlsafe(32)
    token_file = tmp / "metrics.token"
    token_file.write_text(metrics_token)
    token_file.chmod(0o600)
    config = settings_from_mapping(
        {
            "database": {"url": f"sqlite:///{tmp / 'collector.db'}"},
            "policy": {"trusted_keys": [public_key_string(signer.public_key())]},
            "enroll": {"per_ip_burst": 100_000, "global_burst": 100_000},
            "metrics": {"access": "token", "token_file": str(token_file)},
        }
    )
    return create_app(config), tmp, signer, metrics_token


APP, _TMP, SIGNER, METRICS_TOKEN = _collector()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)  # starts the app (migrates)
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    allow_x00=True,  # NUL must be refused, never crash
    with_security_parameters=False,  # credentials are given below, not generated
)


load_all_checks()
ALL_CHECKS = CHECKS.get_all()  # every built-in check, named, so none is skipped by default


@dataclass(frozen=True)
class Credentials:
    admin_token: str
    agent: AgentSignature


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    """An admin and an enrolled agent, made in the running collector's database."""
    key = Ed25519PrivateKey.generate()
    with APP.state.collector.db.write() as conn:
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
    signature = AgentSignature(key, agent_id)
    _AGENT.append(signature)
    return Credentials(token, signature)


_AGENT: list[AgentSignature] = []  # the hook's signer, once the fixture made the agent


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_conforms(case: Any, credentials: Credentials) -> None:
    if _signed_operation(case):
        # Names the credential so the checks know it is given on purpose (the hook's auth
        # replaces the value with the real signature).
        headers = {H_SIGNATURE: "signed by the before_call hook"}
    elif case.path == "/metrics":
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    else:
        headers = {"Authorization": f"Bearer {credentials.admin_token}"}
    case.call_and_validate(headers=headers, checks=ALL_CHECKS)
