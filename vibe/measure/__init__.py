"""vibe.measure: tools that run placements on real GPUs to measure them; nothing a deployment runs.

``reference_ep`` is a reference expert-parallel MoE layer: it reads a placement volume exactly as
``vibe serving init`` does (``vibe.serving.emit``) and runs real tokens through it over
``torch.distributed``, so ``benchmarks/ep_layer.py`` can time placements next to the cost model's
predictions. Layer: beside the operator and the agent (it imports ``vibe.serving``'s reader); no
component imports it.
"""
