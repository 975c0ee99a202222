"""The tree scorer's batch plan at workstation scale, from configs only (no weights), and,
with --measure on a GPU, the plan against what a run takes.

    python benchmarks/bench_plan.py                          # plan table, CUDA defaults
    python benchmarks/bench_plan.py --tokenizer byte smollm2 --n 100 500 2000 --out benchmarks/results-plan.md
    python benchmarks/bench_plan.py --measure --n 300 500    # on a GPU: predicted vs measured peak, pairs/s

Shapes: Qwen2-0.5B (vocab 151,936, hidden 896, 24 layers, 14/2 heads) and Llama-3.2-1B
(128,256, 2048, 16 layers, 32/8 heads), bf16, the word task's seed states. No model hub is
reachable here, so the tries come from one of two tokenizers: `byte` (the byte-level
tokenizer of `random:qwen2-0.5b` / `random:llama-3.2-1b`, one token per letter: the tries
a random-weight throughput run scores) or `smollm2` (SmolLM2's byte-level BPE with its
ChatML template: a stand-in for a real BPE tokenizer's trie sizes). Word states beyond the
1,608 that sum to 100 (N = 2,000) are frequent words summing to 95-105.

"before" is the rule the tree scorer used until issue 12: targets cut into tries of at
most 2^28 / V - 1 internal nodes, rows per forward = 2^28 / ((internal + 1) x V) (full
logits of every kept position), masks built per batch.
"""

from __future__ import annotations

import argparse
import sys
import time

SHAPES = {"Qwen2-0.5B": "random:qwen2-0.5b", "Llama-3.2-1B": "random:llama-3.2-1b"}


def _tokenizer(kind: str, cache_dir):
    from dbgpu.models import model_config

    if kind == "byte":
        return None
    _, tok, _ = model_config("smollm2-135m", cache_dir=cache_dir)
    return tok


def word_states(task, n: int) -> list[str]:
    """n word states: the task's seed states (words summing to 100; wordfreq's top 200,000
    hold 1,608), then frequent words summing to 95-105 (the same lengths) to reach n."""
    from wordfreq import top_n_list

    from dbgpu.tasks.word100 import is_word, letter_sum

    if n <= 1608:
        return task.seed_states(n)
    out = task.seed_states(1608)
    seen = set(out)
    for w in top_n_list("en", 200_000):
        if len(out) == n:
            break
        if len(w) > 1 and is_word(w) and 95 <= letter_sum(w) <= 105 and w.upper() not in seen:
            out.append(w.upper())
            seen.add(w.upper())
    return out


