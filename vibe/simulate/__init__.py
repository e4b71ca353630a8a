"""vibe.simulate: what a placement does to serving: TTFT, TPOT, throughput, SLO attainment, goodput.

A pure library like ``vibe.placement`` (numpy; matplotlib only for ``--plot``; nothing Kubernetes), and
the ``vibe simulate`` command. Modules, each importing only those above it:

* ``constants``  every modelling constant with its value, unit and source
* ``models``     the non-expert shapes of DeepSeek-V3, Qwen3-235B, Mixtral, or a Hugging Face config.json
* ``workload``   seeded requests: Poisson (or bursty) arrivals, prompt and output lengths
* ``costs``      a step's non-expert time (measured H200 curves, ``data/h200.json``), expert and
                 dispatch/combine time through the placement library's one evaluator, per-step routing noise
* ``engine``     the scheduler, per attention rank: continuous batching, chunked prefill, running cap,
                 KV capacity; SGLang's prefill-first or vLLM's decode-first
* ``simulator``  policies x groups (colocated or PD-disaggregated), drift and re-placement
* ``report``     metrics, goodput by bisection over seeds with its interval, the ``--output`` document
* ``plot``, ``cli``  ``--plot`` and ``vibe simulate``

Why a simulator of its own: no public serving simulator models expert parallelism (Vidur has no MoE/EP),
and the question users ask ("what happens to my TTFT at my request rate?") needs the operator's own cost
model and curves. docs/serving.md says what it leaves out.
"""
