"""vibe.serving: what serving pods run -- the placement ConfigMap in, the engine's files and updates out.

What it owns: reading the mounted ``<name>-placement`` ConfigMap the way the engine will see it (one
kubelet snapshot, the content hash checked, generations never older), fitting it to the engine as launched
through its ``vibe.engines`` record, writing the engine's files, following newer placements, and sending
the engine's expert statistics back as loads. It shares with the operator only ``vibe.contract`` and
``vibe.engines`` (the operator imports nothing of it: an import contract).

Modules:

* ``snapshot`` (one consistent read of a mounted ConfigMap), ``stamp`` (generation and hash),
  ``state`` (what this pod applied; the never-older rule), ``emit`` (``vibe serving init``: the engine's
  files), ``rankmap`` (remap onto the engine's actual rank order);
* ``sidecar`` (``vibe serving watch``) and ``update_policies`` (restart, notify, leave it to vLLM);
* ``export`` and ``loads`` (``vibe serving export-loads``: statistics -> the loads ConfigMap),
  ``kube`` (the few API calls);
* ``vllm_plugin`` and ``vllm_eplb`` (vibe as vLLM's EPLB policy, loaded inside vLLM);
* ``errors`` (``ServingError``), ``cli`` (``vibe serving ...``).

The reference expert-parallel layer that runs placements on GPUs for measurement is ``vibe.measure``,
not here: serving pods do not run it.
"""
