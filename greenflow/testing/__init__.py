"""Public tools for testing flows: an in-process, deterministic network of real nodes."""
from greenflow.testing.mock_network import MockNetwork, MockNode

__all__ = ["MockNetwork", "MockNode"]
