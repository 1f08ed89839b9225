import pytest

from berth.domain.delivery import DeliveryPolicy, Outcome, check_move
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.errors import IllegalTransition

policy = DeliveryPolicy(max_attempts=3, backoff_base=0.2, backoff_max=1.0)


def test_a_reply_is_final_even_when_it_is_a_jsonrpc_error():
    v = policy.judge(Outcome.REPLIED, attempts=2, planned=False, crashed=False)
    assert v.status is D.DONE and not v.count_attempt


@pytest.mark.parametrize(
    "outcome,planned",
    [(Outcome.DRAINING, False), (Outcome.TRANSPORT, True), (Outcome.DRAINING, True)],
)
def test_planned_interruptions_are_deferrals_that_never_count(outcome, planned):
    for attempts in range(0, 10):
        v = policy.judge(outcome, attempts=attempts, planned=planned, crashed=False)
        assert v.status is D.QUEUED and not v.count_attempt


def test_unplanned_failures_count_back_off_and_end_dead():
    v1 = policy.judge(Outcome.TRANSPORT, attempts=0, planned=False, crashed=False)
    v2 = policy.judge(Outcome.TRANSPORT, attempts=1, planned=False, crashed=False)
    assert (v1.status, v1.count_attempt, v1.retry_in) == (D.QUEUED, True, 0.2)
    assert v2.retry_in == 0.4
    v3 = policy.judge(Outcome.TRANSPORT, attempts=2, planned=False, crashed=True)
    assert v3.status is D.DEAD and v3.reason.startswith("poison") and "3 attempts" in v3.reason
    v3b = policy.judge(Outcome.TRANSPORT, attempts=2, planned=False, crashed=False)
    assert v3b.status is D.DEAD and not v3b.reason.startswith("poison")


def test_backoff_is_capped():
    assert policy.backoff(50) == 1.0


def test_rejected_is_dead_at_once():
    v = policy.judge(Outcome.REJECTED, attempts=0, planned=False, crashed=False)
    assert v.status is D.DEAD


@pytest.mark.parametrize(
    "src,dst", [(D.DONE, D.QUEUED), (D.QUEUED, D.DONE), (D.CANCELED, D.IN_FLIGHT), (D.DONE, D.DEAD)]
)
def test_delivery_moves_are_checked(src, dst):
    with pytest.raises(IllegalTransition):
        check_move(src, dst)


def test_operator_retry_moves_are_allowed():
    for src in (D.DEAD, D.CANCELED, D.EXPIRED):
        assert check_move(src, D.QUEUED) is D.QUEUED


@pytest.mark.parametrize("planned", [False, True])
@pytest.mark.parametrize("crashed", [False, True])
def test_a_request_that_never_reached_the_agent_is_never_an_attempt(planned, crashed):
    """Connection refused says nothing about the message: retried, never counted, never poison."""
    for attempts in range(0, 10):
        v = policy.judge(Outcome.UNREACHED, attempts=attempts, planned=planned, crashed=crashed)
        assert v.status is D.QUEUED and not v.count_attempt and v.retry_in > 0
