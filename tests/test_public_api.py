"""The public API (docs/reference/): every name it gives is importable from
`greenflow` (or `greenflow.testing`), and `__all__` lists each exactly once."""
import greenflow
import greenflow.testing

API_NAMES = [
    # section 1
    "FlowLogic", "FlowSession", "Party", "initiating_flow", "initiated_by", "startable",
    "serializable", "FlowException", "ProgressTracker", "Step", "PeerFlowInfo",
    "FlowError", "UnexpectedFlowEnd", "ReceiveTypeError", "FlowTimeout", "NonDeterminismError",
    "FlowKilled", "UnknownFlow", "NotSerializable", "NotStartable",
    # section 2
    "Node", "FlowHandle", "FlowInfo", "FlowStatus",
]


def test_every_name_api_md_gives_is_exported_once():
    for name in API_NAMES:
        assert hasattr(greenflow, name), name
        assert greenflow.__all__.count(name) == 1, name
    assert len(greenflow.__all__) == len(set(greenflow.__all__))
    assert all(hasattr(greenflow, n) for n in greenflow.__all__)


def test_errors_share_one_base_and_flow_exception_is_a_flow_error():
    for name in API_NAMES:
        obj = getattr(greenflow, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, greenflow.FlowError), name


def test_flow_status_has_the_documented_members():
    assert [s.name for s in greenflow.FlowStatus] == [
        "RUNNABLE", "SUSPENDED", "HIBERNATED", "HOSPITALIZED", "COMPLETED", "FAILED", "KILLED"]


def test_the_testing_toolkit_is_public():
    assert greenflow.testing.MockNetwork and greenflow.testing.MockNode
    for member in ("create_node", "restart_node", "run_network", "advance_clock", "notary"):
        assert hasattr(greenflow.testing.MockNetwork, member), member
