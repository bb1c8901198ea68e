import math

import pytest

from routers.cascade import AnswerScorer, CascadeParams, calibrate_cascade_threshold


def test_a_plain_answer_is_accepted_with_no_reasons():
    r = AnswerScorer().score("The capital of France is Paris.")
    assert r.accept and r.score == 1.0 and r.reasons == ()
    assert r.reason.startswith("accept:")


def test_a_refusal_is_escalated_and_says_why():
    r = AnswerScorer().score("I'm sorry, but I can't help with that.")
    assert not r.accept
    assert any("refusal" in x for x in r.reasons)
    assert r.reason.startswith("escalate:") and "refusal" in r.reason


def test_hedging_lowers_the_score_step_by_step():
    s = AnswerScorer()
    one = s.score("I think it is 4.").score
    three = s.score("I think it is possibly 4, but I'm not sure.").score
    assert 1.0 > one > three


def test_empty_answer_and_low_logprob_escalate():
    s = AnswerScorer(CascadeParams(min_chars=3))
    assert not s.score("").accept
    confident = s.score("Paris", token_logprobs=[-0.01, -0.02]).score
    unsure = s.score("Paris", token_logprobs=[-2.0, -3.0]).score
    assert confident > unsure
    assert unsure == pytest.approx(0.5)  # full logprob_weight of 0.5 lost


def test_threshold_is_configurable():
    answer = "I think it is 4."
    assert AnswerScorer(CascadeParams(threshold=0.8)).score(answer).accept
    assert not AnswerScorer(CascadeParams(threshold=0.9)).score(answer).accept


def test_calibrate_cascade_threshold_by_hand():
    scores = [1.0, 0.9, 0.7, 0.4, 0.2]
    correct = [1, 1, 0, 1, 0]
    # accepting >= 0.4 gives 3/4 correct; >= 0.2 gives 3/5
    assert calibrate_cascade_threshold(scores, correct, 0.75) == 0.4
    assert calibrate_cascade_threshold(scores, correct, 1.0) == 0.9
    assert calibrate_cascade_threshold(scores, [0, 0, 0, 0, 0], 0.5) == math.inf
    with pytest.raises(ValueError):
        calibrate_cascade_threshold([], [], 0.5)
