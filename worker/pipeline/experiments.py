"""A/B experiments: each request of an experiment's tenants goes to one arm (a router version or
a policy), chosen by a stable hash of its request id salted with the experiment's name
(`routers.split`), so a replay makes the same choice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import schemas
from routers import split
from worker.config import ExperimentSpec
from worker.pipeline.routing import RoutingCore


@dataclass(frozen=True)
class Arm:
    """One arm of an A/B experiment, ready to route: its policy and router (None: the
    worker's current ones)."""

    experiment: str
    name: str
    weight: float
    policy: str | None = None
    core: RoutingCore | None = None

    @property
    def label(self) -> str:
        return f"{self.experiment}:{self.name}"


class Experiments:
    """The configured experiments with their arms (their cores loaded by the app)."""

    def __init__(
        self, specs: Sequence[ExperimentSpec], arms: Mapping[str, list[Arm]] | None = None
    ) -> None:
        self.specs = tuple(specs)
        self.arms = dict(arms or {})

    def arm_for(self, request: schemas.RouteRequest) -> Arm | None:
        """The A/B arm of this request: the first experiment that covers its tenant, then a
        stable hash of the request id salted with the experiment name."""
        for exp in self.specs:
            if exp.tenants is not None and request.tenant not in exp.tenants:
                continue
            arms = self.arms.get(exp.name)
            if not arms:
                continue
            return arms[split.choose(request.request_id, [a.weight for a in arms], exp.name)]
        return None
