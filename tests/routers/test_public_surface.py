import json
import subprocess
import sys

import routers

EXPECTED = {
    "DEFAULT_ROUTER",
    "ROUTER_NAMES",
    "AnswerScorer",
    "ArtifactError",
    "CacheHit",
    "CacheParams",
    "Candidate",
    "CascadeParams",
    "CascadeResult",
    "Decision",
    "Eligible",
    "HashingFeaturizer",
    "HashingParams",
    "Identity",
    "Limits",
    "ModelPrice",
    "NoEligibleModelError",
    "PolicyOptions",
    "PromptVectorizer",
    "Record",
    "Router",
    "RoutingError",
    "SemanticCache",
    "TrainOptions",
    "TrainingDataError",
    "decide",
    "eligible",
    "load",
    "prompt_text",
    "route",
    "route_batch",
    "save",
    "strong_need",
    "train",
}


def test_public_names_are_exactly_the_documented_ones():
    assert set(routers.__all__) == EXPECTED
    for name in routers.__all__:
        assert getattr(routers, name) is not None


def test_errors_share_one_root():
    for err in (routers.ArtifactError, routers.NoEligibleModelError, routers.TrainingDataError):
        assert issubclass(err, routers.RoutingError)


def test_import_routers_pulls_in_no_shell_or_network_package():
    code = (
        "import json, sys, routers, routers.evaluation, routers.cascade, routers.calibration\n"
        "import routers.semcache\n"
        "bad = {'httpx', 'aiokafka', 'langfuse', 'opentelemetry', 'worker', 'asyncio',"
        " 'matplotlib'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
