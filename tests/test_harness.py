"""The test harness stops what it starts: a server's whole process group, also when it never came up."""

import pytest

from .conftest import STARTED, LiveServer, group_members


def started_in(server: LiveServer) -> list[int]:
    return [pid for pid, (what, _) in STARTED.items() if str(server.workdir) in what]


@pytest.mark.timeout(120)
def test_stop_reaps_the_workers_of_a_killed_supervisor(tmp_path):
    server = LiveServer(tmp_path / "server", {}, workers=2).start()
    try:
        group = server.process.pid
        assert len(group_members(group)) >= 3  # the supervisor and its two workers
        server.process.kill()  # as a crash test does: the workers are orphaned, still serving
        server.process.wait(30)
        assert len(group_members(group)) >= 2
    finally:
        server.stop()
    assert group_members(group) == []


@pytest.mark.timeout(120)
def test_a_server_that_never_answered_is_stopped(tmp_path):
    server = LiveServer(tmp_path / "server", {})
    with pytest.raises(RuntimeError, match="did not answer within 0 s"):
        server.start(timeout=0)  # the deadline has passed before the first poll
    assert server.process is None  # stop() ran
    assert [group_members(pid) for pid in started_in(server)] == [[]]


@pytest.mark.timeout(120)
def test_a_server_that_exited_at_start_leaves_nothing(tmp_path):
    server = LiveServer(tmp_path / "server", {"render": {"workers": -1}})
    with pytest.raises(RuntimeError, match="server exited"):
        server.start()
    assert server.process is None
    assert [group_members(pid) for pid in started_in(server)] == [[]]
