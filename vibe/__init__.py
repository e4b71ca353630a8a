"""vibe: places Mixture-of-Experts experts on GPUs by their measured speed.

Subpackages are the components of the data flow (see README):
``placement`` (pure library: cost model, solvers, formats), ``agent`` (per-node GPU benchmark,
telemetry, drift, GPUProfile publisher), ``operator`` (Kopf reconciler), ``serving`` (what serving
pods run to consume a placement) and ``cluster`` (the local control plane for the demo and tests).
"""

__version__ = "0.1.0"
