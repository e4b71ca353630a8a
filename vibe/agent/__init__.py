"""vibe.agent: the per-node GPU agent (a DaemonSet pod) -- measure each GPU, watch it, publish a GPUProfile.

What it owns: the curve ``t_g(n)`` of every GPU on its node for every model shape a MoEDeployment names,
the GPU's drift verdict, and the node's ``GPUProfile`` (field manager ``vibe-agent``). The operator reads
those profiles; the agent imports nothing of the operator or the serving helpers (an import contract).

Modules, from the GPU up:

* ``bench`` (torch: one expert's FFN over n tokens), ``cuda`` (does the driver run this torch),
  ``telemetry`` (NVML reads), ``podresources`` (the kubelet's GPU-to-pod map);
* ``drift`` (EWMA with hysteresis), ``shapes`` (which shapes and token counts to benchmark),
  ``profiler`` (who measures: torch or the simulator), ``simulate`` (simulated GPUs for the demo and
  tests);
* ``node`` (one node's decisions: telemetry and benchmarks -> the GPUProfile to publish; free of
  Kubernetes and torch), ``profile`` (the GPUProfile object);
* ``publish`` (the API calls: server-side apply, Leases, Events), ``exporter`` (Prometheus metrics),
  ``runner`` (the main loop), ``wiring`` (the process put together), ``cli`` (``vibe agent ...``).
"""
