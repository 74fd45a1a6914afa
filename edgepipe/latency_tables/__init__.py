"""latency_tables: on-device latency of every unit of a search space, and a predictor.

``collect`` measures units on a device's agent, ``adapt`` makes a table for a new device
from other tables and minutes of measurement there, ``estimate.Estimator`` predicts a network's
median, p90 and best case with intervals, and ``evaluate`` checks predictions against networks
measured whole.
"""

from .table import (
    REFERENCE_TABLE,
    SHIPPED,
    LatencyTable,
    Overhead,
    Target,
    find_table,
    known_tables,
)
from .units import Unit, naive_ops, units_of

__all__ = ["REFERENCE_TABLE", "SHIPPED", "LatencyTable", "Overhead", "Target", "Unit", "find_table",
           "known_tables", "naive_ops", "units_of"]
