"""latency_tables: on-device latency of every unit of a search space, and a predictor.

``collect`` measures units on a device's agent; ``LatencyTable.predict`` sums them for a
network; ``evaluate`` checks predictions against networks measured whole.
"""

from .table import SHIPPED, LatencyTable, Overhead, Target, find_table, known_tables
from .units import Unit, naive_ops, units_of

__all__ = ["SHIPPED", "LatencyTable", "Overhead", "Target", "Unit", "find_table",
           "known_tables", "naive_ops", "units_of"]
