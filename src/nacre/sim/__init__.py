"""Layer 6: nacre's simulated SGX/TDX platform (DESIGN.md §5).

A simulated platform emits real SGX v3 / TDX v4 quote bytes signed by a simulation PKI that mirrors
Intel's ("nacre Simulation Root CA" -> PCK Platform CA -> PCK leaf with Intel's SGX extensions), and
publishes matching signed TCB info and QE identity, so the production verification path runs
unchanged. Its evidence verifies only when the caller trusts the simulation root
(``TrustRoots.simulation()``, ``nacre verify --trust-sim``), and results say ``sim: true``.
"""

from __future__ import annotations

from nacre.sim.measure import Manifest, ManifestEvent, ManifestFile, Measurement, measure
from nacre.sim.platform import SIM_FMSPC, SimPlatform, SimTee, default_dir

__all__ = [
    "SIM_FMSPC",
    "Manifest",
    "ManifestEvent",
    "ManifestFile",
    "Measurement",
    "SimPlatform",
    "SimTee",
    "default_dir",
    "measure",
]
