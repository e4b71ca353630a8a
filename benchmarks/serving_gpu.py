"""GPU measurements for ``vibe simulate``: the non-expert parts of a serving step, per preset model.

What a step costs besides the routed experts, measured on one GPU with torch (the experts themselves are
the agent's curves, ``vibe agent bench``):

* ``attn_proj``: the attention projections of one layer (MLA: q_a, q_b, kv_a, kv_b, o; GQA: fused qkv,
  o) over n tokens, in bf16 and fp8 (``torch._scaled_mm`` with row-wise scales; activations arrive
  quantised, as an engine's fused norm+quant hands them over);
* ``moe_extra``: the router and the shared expert of one MoE layer; ``dense_mlp``: a dense layer's MLP;
  ``lm_head``: the vocabulary projection (bf16);
* ``attn_decode``: the attention core of a decode step, B requests each over C cached tokens (GQA: SDPA
  with the query group as the query length, one pass over the cache; MLA: the absorbed form, 128 heads
  over the 576-wide latent, as two batched GEMMs and a softmax, an upper bound on FlashMLA);
* ``attn_prefill``: causal attention over a chunk of n new tokens (SDPA; MLA as MHA, q/k/v 192 wide).

Every point: random data, a few distinct weight copies cycled so weights stream from HBM (>= 4x the L2),
after a 1 s pre-heat to the power cap; the median of 20 calls timed with CUDA events behind a spin kernel
(so launch latency is hidden, as a CUDA-graph engine hides it). ``--tiny`` runs the same code on the CPU
with small shapes (to test the script). Writes one JSON file with the command, device and every point.

    python3 benchmarks/serving_gpu.py --out benchmarks/results/gpu-h200-2026-12-01/nonexpert.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from vibe.simulate.models import PRESETS, ModelShape

TOKENS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384)
DECODE = [(b, c) for b in (1, 16, 64, 256) for c in (1024, 4096)]
PREFILL = (512, 2048, 8192)
FP8_MAX = 448.0


def timer(dev: torch.device, fn: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn(k)`` over ``repeats`` calls."""
    for k in range(warmup):
        fn(k)
    if dev.type != "cuda":
        out = []
        for k in range(repeats):
            t0 = time.perf_counter()
            fn(k)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)
    torch.cuda.synchronize(dev)
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)
    ]
    torch.cuda._sleep(20_000_000)  # ~10 ms: the CPU queues every call while the GPU spins
    for k, (a, b) in enumerate(ev):
        a.record()
        fn(k)
        b.record()
    torch.cuda.synchronize(dev)
    return statistics.median(a.elapsed_time(b) / 1e3 for a, b in ev)


