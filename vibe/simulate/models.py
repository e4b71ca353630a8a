"""The non-expert shape of a model: what a serving step costs besides the routed experts.

Role in the simulator: ``steptime`` prices attention, the dense layers, the shared expert, the router
and the LM head from these shapes (through measured curves where ``benchmarks/serving_gpu.py`` measured
them, a roofline otherwise); ``engine`` sizes the KV cache from ``kv_bytes_per_token``.

Presets are the published Hugging Face ``config.json`` values of DeepSeek-V3, Qwen3-235B-A22B and
Mixtral-8x7B; ``from_hf_config`` reads any such file (DeepSeek-style MLA or grouped-query attention).
Pure Python, no numpy: the GPU measurement script imports it on a machine that has only torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vibe.simulate.constants import value


@dataclass(frozen=True)
class ModelShape:
    """One MoE model's shape, as far as serving cost goes.

    Attributes:
        name: preset name (``deepseek-v3``, ``qwen3-235b``, ``mixtral-8x7b``) or the config's model type.
        hidden: hidden size H.
        layers: transformer layers; the first ``dense_layers`` have a dense MLP, the rest are MoE.
        experts, top_k, expert_intermediate: routed experts, experts per token, expert FFN width.
        shared_intermediate: width of the shared expert(s) every token also runs (0: none).
        dense_intermediate: MLP width of the dense layers.
        attention: ``"mla"`` (DeepSeek's multi-head latent attention) or ``"gqa"``.
        heads, kv_heads, head_dim: query heads, KV heads (GQA), head size (GQA).
        q_lora_rank, kv_lora_rank, rope_dim, nope_dim, v_head_dim: MLA's ranks and head sizes.
        vocab: vocabulary size (LM head).
        dtype: the dtype the experts are served in (``fp8`` or ``bf16``).
    """

    name: str
    hidden: int
    layers: int
    dense_layers: int
    experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int
    dense_intermediate: int
    attention: str
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    dtype: str = "bf16"
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    nope_dim: int = 0
    v_head_dim: int = 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    def attention_gemms(self) -> list[tuple[int, int]]:
        """(in, out) of the attention projections one token passes through in one layer."""
        h = self.hidden
        if self.attention == "mla":
            qk = self.nope_dim + self.rope_dim
            return [
                (h, self.q_lora_rank),  # q_a
                (self.q_lora_rank, self.heads * qk),  # q_b
                (h, self.kv_lora_rank + self.rope_dim),  # kv_a (latent + rope key)
                (self.kv_lora_rank, self.heads * (self.nope_dim + self.v_head_dim)),  # kv_b
                (self.heads * self.v_head_dim, h),  # o
            ]
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return [(h, q + 2 * kv), (q, h)]  # fused qkv, o

    def moe_extra_gemms(self) -> list[tuple[int, int]]:
        """(in, out) of what an MoE layer runs besides the routed experts: router, shared expert."""
        out = [(self.hidden, self.experts)]
        if self.shared_intermediate:
            out += [(self.hidden, 2 * self.shared_intermediate), (self.shared_intermediate, self.hidden)]
        return out

    def dense_mlp_gemms(self) -> list[tuple[int, int]]:
        """(in, out) of a dense layer's SwiGLU MLP (empty when every layer is MoE)."""
        if not self.dense_layers:
            return []
        return [(self.hidden, 2 * self.dense_intermediate), (self.dense_intermediate, self.hidden)]

    def kv_elements_per_token_layer(self) -> int:
        """KV cache elements one token keeps in one layer (MLA: the latent and the rope key)."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.rope_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token keeps over all layers."""
        return self.kv_elements_per_token_layer() * self.layers * int(value("kv_bytes_per_element"))

    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query, key) pair over all heads of one layer (QK^T and PV, 2 FLOPs per MAC)."""
        if self.attention == "mla":  # prefill runs MLA as MHA with qk 192 and v 128 per head
            return 2.0 * self.heads * (self.nope_dim + self.rope_dim + self.v_head_dim)
        return 2.0 * self.heads * 2 * self.head_dim

    def expert_bytes(self) -> int:
        """Weight bytes of one routed expert in its serving dtype (gate, up, down)."""
        per = 1 if self.dtype == "fp8" else 2
        return 3 * self.hidden * self.expert_intermediate * per

    def non_expert_weight_bytes(self) -> int:
        """Weight bytes every GPU holds besides its expert slots (attention, dense layers, shared expert,
        router, embeddings and LM head; data-parallel attention replicates them), in the serving dtype."""
        per = 1 if self.dtype == "fp8" else 2

        def size(gemms: list[tuple[int, int]]) -> int:
            return sum(a * b for a, b in gemms)

        total = self.layers * size(self.attention_gemms())
        total += self.moe_layers * size(self.moe_extra_gemms())
        total += self.dense_layers * size(self.dense_mlp_gemms())
        return total * per + 2 * self.vocab * self.hidden * 2  # embeddings and LM head stay bf16

    def with_dtype(self, dtype: str) -> ModelShape:
        return replace(self, dtype=dtype)


PRESETS: dict[str, ModelShape] = {
    # deepseek-ai/DeepSeek-V3 config.json: 61 layers (first_k_dense_replace 3), 256 routed experts top-8,
    # 1 shared expert, MLA (q_lora_rank 1536, kv_lora_rank 512, rope 64, nope 128, v 128), served in fp8.
    "deepseek-v3": ModelShape(
        name="deepseek-v3",
        hidden=7168,
        layers=61,
        dense_layers=3,
        experts=256,
        top_k=8,
        expert_intermediate=2048,
        shared_intermediate=2048,
        dense_intermediate=18432,
        attention="mla",
        heads=128,
        kv_heads=128,
        head_dim=128,
        vocab=129280,
        dtype="fp8",
        q_lora_rank=1536,
        kv_lora_rank=512,
        rope_dim=64,
        nope_dim=128,
        v_head_dim=128,
    ),
    # Qwen/Qwen3-235B-A22B config.json: 94 MoE layers, 128 experts top-8 (1536 wide), GQA 64/4 x 128.
    "qwen3-235b": ModelShape(
        name="qwen3-235b",
        hidden=4096,
        layers=94,
        dense_layers=0,
        experts=128,
        top_k=8,
        expert_intermediate=1536,
        shared_intermediate=0,
        dense_intermediate=12288,
        attention="gqa",
        heads=64,
        kv_heads=4,
        head_dim=128,
        vocab=151936,
    ),
    # mistralai/Mixtral-8x7B-v0.1 config.json: 32 layers, 8 experts top-2 (14336 wide), GQA 32/8 x 128.
    "mixtral-8x7b": ModelShape(
        name="mixtral-8x7b",
        hidden=4096,
        layers=32,
        dense_layers=0,
        experts=8,
        top_k=2,
        expert_intermediate=14336,
        shared_intermediate=0,
        dense_intermediate=14336,
        attention="gqa",
        heads=32,
        kv_heads=8,
        head_dim=128,
        vocab=32000,
    ),
}

#: Other spellings accepted by ``--model``.
ALIASES = {"deepseek": "deepseek-v3", "qwen3": "qwen3-235b", "mixtral": "mixtral-8x7b"}


class ModelError(ValueError):
    """A model name or config file that cannot be used (one line, for the CLI)."""


def preset(name: str) -> ModelShape:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ModelError(f"unknown model {name!r}: one of {', '.join(PRESETS)}, or a path to a config.json")
    return PRESETS[key]


def from_hf_config(cfg: dict[str, Any], name: str = "") -> ModelShape:
    """A ModelShape from a Hugging Face ``config.json`` of an MoE model (DeepSeek, Qwen3-MoE, Mixtral)."""

    def get(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in cfg and cfg[k] is not None:
                return cfg[k]
        if default is None:
            raise ModelError(f"config.json has none of {', '.join(keys)}")
        return default

    try:
        hidden = int(get("hidden_size"))
        layers = int(get("num_hidden_layers"))
        experts = int(get("n_routed_experts", "num_experts", "num_local_experts"))
        top_k = int(get("num_experts_per_tok", "moe_topk"))
        expert_i = int(get("moe_intermediate_size", "intermediate_size"))
        heads = int(get("num_attention_heads"))
        kv_heads = int(get("num_key_value_heads", default=heads))
        head_dim = int(get("head_dim", default=hidden // heads))
        vocab = int(get("vocab_size"))
        dense_i = int(get("intermediate_size", default=expert_i))
        dense_layers = int(get("first_k_dense_replace", default=0))
        shared = int(get("n_shared_experts", default=0)) * expert_i
        kv_lora = int(get("kv_lora_rank", default=0))
    except (TypeError, ValueError) as e:
        raise ModelError(f"config.json: a size is not an integer ({e})") from None
    mla = kv_lora > 0
    quant = cfg.get("quantization_config") or {}
    dtype = "fp8" if isinstance(quant, dict) and quant.get("quant_method") == "fp8" else "bf16"
    shape = ModelShape(
        name=name or str(cfg.get("model_type") or "model"),
        hidden=hidden,
        layers=layers,
        dense_layers=dense_layers,
        experts=experts,
        top_k=top_k,
        expert_intermediate=expert_i,
        shared_intermediate=shared,
        dense_intermediate=dense_i,
        attention="mla" if mla else "gqa",
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        dtype=dtype,
        q_lora_rank=int(get("q_lora_rank", default=0)) if mla else 0,
        kv_lora_rank=kv_lora,
        rope_dim=int(get("qk_rope_head_dim", default=0)) if mla else 0,
        nope_dim=int(get("qk_nope_head_dim", default=0)) if mla else 0,
        v_head_dim=int(get("v_head_dim", default=0)) if mla else 0,
    )
    if min(hidden, layers, experts, top_k, expert_i, heads, kv_heads, head_dim, vocab) <= 0:
        raise ModelError("config.json: sizes must be positive")
    if top_k > experts or dense_layers >= layers:
        raise ModelError("config.json: top-k above the expert count, or no MoE layer")
    return shape


def resolve(model: str) -> ModelShape:
    """A preset name, or a path to a Hugging Face config.json."""
    path = Path(model)
    if model.lower() in PRESETS or model.lower() in ALIASES or not path.suffix:
        return preset(model)
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"cannot read model config {model!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"model config {model!r} is not JSON") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"model config {model!r} must be a JSON object")
    return from_hf_config(cfg, path.parent.name or path.stem)
