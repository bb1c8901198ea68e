from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.kafka_support import create_topics, localkafka, unique_topic


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP when set (make test sets it), else one started here."""
    given = os.environ.get("KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    lk = localkafka()
    name = f"pytest-{os.getpid()}"
    inst = lk.start(name, 1, 0, heap_mb=1024)
    try:
        yield inst.bootstrap
    finally:
        lk.stop(name)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> TopicFactory:
    """`await new_topic(partitions=3)` creates a fresh topic that no other test uses."""

    async def make(prefix: str = "t", partitions: int = 1, **configs: str) -> str:
        name = unique_topic(prefix)
        await create_topics(kafka_bootstrap, [name], partitions=partitions, configs=configs)
        return name

    return make