def q_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (t.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp_(min=1e-12)
    return (t / scale).to(torch.float8_e4m3fn), scale


class Gemms:
    """A chain of GEMMs (in, out) with ``copies`` distinct weight sets, run over n tokens."""

    def __init__(self, dev: torch.device, gemms: list[tuple[int, int]], dtype: str, max_n: int, l2: int):
        self.dev, self.dtype = dev, dtype
        per = sum(a * b for a, b in gemms) * (1 if dtype == "fp8" else 2)
        self.copies = max(2, min(8, math.ceil(4 * l2 / max(per, 1))))
        self.w: list[list[Any]] = []
        for _ in range(self.copies):
            ws = []
            for a, b in gemms:
                w = torch.randn(b, a, device=dev) * a**-0.5
                if dtype == "fp8" and b % 16 == 0:  # (a router with 8 outputs stays bf16, as engines run it)
                    wq, sc = q_rows(w)
                    ws.append((wq, sc.t().contiguous()))  # [out, in] fp8, [1, out] scales
                else:
                    ws.append(w.to(torch.bfloat16))
            self.w.append(ws)
        width = max(a for a, _ in gemms)
        x = torch.randn(max_n + 16, width, device=dev)
        self.xb = x.to(torch.bfloat16)
        self.x = q_rows(x) if dtype == "fp8" else self.xb
        self.gemms = gemms

    def __call__(self, n: int, k: int) -> None:
        ws = self.w[k % self.copies]
        for (a, b), w in zip(self.gemms, ws, strict=True):
            if self.dtype == "fp8" and b % 16 == 0:
                m = -(-n // 16) * 16  # fp8 GEMMs want M % 16 == 0; engines pad the same way
                xq, xs = self.x[0][:m, :a], self.x[1][:m]
                torch._scaled_mm(xq, w[0].t(), scale_a=xs, scale_b=w[1], out_dtype=torch.bfloat16)
            elif self.dtype == "fp8":
                torch.matmul(self.xb[:n, :a], w.t())
            else:
                torch.matmul(self.x[:n, :a], w.t())


def curve(
    dev: torch.device, gemms: list[tuple[int, int]], dtype: str, tokens: tuple[int, ...], l2: int
) -> dict:
    g = Gemms(dev, gemms, dtype, max(tokens), l2)
    secs = [timer(dev, lambda k, n=n, g=g: g(n, k)) for n in tokens]
    return {"tokens": list(tokens), "seconds": secs}


def attn_decode(dev: torch.device, m: ModelShape, grid: list[tuple[int, int]]) -> list[dict]:
    out = []
    bf = torch.bfloat16
    for b, c in grid:
        if m.attention == "mla":
            lat = m.kv_lora_rank + m.rope_dim
            q = torch.randn(b, m.heads, lat, device=dev, dtype=bf)
            kv = [torch.randn(b, c, lat, device=dev, dtype=bf) for _ in range(2)]

            def fn(k: int, q: Any = q, kv: Any = kv, lat: int = lat) -> None:
                s = torch.bmm(q, kv[k % 2].transpose(1, 2)) * (1.0 / math.sqrt(lat))
                p = torch.softmax(s.float(), dim=-1).to(bf)
                torch.bmm(p, kv[k % 2][:, :, : m.kv_lora_rank])
        else:
            g = m.heads // m.kv_heads
            q = torch.randn(b, m.kv_heads, g, m.head_dim, device=dev, dtype=bf)
            kvs = [
                (
                    torch.randn(b, m.kv_heads, c, m.head_dim, device=dev, dtype=bf),
                    torch.randn(b, m.kv_heads, c, m.head_dim, device=dev, dtype=bf),
                )
                for _ in range(2)
            ]

            def fn(k: int, q: Any = q, kvs: Any = kvs) -> None:
                kk, vv = kvs[k % 2]
                torch.nn.functional.scaled_dot_product_attention(q, kk, vv)

        secs = timer(dev, fn)
        out.append({"batch": b, "context": c, "seconds": secs})
        del fn
    return out


def attn_prefill(dev: torch.device, m: ModelShape, grid: tuple[int, ...]) -> list[dict]:
    out = []
    bf = torch.bfloat16
    if m.attention == "mla":
        hq = hk = m.heads
        d = m.nope_dim + m.rope_dim
    else:
        hq, hk, d = m.heads, m.kv_heads, m.head_dim
    for n in grid:
        q = torch.randn(1, hq, n, d, device=dev, dtype=bf)
        k = torch.randn(1, hk, n, d, device=dev, dtype=bf)
        v = torch.randn(1, hk, n, d, device=dev, dtype=bf)
        if hk != hq:
            k = k.repeat_interleave(hq // hk, dim=1)
            v = v.repeat_interleave(hq // hk, dim=1)

        def fn(_k: int, q: Any = q, k: Any = k, v: Any = v) -> None:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        out.append({"tokens": n, "prefix": 0, "seconds": timer(dev, fn)})
        del q, k, v, fn
    return out


def fp8_check(dev: torch.device) -> dict[str, Any]:
    """The agent's fused fp8 expert (vibe.agent.bench) against a float32 reference of the same weights."""
    from vibe.agent.bench import ExpertBank, fused_fp8_supported
    from vibe.agent.shapes import ExpertShape

    why = fused_fp8_supported(torch, dev)
    if why:
        return {"fused": False, "why": why}
    bank = ExpertBank(torch, ExpertShape(7168, 2048, "fp8"), dev, experts=2, max_tokens=512, seed=0)
    errs = {}
    for n in (1, 5, 16, 128, 300, 512):
        y = bank(0, bank.inputs(n)).float()  # [FP8_GROUP, n, H]
        xq, xs, _offs, _n = bank.inputs(n)
        rows = xq.shape[0] // y.shape[0]
        worst = 0.0
        for j in range(y.shape[0]):
            x = xq[j * rows : j * rows + n].float() * xs[j * rows : j * rows + n, None]
            w13 = bank.w13[0][j].float().t() * bank.s13[0][j][:, None]
            w2 = bank.w2[0][j].float().t() * bank.s2[0][j][:, None]
            h = x @ w13.t()
            ref = (torch.nn.functional.silu(h[:, :2048]) * h[:, 2048:]) @ w2.t()
            worst = max(worst, float((y[j] - ref).norm() / ref.norm()))
        errs[n] = round(worst, 4)
    return {"fused": True, "kernel": bank.kernel, "pad16": bank.pad16, "relative_error": errs}


def tiny(m: ModelShape) -> ModelShape:
    """The same structure at 1/64 of the widths (a CPU test of this script)."""
    return replace(
        m,
        hidden=128,
        heads=4,
        kv_heads=min(m.kv_heads, 4) if m.attention == "gqa" else 4,
        head_dim=32,
        vocab=512,
        expert_intermediate=64,
        shared_intermediate=64 if m.shared_intermediate else 0,
        dense_intermediate=128,
        q_lora_rank=min(m.q_lora_rank, 64),
        kv_lora_rank=min(m.kv_lora_rank, 64),
        rope_dim=min(m.rope_dim, 16),
        nope_dim=min(m.nope_dim, 32),
        v_head_dim=min(m.v_head_dim, 32),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(PRESETS))
    ap.add_argument("--tiny", action="store_true", help="CPU, small shapes: tests this script")
    args = ap.parse_args()
    dev = torch.device("cuda:0" if torch.cuda.is_available() and not args.tiny else "cpu")
    tokens = (1, 8, 32) if args.tiny else TOKENS
    decode = [(1, 64), (4, 128)] if args.tiny else DECODE
    prefill = (16, 64) if args.tiny else PREFILL
    fp8 = dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 9)
    l2 = (
        int(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0))
        if dev.type == "cuda"
        else 2**20
    )
    result: dict[str, Any] = {
        "command": "python3 " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "models": {},
    }
    t0 = time.perf_counter()
    if dev.type == "cuda":  # pre-heat to the power cap (~1 s of big bf16 GEMMs)
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            for _ in range(8):
                a @ a
            torch.cuda.synchronize(dev)
        del a
    for name in args.models.split(","):
        m = tiny(PRESETS[name]) if args.tiny else PRESETS[name]
        entry: dict[str, Any] = {"shape": m.__dict__}
        for part, gemms in (
            ("attn_proj", m.attention_gemms()),
            ("moe_extra", m.moe_extra_gemms()),
            ("dense_mlp", m.dense_mlp_gemms()),
        ):
            if not gemms:
                continue
            entry[part] = {"bf16": curve(dev, gemms, "bf16", tokens, l2)}
            if fp8:
                entry[part]["fp8"] = curve(dev, gemms, "fp8", tokens, l2)
        entry["lm_head"] = {"bf16": curve(dev, [(m.hidden, m.vocab)], "bf16", tokens[:6], l2)}
        entry["attn_decode"] = attn_decode(dev, m, decode)
        entry["attn_prefill"] = attn_prefill(dev, m, prefill)
        result["models"][name] = entry
        print(f"{name}: done at {time.perf_counter() - t0:.1f} s", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if dev.type == "cuda":
        result["agent_fp8_check"] = fp8_check(dev)
        print("agent fp8 check:", json.dumps(result["agent_fp8_check"]), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, e in result["models"].items():
        p = e["attn_proj"]["bf16"]
        print(
            f"{name}: attn_proj bf16 {p['seconds'][0] * 1e6:.1f} us @1 .. {p['seconds'][-1] * 1e3:.2f} ms "
            f"@{p['tokens'][-1]}; decode attn {e['attn_decode'][-1]['seconds'] * 1e3:.2f} ms "
            f"@B{e['attn_decode'][-1]['batch']}xC{e['attn_decode'][-1]['context']}"
        )


if __name__ == "__main__":
    main()
