"""One secrets module, one rule set: `worker.secrets.redact` is what logs, span errors, score
errors and provider error messages all apply (before, the logs' rules and the providers' rules
differed: each missed what the other caught)."""

from __future__ import annotations

import pytest

from worker import secrets
from worker.secrets import REDACTED, Redactor, redact

KEY = "sk-proj-Zq81mNc40pLx7TyW3vBe6789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the logs' cases
        ("key=sk-abcdefghijklmnop", f"key={REDACTED}"),
        ("Bearer abc.def-ghi_jkl", f"Bearer {REDACTED}"),
        ("Basic cGstbGY6c2stbGYtc2VjcmV0", f"Basic {REDACTED}"),
        ('{"api_key": "abcdef123456"}', f'{{"api_key": "{REDACTED}"}}'),
        ("sk-lf-0123456789abcdef", REDACTED),
        ("sasl_auth_bytes=b'user\\x00user\\x00pw'", f"sasl_auth_bytes={REDACTED}"),
        ("risk-free tasks and sk-short", "risk-free tasks and sk-short"),
        ("a basic question about bearer bonds", "a basic question about bearer bonds"),
        ("", ""),
        # the providers' cases: a masked echo of a key, however short its visible ends
        ("Incorrect API key provided: sk-abc***wxyz.", f"Incorrect API key provided: {REDACTED}."),
        ("key_12***89 was refused", f"{REDACTED} was refused"),
    ],
)
def test_one_rule_set(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_configured_values_given_or_protected() -> None:
    plain = "unprotectedvalue-7f3k9q2w5e"  # no pattern knows it, and nothing protects it
    text = f"echo {plain.upper()[2:]} and {KEY}"
    assert plain.upper()[2:] in redact(text)
    out = redact(text, [plain, KEY])
    assert plain.upper()[2:] not in out and "6789" not in out and out.count(REDACTED) == 2
    assert redact(text, Redactor([plain])) == redact(text, [plain])


def test_protect_applies_to_every_later_call() -> None:
    value = "anotherplainvalue-42-abcdefgh"  # process-wide from here on: used by no other test
    assert redact(f"x{value}y") == f"x{value}y"
    secrets.protect(Redactor([value]))
    assert redact(f"x{value.upper()}y") == f"x{REDACTED}y"


def test_former_callers_use_it() -> None:
    from worker import logs
    from worker.providers import errors as provider_errors
    from worker.telemetry import scores, tracing

    for module in (logs, provider_errors, scores, tracing):
        assert module.redact is redact, module.__name__


def test_provider_errors_get_the_rule_set_answers_only_the_values() -> None:
    from worker.providers.errors import BadRequestError
    from worker.providers.redaction import scrub_error, scrub_result
    from worker.providers.types import CompletionResult, Usage

    err = BadRequestError("echoed Authorization: Bearer abcdefgh12345678", status=400)
    message = scrub_error(err, Redactor()).message
    assert "abcdefgh" not in message and REDACTED in message  # no configured value needed
    answer = f'client = OpenAI(api_key=os.environ["OPENAI_API_KEY"])  # not {KEY}'
    result = CompletionResult(
        text=answer,
        finish_reason="stop",
        usage=Usage(),
        cost_usd=0.0,
        latency_ms=1.0,
        provider="openai",
        model="m",
        response_model="m",
    )
    scrubbed = scrub_result(result, Redactor([KEY]))
    assert scrubbed.text == answer.replace(KEY, REDACTED)  # the code shown is kept
