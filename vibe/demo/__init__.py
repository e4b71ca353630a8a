"""`vibe demo`: the whole loop on the local control plane, narrated step by step.

Fake GPU nodes (kwok) carry the chart's resources; the real operator and a simulated agent run as local
processes authenticated as the chart's ServiceAccounts; a DeepSeek-V3 MoEDeployment is placed, one GPU
throttles on the agent's drift schedule, and the re-placement is shown as the API server and the
metrics endpoints report it (never from the demo's own variables).
"""
