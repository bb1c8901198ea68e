"""Simulated OpenAI Batches (+ Files) and Anthropic Message Batches.

State is a pure function of the simulator clock (no background tasks): a job validates for
``validating_s``, its items finish evenly over ``in_progress_s``, then it finalizes. OpenAI:
validating -> in_progress -> finalizing -> completed, or failed (bad input file), expired
(``expire_after_s`` passed first: done items in the output file, the rest ``batch_expired`` in
the error file), cancelling -> cancelled. Anthropic: in_progress -> (canceling ->) ended, items
succeeded / errored / canceled / expired. Output and result lines come in a seeded shuffled
order, as the real APIs promise no order.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker.sim.config import BatchTiming
from worker.sim.wire import WireError, anthropic_error, openai_error

# (api, body) -> (status, response body); runs one item through the completion logic.
ItemRunner = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Job:
    id: str
    created_mono: float
    created_wall: float
    items: list[tuple[str, dict[str, Any]]]
    seed: int
    errors: list[dict[str, Any]] = field(default_factory=list)  # OpenAI validation errors
    cancel_at: float | None = None
    final: str | None = None  # terminal status once computed
    outcomes: list[tuple[str, str, int, dict[str, Any]]] | None = None  # (cid, kind, status, body)


class _Timeline:
    def __init__(self, timing: BatchTiming, clock: Callable[[], float]):
        self.t = timing
        self.clock = clock

    def done_by(self, job: _Job, at: float) -> int:
        span = at - job.created_mono - self.t.validating_s
        if span <= 0:
            return 0
        if self.t.in_progress_s <= 0:
            return len(job.items)
        return min(len(job.items), int(len(job.items) * span / self.t.in_progress_s))

    def stop_point(self, job: _Job) -> tuple[str, float] | None:
        """('expired'|'cancelled', when) if the job stops early and when."""
        candidates = []
        if job.cancel_at is not None:
            candidates.append(("cancelled", job.cancel_at))
        if self.t.expire_after_s is not None:
            candidates.append(("expired", job.created_mono + self.t.expire_after_s))
        end = job.created_mono + self.t.validating_s + self.t.in_progress_s
        early = [c for c in candidates if c[1] < end]
        return min(early, key=lambda c: c[1]) if early else None


def _page(views: list[dict[str, Any]], query: dict[str, str], after_key: str) -> dict[str, Any]:
    """A newest-first list page with cursor pagination (``limit`` 1..100, default 20)."""
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        limit = 20
    after = query.get(after_key)
    if after:
        ids = [v["id"] for v in views]
        views = views[ids.index(after) + 1 :] if after in ids else []
    page = views[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(views) > limit,
    }


class OpenAIBatches:
    def __init__(self, timing: BatchTiming, run: ItemRunner, seed: int, clock: Callable[[], float]):
        self.submitted: Counter[str] = Counter()  # custom_id -> times submitted in any batch
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, _Job] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._tl = _Timeline(timing, clock)
        self._run = run
        self._seed = seed

    def add_file(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        if purpose == "batch" and len(content) > OPENAI_MAX_FILE_BYTES:
            raise openai_error(
                400,
                "File is larger than the 200 MB limit for batch files.",
                "invalid_request_error",
            )
        f = StoredFile(
            f"file-{uuid.uuid4().hex[:24]}", filename, purpose, content, int(time.time())
        )
        self.files[f.id] = f
        return f

    def get_file(self, file_id: str) -> StoredFile:
        f = self.files.get(file_id)
        if f is None:
            raise openai_error(
                404, f"No such File object: {file_id}", "invalid_request_error", None, "id"
            )
        return f

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise openai_error(400, "Invalid body", "invalid_request_error")
        endpoint = body.get("endpoint")
        if endpoint not in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses",
        ):
            raise openai_error(
                400, "Invalid 'endpoint'.", "invalid_request_error", None, "endpoint"
            )
        if body.get("completion_window") != "24h":
            raise openai_error(
                400,
                "Invalid 'completion_window': only '24h' is supported.",
                "invalid_request_error",
                None,
                "completion_window",
            )
        f = self.get_file(str(body.get("input_file_id")))
        if f.purpose != "batch":
            raise openai_error(
                400, "The input file must have purpose 'batch'.", "invalid_request_error"
            )
        items, errors = self._parse(f.content, endpoint)
        self.submitted.update(cid for cid, _ in items)
        job = _Job(
            f"batch_{uuid.uuid4().hex[:24]}",
            self._tl.clock(),
            time.time(),
            items,
            self._seed ^ len(self.jobs),
            errors,
        )
        self.jobs[job.id] = job
        self._meta[job.id] = {
            "input_file_id": f.id,
            "endpoint": endpoint,
            "metadata": body.get("metadata"),
        }
        return self.view(job.id)

    @staticmethod
    def _parse(
        content: bytes, endpoint: str
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
        items: list[tuple[str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        for n, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                cid, url, body = str(obj["custom_id"]), obj["url"], obj["body"]
            except (ValueError, KeyError, TypeError):
                errors.append(
                    {
                        "code": "invalid_json_line",
                        "message": "This line is not parseable as valid JSON.",
                        "param": None,
                        "line": n,
                    }
                )
                continue
            if url != endpoint or obj.get("method") != "POST":
                errors.append(
                    {
                        "code": "mismatched_endpoint",
                        "message": "The URL provided for this request does not match the batch "
                        f"endpoint {endpoint}.",
                        "param": "url",
                        "line": n,
                    }
                )
            if cid in seen:
                errors.append(
                    {
                        "code": "duplicate_custom_id",
                        "message": "The custom_id for this request is a duplicate of another "
                        "request.",
                        "param": "custom_id",
                        "line": n,
                    }
                )
            seen.add(cid)
            models.add(str(body.get("model")) if isinstance(body, dict) else "")
            items.append((cid, body if isinstance(body, dict) else {}))
        if len(models) > 1:
            errors.append(
                {
                    "code": "mismatched_model",
                    "message": "Requests in a batch must all use the same model.",
                    "param": "body.model",
                    "line": None,
                }
            )
        if len(items) > OPENAI_MAX_REQUESTS:
            errors.append(
                {
                    "code": "too_many_requests",
                    "message": f"A batch may hold at most {OPENAI_MAX_REQUESTS} requests.",
                    "param": None,
                    "line": None,
                }
            )
        if not items and not errors:
            errors.append(
                {
                    "code": "empty_file",
                    "message": "The input file is empty.",
                    "param": None,
                    "line": None,
                }
            )
        return items, errors

    def _job(self, batch_id: str) -> _Job:
        job = self.jobs.get(batch_id)
        if job is None:
            raise openai_error(
                404,
                f"No batch found with id '{batch_id}'.",
                "invalid_request_error",
                None,
                "batch_id",
            )
        return job

    def cancel(self, batch_id: str) -> dict[str, Any]:
        job = self._job(batch_id)
        status = self._status(job)
        if status in ("completed", "failed", "expired", "cancelled", "cancelling"):
            if status != "cancelling":
                raise openai_error(
                    409, f"Cannot cancel a batch with status '{status}'.", "invalid_request_error"
                )
        else:
            job.cancel_at = self._tl.clock()
        return self.view(batch_id)

    def _status(self, job: _Job) -> str:
        if job.final is not None:
            return job.final
        now, t = self._tl.clock(), self._tl.t
        age = now - job.created_mono
        if age < t.validating_s:
            return "cancelling" if job.cancel_at is not None else "validating"
        if job.errors:
            return self._finish(job, "failed", 0)
        stop = self._tl.stop_point(job)
        if stop is not None:
            kind, when = stop
            if kind == "cancelled":
                if now < when + t.cancel_delay_s:
                    return "cancelling"
                return self._finish(job, "cancelled", self._tl.done_by(job, when))
            if now >= when:
                return self._finish(job, "expired", self._tl.done_by(job, when))
        if age < t.validating_s + t.in_progress_s:
            return "in_progress"
        if age < t.validating_s + t.in_progress_s + t.finalizing_s:
            return "finalizing"
        return self._finish(job, "completed", len(job.items))

    def _finish(self, job: _Job, status: str, done: int) -> str:
        rng = random.Random(job.seed)
        out: list[bytes] = []
        err: list[bytes] = []
        t = self._tl.t
        for i, (cid, body) in enumerate(job.items):
            rid = f"batch_req_{uuid.uuid4().hex[:24]}"
            if i >= done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                msg = (
                    "This request could not be executed before the completion window expired."
                    if status == "expired"
                    else "This request was cancelled before it ran."
                )
                err.append(
                    json.dumps(
                        {
                            "id": rid,
                            "custom_id": cid,
                            "response": None,
                            "error": {"code": code, "message": msg},
                        }
                    ).encode()
                )
                continue
            if rng.random() < t.item_error_rate:
                status_code, resp = (
                    500,
                    {
                        "error": {
                            "message": "The server had an error processing your request.",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )
            else:
                status_code, resp = self._run("openai", body)
            line = json.dumps(
                {
                    "id": rid,
                    "custom_id": cid,
                    "response": {
                        "status_code": status_code,
                        "request_id": uuid.uuid4().hex,
                        "body": resp,
                    },
                    "error": None,
                }
            ).encode()
            if rng.random() < t.malformed_line_rate:
                line = line[: len(line) // 2]
            (out if status_code == 200 else err).append(line)
        rng.shuffle(out)
        rng.shuffle(err)
        meta = self._meta[job.id]
        if status != "failed":
            if out:
                meta["output_file_id"] = self.add_file(
                    "batch_output.jsonl", "batch_output", b"\n".join(out) + b"\n"
                ).id
            if err:
                meta["error_file_id"] = self.add_file(
                    "batch_errors.jsonl", "batch_output", b"\n".join(err) + b"\n"
                ).id
        meta["completed"] = sum(1 for _ in out)
        meta["failed"] = len(err) if status != "failed" else 0
        job.final = status
        return status

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """``GET /v1/batches``: newest first, ``after`` = the last id of the previous page."""
        views = [self.view(i) for i in reversed(list(self.jobs))]
        return _page(views, query, "after")

    def view(self, batch_id: str) -> dict[str, Any]:
        job = self._job(batch_id)
        status = self._status(job)
        meta = self._meta[job.id]
        t = self._tl.t
        c = job.created_wall
        n = len(job.items)
        if job.final is None:
            done = (
                self._tl.done_by(job, self._tl.clock())
                if status in ("in_progress", "finalizing")
                else 0
            )
            completed, failed = done, 0
        else:
            completed, failed = meta.get("completed", 0), meta.get("failed", 0)
        past_validation = status not in ("validating", "failed") and not (
            status == "cancelling" and self._tl.clock() - job.created_mono < t.validating_s
        )
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": meta["endpoint"],
            "errors": {"object": "list", "data": job.errors} if job.errors else None,
            "input_file_id": meta["input_file_id"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": meta.get("output_file_id"),
            "error_file_id": meta.get("error_file_id"),
            "created_at": int(c),
            "in_progress_at": int(c + t.validating_s) if past_validation else None,
            "expires_at": int(c + 86400),
            "finalizing_at": int(c + t.validating_s + t.in_progress_s)
            if status in ("finalizing", "completed")
            else None,
            "completed_at": int(time.time()) if status == "completed" else None,
            "failed_at": int(c + t.validating_s) if status == "failed" else None,
            "expired_at": int(time.time()) if status == "expired" else None,
            "cancelling_at": int(c + (job.cancel_at - job.created_mono))
            if job.cancel_at is not None
            else None,
            "cancelled_at": int(time.time()) if status == "cancelled" else None,
            "request_counts": {
                "total": n if status != "failed" else 0,
                "completed": completed,
                "failed": failed,
            },
            "metadata": meta.get("metadata"),
        }


class AnthropicBatches:
    def __init__(
        self,
        timing: BatchTiming,
        run: ItemRunner,
        seed: int,
        clock: Callable[[], float],
        base_url: Callable[[], str],
    ):
        self.submitted: Counter[str] = Counter()  # custom_id -> times submitted in any batch
        self.jobs: dict[str, _Job] = {}
        self._results: dict[str, bytes] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._tl = _Timeline(timing, clock)
        self._run = run
        self._seed = seed
        self._base_url = base_url

    def create(self, body: Any, raw_size: int) -> dict[str, Any]:
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise anthropic_error(
                400, "invalid_request_error", "requests: at least one request is required"
            )
        if len(reqs) > ANTHROPIC_MAX_REQUESTS or raw_size > ANTHROPIC_MAX_BYTES:
            raise anthropic_error(
                413, "request_too_large", "Batch exceeds 100,000 requests or 256 MB"
            )
        items: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        for i, r in enumerate(reqs):
            if (
                not isinstance(r, dict)
                or not isinstance(r.get("custom_id"), str)
                or not isinstance(r.get("params"), dict)
            ):
                raise anthropic_error(
                    400, "invalid_request_error", f"requests.{i}: custom_id and params are required"
                )
            if r["custom_id"] in seen:
                raise anthropic_error(
                    400,
                    "invalid_request_error",
                    f"requests.{i}.custom_id: duplicate custom_id {r['custom_id']!r}",
                )
            seen.add(r["custom_id"])
            items.append((r["custom_id"], r["params"]))
        self.submitted.update(seen)
        job = _Job(
            f"msgbatch_{uuid.uuid4().hex[:24]}",
            self._tl.clock(),
            time.time(),
            items,
            self._seed ^ len(self.jobs),
        )
        self.jobs[job.id] = job
        return self.view(job.id)

    def _job(self, batch_id: str) -> _Job:
        job = self.jobs.get(batch_id)
        if job is None:
            raise anthropic_error(404, "not_found_error", f"Message batch {batch_id} not found")
        return job

    def cancel(self, batch_id: str) -> dict[str, Any]:
        job = self._job(batch_id)
        if self._status(job) == "in_progress":
            job.cancel_at = self._tl.clock()
        return self.view(batch_id)

    def _status(self, job: _Job) -> str:
        if job.final is not None:
            return job.final
        now, t = self._tl.clock(), self._tl.t
        stop = self._tl.stop_point(job)
        if stop is not None:
            kind, when = stop
            if kind == "cancelled":
                if now < when + t.cancel_delay_s:
                    return "canceling"
                return self._finish(job, "canceled", self._tl.done_by(job, when))
            if now >= when:
                return self._finish(job, "expired", self._tl.done_by(job, when))
        if now - job.created_mono < t.validating_s + t.in_progress_s:
            return "in_progress"
        return self._finish(job, "", len(job.items))

    def _finish(self, job: _Job, rest: str, done: int) -> str:
        rng = random.Random(job.seed)
        lines: list[bytes] = []
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        t = self._tl.t
        for i, (cid, params) in enumerate(job.items):
            if i >= done:
                result: dict[str, Any] = {"type": rest}
            elif rng.random() < t.item_error_rate:
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": "api_error", "message": "Internal server error"},
                    },
                }
            else:
                status, body = self._run("anthropic", params)
                if status == 200:
                    result = {"type": "succeeded", "message": body}
                else:
                    result = {"type": "errored", "error": body}
            counts[result["type"]] += 1
            line = json.dumps({"custom_id": cid, "result": result}).encode()
            if rng.random() < t.malformed_line_rate:
                line = line[: len(line) // 2]
            lines.append(line)
        rng.shuffle(lines)
        self._results[job.id] = b"\n".join(lines) + b"\n"
        self._counts[job.id] = counts
        job.final = "ended"
        return "ended"

    def view(self, batch_id: str) -> dict[str, Any]:
        job = self._job(batch_id)
        status = self._status(job)
        n = len(job.items)
        if job.final is None:
            done = self._tl.done_by(job, self._tl.clock())
            counts = {
                "processing": n - done,
                "succeeded": done,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }
        else:
            counts = self._counts[job.id]
        c = job.created_wall
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _iso(time.time()) if status == "ended" else None,
            "created_at": _iso(c),
            "expires_at": _iso(c + 86400),
            "archived_at": None,
            "cancel_initiated_at": _iso(c + job.cancel_at - job.created_mono)
            if job.cancel_at is not None
            else None,
            "results_url": f"{self._base_url()}/v1/messages/batches/{job.id}/results"
            if status == "ended"
            else None,
        }

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        """``GET /v1/messages/batches``: newest first, ``after_id`` pages on."""
        views = [self.view(i) for i in reversed(list(self.jobs))]
        return _page(views, query, "after_id")

    def results(self, batch_id: str) -> bytes:
        job = self._job(batch_id)
        if self._status(job) != "ended":
            raise anthropic_error(
                400, "invalid_request_error", f"Message batch {batch_id} is not yet ended"
            )
        return self._results[job.id]


__all__ = ["AnthropicBatches", "OpenAIBatches", "StoredFile", "WireError"]
