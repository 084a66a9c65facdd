"""Key lifecycle endpoints (revoke, rotate) and the audit log."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import audit, keys
from shared.schemas import AuditPage, AuditQuery, KeyCreated, KeyRevoked, KeyRotate


@functions_framework.http
@endpoint("revoke_key")
def revoke_key(call: Call) -> KeyRevoked:
    return keys.revoke_key(call.ctx, call.params["secret_name"])


@functions_framework.http
@endpoint("rotate_key")
def rotate_key(call: Call) -> KeyCreated:
    return keys.rotate_key(call.ctx, call.params["secret_name"], call.body(KeyRotate))


@functions_framework.http
@endpoint("list_audit")
def list_audit(call: Call) -> AuditPage:
    return audit.list_audit(call.ctx, call.query(AuditQuery))
