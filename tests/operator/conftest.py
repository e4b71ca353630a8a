"""Operator tests: pure logic (no marker) and real-cluster tests (``cluster``; the slow ones ``slow``).

Builders of GPUProfile and MoEDeployment bodies live in ``operator_builders.py``; the fixtures that run the
operator against the local control plane live in ``test_cluster_*`` modules' shared fixtures below.
"""
