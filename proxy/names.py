"""Naming rules shared by the vault, the routes and the client grants."""

from __future__ import annotations

import re

# A workspace name is one path segment and, for workspace files, one DNS label.
# The platform's workspace names are lower case, so upper case is invalid rather
# than folded: `ALPHA-WS` would otherwise match a different vault entry or none.
WORKSPACE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
WORKSPACE_NAME_RULE = "lower-case letters, digits and inner hyphens, at most 63 characters"


def has_upper_case(name: str) -> bool:
    """Tell whether `name` is invalid only for its upper-case letters."""
    return name.isascii() and name != name.lower() and WORKSPACE_NAME.match(name.lower()) is not None
