"""Key lifecycle endpoints (revoke, rotate) and the audit log."""

from __future__ import annotations

import functions_framework

from functions._http import Call, endpoint
from shared import audit, auditlog, keys
from shared.schemas import AuditPage, AuditQuery, KeyCreated, KeyRevoked, KeyRotate


@functions_framework.http
@endpoint("revoke_key")
def revoke_key(call: Call) -> KeyRevoked:
    revocation = keys.revoke_key(call.ctx, call.params["secret_name"])
    # The status is the one field a revocation changes, and the answer shows it.
    call.changes = audit.changed({"status": revocation.status_before}, revocation.revoked)
    return revocation.revoked


@functions_framework.http
@endpoint("rotate_key")
def rotate_key(call: Call) -> KeyCreated:
    rotation = keys.rotate_key(call.ctx, call.params["secret_name"], call.body(KeyRotate))
    # The old key's change (expires_at, replaced_by, status), not the new key's answer.
    call.changes = audit.changed(rotation.old_before, rotation.old_after)
    return rotation.created


@functions_framework.http
@endpoint("list_audit")
def list_audit(call: Call) -> AuditPage:
    return auditlog.list_audit(call.ctx, call.query(AuditQuery))
