"""The base of every configuration section: frozen, keyword-only, unknown keys are errors."""

from __future__ import annotations

import msgspec

__all__ = ["Section"]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass
