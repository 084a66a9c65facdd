"""The shapes of identifiers, declared once: schemas validate with them, the Kubernetes shapes
and the cleanup function parse with them."""

from __future__ import annotations

import re

# team_id and policy: DNS labels, so they can name Secrets and policy limits.
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# user_id: must fit a Kubernetes label value.
USER_ID = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
# A key's handle, a Secret name: `apikey-<user>-<team>-<8 hex>`.
SECRET_NAME = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"

DNS_LABEL_RE = re.compile(DNS_LABEL)
USER_ID_RE = re.compile(USER_ID)
