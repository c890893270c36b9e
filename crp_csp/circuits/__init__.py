"""Circuits: the lower-layer units that carry a unit's relevance, found by conditional attribution, with labels."""
from .circuit import (
    Circuit, CircuitEdge, CircuitNode, build_circuit, node_key, parse_node, root_samples, saved_labels,
)
from .plot import plot_circuit

__all__ = ["Circuit", "CircuitEdge", "CircuitNode", "build_circuit", "node_key", "parse_node", "plot_circuit",
           "root_samples", "saved_labels"]
