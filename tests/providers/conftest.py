from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from worker.config.models import Catalogue, simulator_catalogue
from worker.providers import ClientSettings, ModelClient, RetryPolicy

OPENAI_KEY = "sk-proj-SECRETabcdefghijklmnop0123456789"
ANTHROPIC_KEY = "sk-ant-api03-SECRETzyxwvutsrqponm9876543210"
ENV = {"SIM_OPENAI_API_KEY": OPENAI_KEY, "SIM_ANTHROPIC_API_KEY": ANTHROPIC_KEY}
FIXTURES = Path(__file__).parent / "fixtures"


def openai_schema() -> dict:
    return json.loads((FIXTURES / "openai_chat_schema.json").read_text())


class FakeClock:
    """An injected monotonic clock; ``sleep`` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def mock_catalogue() -> Catalogue:
    return simulator_catalogue("http://provider.test")


def mock_client(
    handler, *, clock: FakeClock | None = None, settings: ClientSettings | None = None, env=None
) -> ModelClient:
    clock = clock or FakeClock()
    return ModelClient(
        mock_catalogue(),
        settings or ClientSettings(retry=RetryPolicy(max_retries=2)),
        env=ENV if env is None else env,
        http_transport=httpx.MockTransport(handler),
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 0.0,
    )


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