def before(sizes, vocab: int, budget_logits: int = 2 ** 28) -> tuple[int, int]:
    """(rows per forward, token positions per forward) under the logits-sized rule."""
    cap = max(1, budget_logits // vocab - 1)
    chunks = -(-sizes.internal // cap)
    internal = -(-sizes.internal // chunks)
    rows = max(1, min(256, sizes.n_sources, budget_logits // ((internal + 1) * vocab)))
    return rows, rows * (sizes.suffix + internal)


def plan_rows(args) -> list[dict]:
    from dbgpu.formatting import encode_states
    from dbgpu.models import model_config
    from dbgpu.scoring.plan import default_budget, model_shape, plan_scoring, trie_sizes
    from dbgpu.tasks import get_task

    task = get_task("word100")
    out = []
    for kind in args.tokenizer:
        tok_override = _tokenizer(kind, args.cache_dir)
        for name, model in SHAPES.items():
            config, tok, _ = model_config(model)
            tok = tok_override or tok
            shape = model_shape(config, dtype="bfloat16")
            for n in args.n:
                enc = encode_states(tok, task, word_states(task, n))
                sizes = trie_sizes(enc.prompt_ids, enc.cont_ids)
                plan = plan_scoring(shape, enc.prompt_ids, enc.cont_ids, default_budget(args.device_type),
                                    block_rows=args.rows_per_block)
                b_rows, b_tokens = before(sizes, shape.vocab)
                out.append(dict(shape=name, tokenizer=kind, n=n, prefix=sizes.prefix, suffix=sizes.suffix,
                                internal=sizes.internal, plan=plan, before_rows=b_rows, before_tokens=b_tokens))
    return out


def print_plan(rows, args) -> str:
    gib = 2 ** 30
    lines = [f"Plan on the {args.device_type} defaults, bf16, rows per block {args.rows_per_block} "
             f"(`python benchmarks/bench_plan.py {' '.join(sys.argv[1:])}`):", "",
             "| shape | tokenizer | N | prefix / suffix | trie internal nodes | target chunks | rows / forward "
             "| tokens / forward | forwards | predicted peak GiB | limited by | before: rows / tokens per forward |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        p = r["plan"]
        lines.append(f"| {r['shape']} | {r['tokenizer']} | {r['n']:,} | {r['prefix']} / {r['suffix']} "
                     f"| {r['internal']:,} | {p.target_chunks} | {p.rows_per_forward} | {p.tokens_per_forward:,} "
                     f"| {p.forwards:,} | {p.memory['peak'] / gib:.2f} | {p.limited_by} "
                     f"| {r['before_rows']} / {r['before_tokens']:,} |")
    text = "\n".join(lines)
    print(text)
    return text


def measure(args) -> str:
    """Score the shapes' random models on the GPU: predicted vs measured peak, pairs/s."""
    import torch

    from dbgpu.formatting import encode_states
    from dbgpu.models import load_model
    from dbgpu.provenance import versions
    from dbgpu.scoring import ScoreStats, score_matrix
    from dbgpu.tasks import get_task

    task = get_task("word100")
    v = versions()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    lines = [f"Measured on {dev}, {'bf16' if torch.cuda.is_available() else 'float32'}, torch {v['torch']}, transformers {v['transformers']}:", "",
             "| model | N | rows / forward | tokens / forward (max) | forwards | seconds | pairs/s "
             "| predicted peak GiB | measured peak GiB | stage seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    models = {m: m for m in args.models} if args.models else SHAPES
    for name, model in models.items():
        if args.shapes and name not in args.shapes:
            continue
        lm = load_model(model, device="auto", dtype="bfloat16" if torch.cuda.is_available() else "float32")
        for n in args.n:
            enc = encode_states(lm.tokenizer, task, task.seed_states(n))
            score_matrix(lm.model, enc.prompt_ids[:2], enc.cont_ids[:4], method="tree")      # warm-up
            stats = ScoreStats()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, method="tree", stats=stats)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            plan = stats.extra["plan"]
            peak = stats.peak_memory_bytes
            stages = ", ".join(f"{k} {s:.2f}" for k, s in stats.stage_seconds.items())
            lines.append(f"| {name} | {n} | {stats.extra['rows_per_forward']} | {stats.extra['tokens_per_forward']:,} "
                         f"| {stats.forward_passes} | {sec:.2f} | {n * n / sec:,.0f} | {plan['memory']['peak'] / 2**30:.2f} "
                         f"| {'-' if peak is None else f'{peak / 2**30:.2f}'} | {stages} |")
            print(lines[-1], flush=True)
        del lm
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 500, 2000])
    ap.add_argument("--tokenizer", nargs="+", default=["byte", "smollm2"], choices=["byte", "smollm2"])
    ap.add_argument("--device-type", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--rows-per-block", type=int, default=128)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--measure", action="store_true", help="also score on this machine's device (random weights)")
    ap.add_argument("--shapes", nargs="*", default=None, help="with --measure: only these shapes")
    ap.add_argument("--models", nargs="*", default=None, help="with --measure: these models instead of the shapes")
    ap.add_argument("--out", default=None, help="write the table(s) to this Markdown file")
    args = ap.parse_args(argv)
    text = measure(args) if args.measure else print_plan(plan_rows(args), args)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# bench_plan.py\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
