"""Command line: argument parsing and error reporting only; the work lives in `dbgpu.commands`.

Each subcommand is a pair `_add_<name>(subparsers)` / `_cmd_<name>(args)`: the handler
passes the parsed options to its command's job and prints what the job returns. Heavy
imports (torch, transformers) happen inside the handlers so that `dbgpu --help` and
input errors answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from dbgpu.version import __version__
from dbgpu.errors import DbgpuError, Terminated


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr, exit status 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


# --------------------------------------------------------------------------- commands

TASK_HELP = ("a built-in task (word100, formula), package.module:Name (a task class), or a name "
             "registered under the dbgpu.tasks entry-point group")


def _model_options(p: argparse.ArgumentParser, *, default_model: str | None = None) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=default_model is None, default=default_model,
                   help="alias (smollm2-135m, gemma3-270m), random:ARCH (llama, qwen2, gemma3, qwen2-0.5b, "
                        "llama-3.2-1b, llama-3.1-8b, qwen2.5-7b, gemma-3-4b; random:ARCH+smollm2-135m: "
                        "with SmolLM2's BPE tokenizer), local dir, .gguf file or hub id" + (f" (default {default_model})" if default_model else ""))
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    g.add_argument("--cache-dir", default=None, help="where dequantised GGUF models are cached "
                                                     "(default: the user cache dir, e.g. ~/.cache/dbgpu)")
    _placement_options(g)


def _placement_options(g) -> None:
    g.add_argument("--device-map", default=None, metavar="auto|balanced|balanced_low_0|sequential",
                   help="spread a model larger than one GPU over the GPUs, then CPU memory, then --offload-dir "
                        "(accelerate's big-model dispatch; one process; --device is then ignored)")
    g.add_argument("--max-memory", default=None, metavar="0=20GiB,1=20GiB,cpu=64GiB",
                   help="with --device-map: memory each device may hold")
    g.add_argument("--offload-dir", default=None, metavar="DIR",
                   help="with --device-map: where layers that fit no device are kept on disk")


def _placement(args) -> dict | None:
    """The big-model dispatch options of `load_model`, or None without --device-map."""
    from dbgpu.models import placement

    return placement(device_map=args.device_map, max_memory=args.max_memory, offload_dir=args.offload_dir)


def temperatures_arg(text: str):
    """--temperature of score and run: one number (one score directory, as always) or
    several, comma-separated (one pass of forwards, DIR/tau-<tau> per temperature)."""
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _task_options(p: argparse.ArgumentParser, *, default_task: str | None = None, several: bool = False) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", required=default_task is None, default=default_task, help=TASK_HELP
                   + (f" (default {default_task})" if default_task else ""))
    g.add_argument("--template", default=None, metavar="NAME|FILE",
                   help="user prompt template: one of the task's built-in names (word100: paper, terse, "
                        "puzzle; formula: default, terse) or a file, Jinja ({{ state }}) or plain text with "
                        "{state}")
    g.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="text that opens the answer, part of the prompt (word100 default: 'Word:', "
                        "formula: 'y ='; '' for none)")
    if several:
        g.add_argument("--temperature", type=temperatures_arg, default=1.0, metavar="TAU[,TAU...]",
                       help="sampling temperature tau (default 1); several, comma-separated (0.5,0.7,1,1.5), "
                            "are scored from one pass of forwards into DIR/tau-<tau>/, one score directory each")
    else:
        g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature tau (default 1)")


def _scoring_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--method", default="tree", choices=["tree", "plain"],
                   help="tree: shared-prefix cache + continuation trie (default); plain: one padded row per pair")
    g.add_argument("--attention", default="dense", choices=["dense", "sparse"],
                   help="the tree scorer's attention: dense, (Q, K) tree masks over every row's whole trie "
                        "chunk (default, the reference); sparse, each trie node attends to the shared prefix, "
                        "its row's suffix and its own ancestors only, no masks (equal to dense within 2e-5 "
                        "nats in float32; docs/attention.md)")
    g.add_argument("--batch-tokens", type=int, default=None, metavar="T",
                   help="token positions per forward pass (default: tree 32768 on CUDA, 8192 on CPU, also "
                        "kept within a working-memory budget; plain 16384); rows halved automatically on "
                        "out-of-memory. --dry-run prints the plan")
    g.add_argument("--max-logits", type=int, default=None,
                   help="float32 logits the head holds at once, both methods (default 2^28 on CUDA, 2^26 on "
                        "CPU); the head is chunked, so this does not bound the rows per forward")
    g.add_argument("--rows-per-block", type=int, default=128, metavar="R",
                   help="source rows per shard: each block is written as it finishes, so a crash loses "
                        "at most the blocks in flight and a second call resumes (default 128)")
    g.add_argument("--surface-forms", choices=("canonical", "all"), default="canonical",
                   help="canonical: T(f, g) is the probability of g's one rendered answer (default); all: "
                        "the sum over every surface form the task lists (word100: upper, Title, lower "
                        "case, with and without the leading space), nearer what the agent counts")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh when DIR holds a score with other settings (default: refuse)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the batch plan (rows and token positions per forward, predicted peak memory) "
                        "from the model's config and tokenizer, without loading weights; write nothing")
    _threads_option(g)


def _threads_option(g) -> None:
    g.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for torch and the BLAS libraries (default 0: their default); 1 per "
                        "process when several share the cores (torchrun on a CPU, a busy machine)")


def _set_threads(args) -> None:
    """Limit this process's threads (torch, numpy/scipy BLAS, OpenMP) to --threads; 0 leaves
    them alone. BLAS and OpenMP read their thread count when they load, which in the command
    line happens after this (the handlers import lazily); torch, if already loaded, is told."""
    if args.threads < 0:
        raise DbgpuError(f"--threads must be >= 0, got {args.threads}")
    if not args.threads:
        return
    import os

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)           # read by libraries not yet loaded
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(args.threads)


def _task_from(args):
    from dbgpu.api import get_task

    return get_task(args.task, template=args.template, answer_prefix=args.answer_prefix)


def _scoring_kwargs(args) -> dict:
    """The model, task and scoring options that score and run share, as job keywords."""
    _set_threads(args)
    return dict(model=args.model, template_path=args.template, temperature=args.temperature,
                device=args.device, dtype=args.dtype, cache_dir=args.cache_dir, method=args.method,
                batch_tokens=args.batch_tokens, max_logits=args.max_logits, rows_per_block=args.rows_per_block,
                surface_forms=args.surface_forms, overwrite=args.overwrite, progress=not args.quiet,
                placement=_placement(args), attention=args.attention)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="exact log T(f,g) for every pair of a state set",
                       description="Compute the exact kernel log T(f,g) by teacher forcing for all pairs "
                                   "and write states.json, logT.npy, prompts.json, meta.json.")
    _model_options(p)
    _task_options(p, several=True)
    _scoring_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--states", metavar="FILE", help="JSON list, text file (one per line) or score dir")
    src.add_argument("--state-list", metavar="A,B,C", help="comma-separated states")
    src.add_argument("--n-states", type=int, default=None, metavar="N",
                     help="the task's first N seed states (as `dbgpu run --n-states N`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="run under torch.profiler: DIR/trace.json (Chrome/Perfetto trace) and DIR/stages.md "
                        "(time per stage: prefix, masks, forward, head, reduction, transfer; tokens/s), printed too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)


def _dry_run(args, task, states) -> int:
    """Print the batch plan of a score (or run) without loading weights; write nothing."""
    from dbgpu.commands.score import plan_job
    from dbgpu.scoring.plan import plan_table

    _set_threads(args)
    p = plan_job(model=args.model, task=task, states=states, method=args.method, device=args.device,
                 dtype=args.dtype, cache_dir=args.cache_dir, batch_tokens=args.batch_tokens,
                 max_logits=args.max_logits, rows_per_block=args.rows_per_block, surface_forms=args.surface_forms,
                 attention=args.attention)
    plan = p["plan"]
    tok = p["resolved"].get("tokenizer")
    tok = f", {tok['kind']} tokenizer of {tok['size']:,} tokens" if tok else ""
    print(plan_table(plan, title=f"dry run: {args.model} ({p['resolved']['path']}{tok}), {p['n_states']} states, "
                                 f"method {plan['method']}, {plan['device_type']} defaults, {p['dtype']}; "
                                 f"nothing loaded or written"))
    return 0


def _cmd_score(args) -> int:
    from dbgpu.commands.run import seed_states
    from dbgpu.commands.score import score_job
    from dbgpu.io import parse_state_list, read_states_file

    task = _task_from(args)
    if args.states:
        states = read_states_file(args.states)
    elif args.state_list:
        states = parse_state_list(args.state_list)
    else:
        states = seed_states(task, args.n_states)
    if args.dry_run:
        return _dry_run(args, task, states)
    meta = score_job(task=task, states=states, out=args.out, profile=args.profile, **_scoring_kwargs(args))
    if meta is None:                              # another rank of a launched job: rank 0 reports
        return 0
    if meta.get("already_complete"):
        print(f"{args.out} already holds this score ({meta['n_states']}x{meta['n_states']} pairs): nothing to do")
        return 0
    sh = meta["shards"]
    taus = meta["temperature"] if isinstance(meta["temperature"], list) else None
    print(f"scored {meta['n_states']}x{meta['n_states']} pairs"
          + (f" at {len(taus)} temperatures from one pass" if taus else "")
          + f" in {meta['seconds']:.1f} s ({meta['tokens']} tokens; {sh['blocks']} row blocks, "
          f"{sh['rows_per_call'].get(str(len(sh['calls']) - 1), 0)} rows this call) -> "
          + (", ".join(meta["runs"].values()) if taus else args.out))
    if "profile" in meta:
        print(meta["profile"]["table"])
        print(f"profile: {meta['profile']['trace']} (open in ui.perfetto.dev or chrome://tracing), "
              f"{meta['profile']['dir']}/stages.md")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the main job end to end on defaults",
                       description="States (the task's seed set), exact kernel, least-action potential, "
                                   "detailed-balance statistics, figures and report.md, in one directory.")
    _model_options(p, default_model="smollm2-135m")
    _task_options(p, default_task="word100", several=True)
    _scoring_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--n-states", type=int, default=24, help="size of the seed state set (default 24)")
    src.add_argument("--states", default=None, metavar="FILE",
                     help="score this state set instead (JSON list, text file or score dir), e.g. the "
                          "seed states plus what `dbgpu states` found")
    p.add_argument("--out", default="runs/default", metavar="DIR", help="output directory (default runs/default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from dbgpu.commands.run import run_job

    from dbgpu.io import read_states_file

    states = read_states_file(args.states) if args.states else None
    if args.dry_run:
        task = _task_from(args)
        if states is None and args.n_states < 2:
            raise DbgpuError(f"--n-states must be at least 2, got {args.n_states}")
        return _dry_run(args, task, states if states is not None else task.seed_states(args.n_states))
    run_job(task=_task_from(args), n_states=args.n_states, states=states, out=args.out, **_scoring_kwargs(args))
    return 0


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="regress a fitted potential on the task's state features",
                       description="Regress V (potential.json of DIR) on the features the task defines for "
                                   "each state (standardised OLS and ridge, cross-validated R², coefficients "
                                   "with standard errors); write explain.json and explain.png/.pdf.")
    p.add_argument("dir", metavar="DIR", help="a fit output directory (run, score + fit, or fit of an explore log)")
    p.add_argument("--task", default=None, help=TASK_HELP + " (default: the one recorded with DIR)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    from dbgpu.commands.explain import explain_job
    from dbgpu.explain import summary_lines

    doc = explain_job(args.dir, task=args.task, folds=args.folds, seed=args.seed)
    print("\n".join(summary_lines(doc)))
    print(f"wrote {args.dir}/explain.json, explain.png, explain.pdf")
    return 0


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="least-action potential and detailed-balance statistics",
        description="Fit the least-action potential of a paper JSON file, a transitions.jsonl "
                    "or a score directory; write potential.json, stats.json, fit_points.npz, and the "
                    "reversible Markov model the fit is: msm.json (pi) and msm_transitions.npz (P).")
    p.add_argument("input", help="paper .json (either shape), transitions .jsonl, or a score directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--reject", choices=("high", "low"), default="high",
                   help="paper weights: high_reject N0 = 20000/n_states, or low_reject N0 = "
                        "out-count (default high)")
    p.add_argument("--threshold", type=float, default=0, metavar="N",
                   help="low_reject: drop states whose out-count is <= N (default 0)")
    p.add_argument("--weights", choices=("paper", "counts"), default="paper",
                   help="sampled inputs: the paper's min(1, N/N0), or counts N(f->g)/n_f "
                        "(default paper); exact kernels always use T")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the fit runs (default auto: CUDA when available)")
    p.add_argument("--method", choices=("newton", "lbfgs"), default="newton",
                   help="optimiser (default newton: Newton-CG on the graph Laplacian)")
    _threads_option(p)
    g = p.add_argument_group("error bars and null distributions (sampled inputs)")
    g.add_argument("--laplace", action="store_true",
                   help="sigma of V from the inverse Fisher information (needs --weights counts)")
    g.add_argument("--bootstrap", type=int, default=0, metavar="B",
                   help="sigma of V from B bootstrap replicates over queries (any weights)")
    g.add_argument("--null", type=int, default=0, metavar="B",
                   help="each statistic's distribution under detailed balance from B replicates "
                        "resampled from the fitted reversible kernel: mean, sd, p-value")
    g.add_argument("--seed", type=int, default=0, help="seed of the resampling and of the loop sample (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    import warnings

    from dbgpu.commands.fit import fit_input, fit_summary
    from dbgpu.console import fmt

    _set_threads(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stats = fit_input(args.input, args.out, reject=args.reject, threshold=args.threshold,
                              weights=args.weights, device=args.device, method=args.method,
                              laplace=args.laplace, bootstrap=args.bootstrap, null=args.null, seed=args.seed,
                              progress=not args.quiet)
        finally:                                  # a warning matters most when the fit then fails
            for w in caught:
                print(f"dbgpu fit: warning: {w.message}", file=sys.stderr)
    print(fit_summary(stats))
    if stats.get("null"):
        print("null (detailed balance, " + str(stats["null"]["replicates"]) + " replicates): "
              + "; ".join(f"{k} p = {fmt(v['p_value'], '.3g')}" for k, v in stats["null"]["statistics"].items()))
    files = ["potential.json", "stats.json", "fit_points.npz", "msm.json", "msm_transitions.npz"]
    if stats["uncertainty"]["method"]:
        files.append("uncertainty.json")
    print(f"wrote {args.out}/" + ", ".join(files))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="figures (PNG, PDF) and report.md for a fit directory",
                       description="Draw the figures and write report.md for a directory "
                                   "holding a `dbgpu fit` output.")
    p.add_argument("dir", help="directory with potential.json, stats.json, fit_points.npz")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from dbgpu.commands.report import report_job

    print(f"wrote {report_job(args.dir)}")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="potentials of one state set under several models and templates",
                       description="Score the same states under every model x template (reusing score "
                                   "directories already in DIR), fit each, and compare the potentials: "
                                   "correlations, slopes, log-ratio agreement, detailed-balance indices, "
                                   "and the spread of V across the runs (uncertainty.json).")
    p.add_argument("--models", required=True, metavar="M1,M2,...", help="comma-separated models")
    p.add_argument("--templates", default=None, metavar="T1,T2,...",
                   help="comma-separated built-in template names or files (default: the task's own)")
    p.add_argument("--task", default="word100", help=TASK_HELP + " (default word100)")
    p.add_argument("--answer-prefix", default=None, metavar="TEXT", help="as for score")
    tg = p.add_mutually_exclusive_group()
    tg.add_argument("--temperature", type=float, default=1.0, help="sampling temperature tau (default 1)")
    tg.add_argument("--temperatures", type=temperatures_arg, default=None, metavar="T1,T2,...",
                    help="a temperature axis: each model x template scored once for all of them (one pass of "
                         "forwards), one run per temperature; compare.md adds beta, the Hodge gradient fraction and "
                         "V_tau against V at the temperature nearest 1, per model x template (temperature.csv, "
                         "temperature.png)")
    p.add_argument("--method", default="tree", choices=["tree", "plain"], help="scoring method (default tree)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--states", metavar="FILE", help="JSON list, text file (one per line) or score dir")
    src.add_argument("--state-list", metavar="A,B,C", help="comma-separated states")
    src.add_argument("--n-states", type=int, default=None, metavar="N",
                     help="the task's N seed states (the default, with N = 24)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    p.add_argument("--cache-dir", default=None, help="dequantised GGUF cache (default: user cache dir)")
    _placement_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from dbgpu.commands.compare import compare_job, compare_summary
    from dbgpu.commands.run import seed_states
    from dbgpu.io import parse_state_list, read_states_file
    from dbgpu.tasks import get_task

    _set_threads(args)
    models = parse_state_list(args.models)
    templates = parse_state_list(args.templates) if args.templates else [None]
    if args.states:
        states = read_states_file(args.states)
    elif args.state_list:
        states = parse_state_list(args.state_list)
    else:
        states = seed_states(get_task(args.task), 24 if args.n_states is None else args.n_states)
    result = compare_job(models=models, templates=templates, task_name=args.task, states=states, out=args.out,
                         answer_prefix=args.answer_prefix, method=args.method,
                         temperature=args.temperature if args.temperatures is None else
                         (args.temperatures if isinstance(args.temperatures, list) else [args.temperatures]),
                         device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                         placement=_placement(args), progress=not args.quiet)
    if not result:                                # another rank of a launched job: rank 0 reports
        return 0
    print(compare_summary(result))
    print(f"wrote {args.out}/compare.md, compare.csv, runs.csv, compare.json, spread.csv, uncertainty.json, "
          "potentials.png, db_index.png")
    return 0


def _add_explore(sub) -> None:
    from dbgpu.explore import DEFAULT_BATCH, DEFAULT_MAX_NEW_TOKENS, PROTOCOLS  # no torch: cheap

    p = sub.add_parser("explore", help="sample the agent: discover states, log every transition",
                       description="Run K steps of B sampled queries each and append one JSON line per "
                                   "query to DIR/transitions.jsonl; a second call on DIR continues the run.")
    _model_options(p)
    _task_options(p)
    p.add_argument("--steps", type=int, required=True, metavar="K", help="steps to run in this call")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (created, or continued)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: sources drawn uniformly from the discovered states (default); "
                        "walk: B walkers, each from its own last valid state")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B",
                   help=f"queries per step, sampled in one batch (default {DEFAULT_BATCH})")
    p.add_argument("--start", default=None, metavar="STATE", help="start state (default: the task's, BUZZY)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"longer answers are truncated and rejected (default: the task's, word100 "
                        f"{DEFAULT_MAX_NEW_TOKENS}, formula 48)")
    p.add_argument("--seed", type=int, default=0, help="same seed, model and device: the same log (default 0)")
    p.add_argument("--kv-cache", choices=("auto", "dynamic", "static"), default="auto",
                   help="the sampler's decode loop: auto (static on CUDA, dynamic elsewhere), dynamic (finished "
                        "rows leave the batch), static (fixed shapes, transformers StaticCache)")
    _threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_explore)


def _cmd_explore(args) -> int:
    from dbgpu.commands.explore import explore_job, summary_text

    _set_threads(args)
    task = _task_from(args)
    res = explore_job(model=args.model, task=task, steps=args.steps, out=args.out, protocol=args.protocol,
                      batch=args.batch, start=args.start, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device,
                      dtype=args.dtype, cache_dir=args.cache_dir, placement=_placement(args),
                      progress=not args.quiet, kv_cache=args.kv_cache)
    print(summary_text(res["summary"], steps=(res["first_step"], res["first_step"] + res["steps"]),
                       n_discovered=len(res["discovered"]), path=res["log"]))
    return 0


def _add_discover(sub) -> None:
    p = sub.add_parser("discover", help="every answer above a probability, exactly, from each state to closure",
                       description="Enumerate every answer of probability >= EPS from each source (one batched "
                                   "forward per depth over the whole frontier, the float32 head as score "
                                   "computes it), then search again from each new valid state, to closure or "
                                   "--max-states; append to DIR/answers.jsonl, write discovered.json and "
                                   "states.json. A second call on DIR continues.")
    _model_options(p)
    _task_options(p)
    p.add_argument("--min-prob", type=float, required=True, metavar="EPS",
                   help="keep every answer (and search every prefix) of probability >= EPS")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (created, or continued)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--start", default=None, metavar="STATE", help="start state (default: the task's, BUZZY)")
    src.add_argument("--states", default=None, metavar="FILE",
                     help="start from every state of a JSON list, text file or score directory")
    p.add_argument("--max-states", type=int, default=None, metavar="N",
                   help="search at most N sources in all (default: to closure)")
    p.add_argument("--max-depth", type=int, default=None, metavar="D",
                   help="answers of at most D tokens, end-of-turn included (default: the task's answer length, "
                        "word100 10, formula 48)")
    p.add_argument("--batch", type=int, default=4, metavar="B", help="sources searched together (default 4)")
    p.add_argument("--kernel", action="store_true",
                   help="also write DIR/kernel, a score directory of the lower-bound kernel on the searched "
                        "states (T(f,g) summed over every found answer that parses to g), for fit")
    _threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_discover)


def _cmd_discover(args) -> int:
    from pathlib import Path

    from dbgpu.commands.discover import discover_job, discover_summary_text
    from dbgpu.io import read_states_file

    _set_threads(args)
    task = _task_from(args)
    starts = read_states_file(args.states) if args.states else [args.start] if args.start else None
    res = discover_job(model=args.model, task=task, min_prob=args.min_prob, out=args.out, starts=starts,
                       temperature=args.temperature, max_states=args.max_states, max_depth=args.max_depth,
                       batch=args.batch, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                       placement=_placement(args), progress=not args.quiet, kernel=args.kernel)
    print(discover_summary_text(res["summary"], res, out=Path(res["out"])))
    if res.get("kernel"):
        print(f"kernel (lower bound) -> {res['kernel']}")
    return 0


def _add_states(sub) -> None:
    p = sub.add_parser("states", help="the valid states an explore run discovered, for score --states",
                       description="Print (or write) the discovered valid states of an explore directory "
                                   "as a JSON list, most often answered first.")
    p.add_argument("dir", metavar="DIR", help="an explore directory (or its transitions.jsonl)")
    p.add_argument("--min-count", type=int, default=0, metavar="N",
                   help="keep states answered at least N times (default 0: every discovered state)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the list here (atomically) instead of stdout")
    p.set_defaults(func=_cmd_states)


def _cmd_states(args) -> int:
    import json

    from dbgpu.commands.states import states_job, write_states

    states = [s for s, _ in states_job(args.dir, min_count=args.min_count)]
    if args.out is None:
        print(json.dumps(states, ensure_ascii=False))
        return 0
    write_states(states, args.out)
    print(f"{len(states)} states -> {args.out}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dbgpu",
        description="Exact transition kernels of LLM-driven agents and tests of detailed balance.",
    )
    parser.add_argument("--version", action="version", version=f"dbgpu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_score(sub)
    _add_fit(sub)
    _add_report(sub)
    _add_compare(sub)
    _add_explore(sub)
    _add_discover(sub)
    _add_states(sub)
    _add_explain(sub)
    return parser


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command: 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C,
    143 on SIGTERM (both also one line; outputs stay consistent and resumable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2) and --help / --version (0)
        return int(e.code or 0)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except DbgpuError as e:
        print(f"dbgpu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dbgpu {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"dbgpu {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
