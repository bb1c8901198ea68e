"""Rate-limited logging for a noisy library: with the broker gone, aiokafka logs the same
connection error ~170 times a second. This handler filter lets each (logger, message template)
through once per interval and says how many like it it held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimit(logging.Filter):
    def __init__(
        self,
        prefix: str = "aiokafka",
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval_s = interval_s
        self.clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix) or record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, record.msg)
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        if len(self._seen) > 1000:  # templates are few; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.interval_s:.0f}s]"
        return True


def install(interval_s: float = 10.0) -> RateLimit:
    """Attach one filter to every root handler (children's records pass through them)."""
    limit = RateLimit(interval_s=interval_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit
