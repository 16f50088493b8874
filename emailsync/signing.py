"""Optional plan signing: with EMAILSYNC_PLAN_KEY set, `plan` signs and `apply` refuses plans not signed with it.

The digest already binds the whole plan, so the signature is an HMAC-SHA256 of the digest under the shared key: only
someone holding the key (the trusted planner, such as CI) can make a plan that apply accepts. The key is read from
the environment only, never from a file beside the plan, and it never appears in any output.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from emailsync.errors import UserError
from emailsync.plan import Plan

KEY_VAR = "EMAILSYNC_PLAN_KEY"
SCHEME = "hmac-sha256:"
MIN_KEY_LENGTH = 32  # characters: a shared secret this short is guessable offline from any signed plan


def plan_key() -> bytes | None:
    """The signing key, or None when signing is not in use. A key set but unusable is a mistake, not "unset"."""
    value = os.environ.get(KEY_VAR)
    if value is None:
        return None
    if len(value.strip()) < MIN_KEY_LENGTH:
        raise UserError(
            f"{KEY_VAR} is set but shorter than {MIN_KEY_LENGTH} characters; use a long random secret "
            f"(for example `python -c 'import secrets; print(secrets.token_hex(32))'`), or unset it to work "
            "without signed plans"
        )
    return value.strip().encode()


def _mac(key: bytes, digest: str) -> str:
    return SCHEME + hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def sign(plan: Plan, key: bytes) -> Plan:
    return plan.model_copy(update={"signature": _mac(key, plan.digest)})  # keeps its actions (private attributes)


def check(plan: Plan, path: Path, key: bytes | None) -> str | None:
    """Refuse a plan that the key did not sign. Returns a warning when a signed plan cannot be checked."""
    if key is None:
        if plan.signature is not None:
            return f"{path} is signed, but {KEY_VAR} is not set here, so its signature was not checked"
        return None
    if plan.signature is None:
        raise UserError(
            f"{path}: the plan is not signed, and {KEY_VAR} is set, so only signed plans are applied. Make the plan "
            f"where {KEY_VAR} holds the same key (the trusted planner, such as CI); nothing was written"
        )
    if not hmac.compare_digest(plan.signature, _mac(key, plan.digest)):
        raise UserError(
            f"{path}: the plan's signature does not match {KEY_VAR}: it was signed with another key, or its digest "
            "or signature was changed. Make the plan again where the same key is set; nothing was written"
        )
    return None
