import pytest

from berth.domain.errors import IllegalTransition
from berth.domain.lifecycle import DELIVERABLE, PLANNED_INTERRUPTION, can_move, check_move
from berth.domain.lifecycle import WorkspaceState as S


def test_a_restart_walks_the_table():
    path = [S.ONLINE, S.DRAINING, S.STOPPING, S.PROVISIONING, S.ONLINE]
    for a, b in zip(path, path[1:], strict=False):
        assert check_move(a, b) is b


@pytest.mark.parametrize(
    "src,dst",
    [
        (S.REMOVED, S.ONLINE),
        (S.PAUSED, S.ONLINE),
        (S.OFFLINE, S.ONLINE),
        (S.FAILED, S.ONLINE),
        (S.PAUSED, S.DRAINING),
    ],
)
def test_illegal_moves_raise(src, dst):
    with pytest.raises(IllegalTransition) as e:
        check_move(src, dst)
    assert src.value in str(e.value) and dst.value in str(e.value)


def test_removed_is_terminal_and_staying_put_is_allowed():
    assert all(not can_move(S.REMOVED, s) for s in S if s is not S.REMOVED)
    assert all(can_move(s, s) for s in S)


def test_only_online_is_deliverable_and_crashes_are_not_planned():
    assert DELIVERABLE == {S.ONLINE}
    assert S.OFFLINE not in PLANNED_INTERRUPTION and S.ONLINE not in PLANNED_INTERRUPTION
    assert S.DRAINING in PLANNED_INTERRUPTION and S.STOPPING in PLANNED_INTERRUPTION
