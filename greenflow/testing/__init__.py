"""Public tools for testing flows: an in-process, deterministic network of real nodes,
and replay checks of recorded checkpoints against the code installed now."""
from greenflow.testing.mock_network import MockNetwork, MockNode
from greenflow.testing.replay import FlowReplay, ReplayReport, replay_node

__all__ = ["FlowReplay", "MockNetwork", "MockNode", "ReplayReport", "assert_replays", "replay_node"]


def assert_replays(node_dir: str, apps: list[str] | None = None) -> ReplayReport:
    """Replay every unfinished checkpoint of the node stored in ``node_dir`` (read-only)
    and fail with the per-flow report unless all of them replay: for CI tests that keep
    a recorded node directory as a fixture and check each new version of the flows
    against it."""
    report = replay_node(node_dir, apps)
    if not report.ok:
        raise AssertionError(report.text())
    return report
