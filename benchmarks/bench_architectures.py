"""The architecture table: which architectures the scorers serve exactly, and how exactly.

    .venv/bin/python benchmarks/bench_architectures.py [--device cpu|cuda] [--n 5]

For each tiny random model of tests/test_architectures.py (the real config classes:
Llama-3 with llama3 rope scaling, Qwen2.5 and Qwen3 with a sliding window, Gemma-3 text
and its multimodal wrapper, Gemma-2, Mistral, Phi-3, OLMo-2, GPT-2) on the word task's
first --n states:

- float32: max |tree - per-pair| (dense masks, and `--attention sparse`) and max |plain -
  per-pair| over all pairs, where per-pair is the model's own forward on prompt +
  continuation, log-softmax in float64;
- bfloat16 (the same weights, loaded as transformers loads a bf16 checkpoint): max
  |tree - plain| (both bf16 with the float32 head; they differ by bf16 rounding of the
  decoder only), and max |bf16 tree - float32 per-pair|, dense and sparse.

Then the refusals (one-line errors naming --method plain) for what the tree scorer cannot
serve exactly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def row(arch: str, task, n: int, device) -> dict:
    from conftest import reference_logT
    from test_architectures import build

    from dbgpu.formatting import encode_states
    from dbgpu.models import cast_parameters
    from dbgpu.scoring import score_matrix

    model, tok = build(arch)
    model = model.to(device)
    enc = encode_states(tok, task, task.seed_states(n))
    P, C = enc.prompt_ids, enc.cont_ids
    with torch.device(device):
        ref = np.array([[reference_logT(model, p, c) for c in C] for p in P])
    kw = dict(pad_id=tok.pad_token_id)
    tree = score_matrix(model, P, C, method="tree", **kw)
    sparse = score_matrix(model, P, C, method="tree", attention="sparse", **kw)
    plain = score_matrix(model, P, C, method="plain", **kw)
    model = cast_parameters(model, torch.bfloat16)
    tree16 = score_matrix(model, P, C, method="tree", **kw)
    sparse16 = score_matrix(model, P, C, method="tree", attention="sparse", **kw)
    plain16 = score_matrix(model, P, C, method="plain", **kw)
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    return dict(arch=arch, cls=type(model).__name__, window=window, prompt=min(map(len, P)),
                tree=np.abs(tree - ref).max(), sparse=np.abs(sparse - ref).max(), plain=np.abs(plain - ref).max(),
                bf16_tree_plain=np.abs(tree16 - plain16).max(), bf16_ref=np.abs(tree16 - ref).max(),
                bf16_sparse_ref=np.abs(sparse16 - ref).max())


def refusals(task) -> list[tuple[str, str]]:
    """(case, the tree scorer's one-line message) for what it refuses."""
    import transformers as T
    from test_architectures import TINY

    from dbgpu.errors import DbgpuError
    from dbgpu.formatting import encode_states
    from dbgpu.models import byte_tokenizer
    from dbgpu.scoring import score_matrix

    enc = encode_states(byte_tokenizer(chat=True), task, task.seed_states(2))
    rope = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8, "long_factor": [3.0] * 8}
    cases = {
        "Phi-2 (phi: not verified)": lambda: T.PhiForCausalLM(T.PhiConfig(**{**TINY, "num_key_value_heads": 4})),
        "Phi-3 longrope switching between prefix and pairs": lambda: T.Phi3ForCausalLM(T.Phi3Config(
            **TINY, original_max_position_embeddings=300, rope_parameters=rope, pad_token_id=0)),
        "Gemma-3 with bidirectional attention": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(
            **TINY, head_dim=16, use_bidirectional_attention=True)),
        "Cohere (command-r: not verified)": lambda: T.CohereForCausalLM(T.CohereConfig(**TINY, pad_token_id=0)),
    }
    out = []
    for name, make in cases.items():
        try:
            score_matrix(make().eval(), enc.prompt_ids, enc.cont_ids, method="tree")
            out.append((name, "NOT refused"))
        except DbgpuError as e:
            out.append((name, str(e)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=5, help="states (N x N pairs)")
    args = ap.parse_args(argv)
    import transformers

    from dbgpu.tasks import get_task
    from test_architectures import ARCHS

    task = get_task("word100")
    print(f"# architectures: word100, {args.n} states ({args.n ** 2} pairs), device {args.device}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("| architecture | class | sliding window / shortest prompt | fp32 max abs(tree - per-pair) | "
          "fp32 max abs(sparse - per-pair) | fp32 max abs(plain - per-pair) | bf16 max abs(tree - plain) | "
          "bf16 tree vs fp32 per-pair | bf16 sparse vs fp32 per-pair |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for arch in ARCHS:
        r = row(arch, task, args.n, torch.device(args.device))
        win = f"{r['window']} / {r['prompt']}" if r["window"] else f"none / {r['prompt']}"
        print(f"| {r['arch']} | {r['cls']} | {win} | {r['tree']:.1e} | {r['sparse']:.1e} | {r['plain']:.1e} | "
              f"{r['bf16_tree_plain']:.1e} | {r['bf16_ref']:.1e} | {r['bf16_sparse_ref']:.1e} |", flush=True)
    print()
    print("| refused by the tree scorer | message |")
    print("|---|---|")
    for name, msg in refusals(task):
        print(f"| {name} | {msg} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
