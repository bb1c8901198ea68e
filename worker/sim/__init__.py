"""A local provider simulator (OpenAI + Anthropic wire formats) for tests, demos and benches.

from worker.sim import Simulator, SimConfig, Latency, Fault, Dataset, grade
"""

from worker.sim.answers import Dataset, Row, estimate_tokens, grade
from worker.sim.config import BatchTiming, Fault, Latency, RateLimit, SimConfig
from worker.sim.server import Outage, SimStats, Simulator

__all__ = [
    "BatchTiming",
    "Dataset",
    "Fault",
    "Latency",
    "Outage",
    "RateLimit",
    "Row",
    "SimConfig",
    "SimStats",
    "Simulator",
    "estimate_tokens",
    "grade",
]
