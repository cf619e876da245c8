"""Naming rules shared by the vault, the routes and the client grants."""

from __future__ import annotations

import re

# A workspace name is one path segment and, for workspace files, one DNS label.
WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.IGNORECASE)
WORKSPACE_NAME_RULE = "letters, digits and inner hyphens, at most 63 characters"
