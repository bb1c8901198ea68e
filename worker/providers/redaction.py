"""Provider bytes leave the provider layer redacted, whatever path they take next (responses,
decisions, spans, logs, dead letters, the semantic cache): every string of an error (message,
provider code, type, request id) by the one rule set, `worker.secrets.redact`; every string of a
result (answer, response id, model id, finish reason, log-prob tokens) by the configured secret
values (`worker.secrets.Redactor`) only: credential patterns would rewrite answers that show
code, such as `api_key=os.environ[...]`."""

from __future__ import annotations

from dataclasses import replace

from worker.providers.errors import AllModelsFailedError, ProviderError, ProviderStatusError
from worker.providers.types import CompletionResult, TokenLogprob
from worker.secrets import Redactor, redact

__all__ = ["scrub_error", "scrub_result"]


def scrub_result(result: CompletionResult, redactor: Redactor) -> CompletionResult:
    if not redactor:
        return result
    r = redactor
    logprobs = result.logprobs
    if logprobs is not None:
        logprobs = tuple(
            TokenLogprob(r(t.token), t.logprob) if len(t.token) >= 6 else t for t in logprobs
        )
    return replace(
        result,
        text=r(result.text),
        response_model=r(result.response_model),
        logprobs=logprobs,
        provider_request_id=(
            r(result.provider_request_id) if result.provider_request_id is not None else None
        ),
        raw_finish_reason=(
            r(result.raw_finish_reason) if result.raw_finish_reason is not None else None
        ),
    )


def scrub_error(exc: ProviderError, redactor: Redactor) -> ProviderError:
    """The same exception, its strings redacted in place by the one rule set
    (`worker.secrets.redact`: the configured values and every credential-shaped string; the
    class decides retries: kept)."""
    exc.message = redact(exc.message, redactor)
    exc.args = (exc.message, *exc.args[1:])
    if isinstance(exc, ProviderStatusError):
        for name in ("provider_code", "error_type", "request_id"):
            value = getattr(exc, name)
            if value is not None:
                setattr(exc, name, redact(value, redactor))
    if isinstance(exc, AllModelsFailedError):
        scrub_error(exc.last_error, redactor)
    return exc
