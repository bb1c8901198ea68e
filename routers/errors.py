"""Errors of the routing core. One root; the shell maps them at its boundary.

RoutingError
 ├── ArtifactError          an artifact folder is missing, corrupt or of another format version
 ├── NoEligibleModelError   allow/deny lists and max_cost_usd leave no model to choose
 └── TrainingDataError      records unusable for training (no models, too few labels, ...)
"""

from __future__ import annotations

__all__ = ["ArtifactError", "NoEligibleModelError", "RoutingError", "TrainingDataError"]


class RoutingError(Exception):
    """Root of every error raised by `routers`."""

    retriable = False


class ArtifactError(RoutingError):
    pass


class NoEligibleModelError(RoutingError):
    pass


class TrainingDataError(RoutingError):
    pass
