"""Hollow nodes for the scale benchmark: storage services and workers that speak the real bus
protocol and keep the real Redis records, with simulated loads and token timing."""
