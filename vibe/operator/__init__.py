"""The vibe operator: MoEDeployments in, placement ConfigMaps and status out.

Layers, importing downward only (the handlers are thin, the decisions are pure):

* ``handlers``    — Kopf registrations: indices of pods, GPUProfiles and MoEDeployments (nodes are listed
  per reconcile, not watched); the per-MoEDeployment worker (a Kopf daemon) and the watch handlers that
  wake the workers a change affects. ``kopf_private`` is the one reach into Kopf's internals (a daemon
  without a finalizer), pinned by its test.
* ``reconciling`` — one reconcile of one MoEDeployment: read the world, plan, write the ConfigMap,
  patch status, post Events, record metrics.
* ``kube``        — the few API calls the reconciler makes (sync client, run in threads).
* ``compute``     — runs the placement work in worker processes, off the event loop.
* ``planning``    — pure: what to do given the inputs and the placement in service (solve, re-place
  incrementally, only report drift, or nothing), priced by ``vibe.placement``.
* ``spec`` / ``gpus`` / ``workload`` / ``output`` / ``conditions`` / ``status`` — pure: parse the spec,
  resolve GPUs and curves, read loads, render and read back the ConfigMap, shape the status.
* ``metrics`` / ``settings`` / ``cli`` — Prometheus metrics, run-time settings, ``vibe operator``.
"""
