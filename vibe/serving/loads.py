"""Expert loads back in, SGLang's recorder driven over HTTP (the dump's reading is ``vibe.engines.sglang``).

SGLang records expert choices when launched with ``--expert-distribution-recorder-mode stat``
(``python/sglang/srt/eplb/expert_distribution.py`` in sgl-project/sglang). ``POST
/start_expert_distribution_record`` starts it, ``POST /dump_expert_distribution_record`` makes rank 0
``torch.save`` a dict into ``$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` (file
``expert_distribution_recorder_<unix time>.pt``) and clears the buffer while recording goes on:

* ``logical_count``: int tensor ``[passes, num_layers, num_logical_experts]`` -- per forward pass, per
  layer, how many (token, top-k choice) pairs went to each logical expert, summed over all ranks. The
  buffer is circular (``--expert-distribution-recorder-buffer-size``, default 1000 passes): rows never
  filled stay zero. ``num_layers`` is the model's ``num_hidden_layers`` (dense layers included, their
  rows zero);
* ``rank``, ``average_utilization_rate_over_window``: not needed here.

``vibe.engines.loads.to_loads`` turns that into what the placement solver wants, tokens per forward step
per expert over the MoE layers only. A ``[layers, experts]`` count (already summed, e.g. a JSON
export) is divided by ``--steps`` when given. TensorRT-LLM's statistics need no HTTP: it writes them
into ``EXPERT_STATISTIC_PATH`` by itself (``vibe.engines.trtllm.loads``).

The result is written with server-side apply (field manager ``vibe-loads``) as ``{"loads": [[...]]}``
under the key the MoEDeployment's ``spec.workload.configMapRef`` names.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)

DUMP_GLOB = "expert_distribution_recorder_*.pt"


# ---------------------------------------------------------------- the engine's recorder, over HTTP


def _post(url: str, timeout: float) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as e:
        raise ServingError("ApplyFailed", f"POST {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServingError("ApplyFailed", f"POST {url} failed: {getattr(e, 'reason', e)}") from None


def start_recording(engine_url: str, timeout: float = 60.0) -> None:
    """``POST /start_expert_distribution_record`` (clears what was recorded so far)."""
    _post(engine_url.rstrip("/") + "/start_expert_distribution_record", timeout)


def dump_recording(engine_url: str, recorder_dir: str, timeout: float = 120.0, poll: float = 1.0) -> Path:
    """``POST /dump_expert_distribution_record`` and wait for the new ``.pt`` file rank 0 writes.

    Returns:
        The path of the new dump file (in ``recorder_dir``, the engine's
        ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``, shared through an emptyDir).
    """
    before = set(glob.glob(os.path.join(recorder_dir, DUMP_GLOB)))
    _post(engine_url.rstrip("/") + "/dump_expert_distribution_record", timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(os.path.join(recorder_dir, DUMP_GLOB))) - before, key=os.path.getmtime)
        if new:
            path = Path(new[-1])
            # torch.save writes in place: wait until the size stops changing
            size = -1
            while size != path.stat().st_size:
                size = path.stat().st_size
                time.sleep(poll / 4)
            return path
        time.sleep(poll)
    raise ServingError(
        "ApplyFailed",
        f"no new {DUMP_GLOB} in {recorder_dir} within {timeout:.0f}s; is it the engine's"
        " SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, and is this the rank-0 pod?",
    )
