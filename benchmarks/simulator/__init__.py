"""A discrete-event cluster simulator that drives the scheduler's and the storage service's
real pure policies against simulated nodes (`simulate(Scenario) -> Result`)."""

from .scenario import Arrival, ColdStartRecord, RequestRecord, Result, Scenario
from .sim import simulate

__all__ = ["Arrival", "ColdStartRecord", "RequestRecord", "Result", "Scenario", "simulate"]
