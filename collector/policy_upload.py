"""Checking an uploaded policy bundle against the collector's own trust before storing it.

The collector holds public keys only and never signs. It refuses a bundle its trusted keys do
not vouch for (422) so that a typo or a stolen admin token cannot push garbage to the fleet,
and a serial not higher than the current one (409) because agents would refuse it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from proscribe.collector.api.errors import ApiError
from proscribe.collector.config import CollectorSettings
from proscribe.core.errors import ProscribeError
from proscribe.core.policy.keys import parse_public_key


@dataclass(frozen=True, slots=True)
class VerifiedUpload:
    policy_id: str
    serial: int
    sha256: str


def verify_upload(settings: CollectorSettings, data: bytes, sig: bytes) -> VerifiedUpload:
    """Verify signatures (threshold of the configured keys), then parse; 422 with the reason."""
    from proscribe.core.policy.bundle import TrustConfig, verify_policy_bytes

    if not settings.trusted_keys:
        raise ApiError(
            422,
            "no_trust_configured",
            f"{settings.source}: policy.trusted_keys is empty; the collector cannot check "
            "uploads (fix: add the signing keys' public lines)",
        )
    try:
        keys = tuple(parse_public_key(k) for k in settings.trusted_keys)
        trust = TrustConfig(keys=keys, threshold=settings.threshold)
        policy = verify_policy_bytes(data, sig, trust, source="uploaded policy")
    except ProscribeError as err:
        raise ApiError(422, "policy_rejected", str(err)) from err
    return VerifiedUpload(policy.meta.id, int(policy.meta.serial), policy.sha256)
