"""`dbgpu score`: the exact kernel of a state set under one model, as a score directory.

Validates every option and the state list before loading anything. The source rows are
cut into blocks (`dbgpu.shards`); each block is scored and written as a row shard as soon
as it finishes, so `dbgpu score` on the same directory with the same settings resumes,
scoring only the missing blocks, and different settings are a one-line error (or
`overwrite=True` starts afresh). Under `torchrun` / `accelerate launch` the ranks share
the missing blocks, balanced by token count, each writing its own shards; rank 0 holds
the directory's lock and assembles. Once every row exists, states.json, logT.npy,
prompts.json and meta.json (last) are written atomically and the shards removed.
meta.json carries the reproducibility record (`dbgpu.provenance`): machine, GPU, CUDA /
cuDNN, package versions, git commit, command line, model revision and hashes, the
prompts' hash and the date chat templates were rendered with.

Several temperatures (`temperature` a sequence; `--temperature 0.5,0.7,1`) come from one pass
of forwards (`dbgpu.scoring.head`: the head's logits once per chunk, a log-softmax per
temperature). The job lives in DIR (its lock, job.json and shards, each shard holding every
temperature's rows or none); each temperature's complete score directory is DIR/tau-<tau>
(`format(tau, "g")`: tau-0.5, tau-1), its meta.json naming its temperature and the shared
pass, so fit, report, explain and compare's reuse take each unchanged; DIR/temperatures.json
(written last) lists them. One value keeps the single directory exactly as before.

`--profile DIR` runs this call's scoring under torch.profiler: DIR/trace.json (Chrome /
Perfetto trace, the scorer's stages labelled `dbgpu.<stage>`) and DIR/stages.md (time per
stage, host and device (CUDA events), tokens/s; the host-device synchronisations per
forward and where they come from; the top kernels); each stage ends with a CUDA
synchronize so its wall time is the device's. meta.json's `profile` holds the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dbgpu.errors import DbgpuError, check_positive
from dbgpu.io import check_out_dir, locked_dir, read_json, utc_now, write_json_atomic
from dbgpu.provenance import sha256_text
from dbgpu.tasks import Task

#: the files a score directory holds (what `overwrite` clears)
SCORE_FILES = ("states.json", "logT.npy", "prompts.json", "meta.json")
#: a several-temperature job's manifest, in DIR beside the DIR/tau-* score directories (written last)
TEMPERATURES = "temperatures.json"


def tau_name(tau: float) -> str:
    """The score directory of one temperature of a several-temperature job: tau-0.5, tau-1."""
    return f"tau-{format(tau, 'g')}"


def temperature_setting(temperature):
    """What the job records: one float (a single directory, as before), or a list of
    floats (one pass, a directory per temperature)."""
    from dbgpu.scoring.head import temperature_tuple

    taus = temperature_tuple(temperature)
    return taus[0] if isinstance(temperature, (int, float)) else list(taus)


def check_score_options(*, temperature: float, method: str, max_logits: int | None, batch_tokens: int | None,
                        rows_per_block: int = 128, surface_forms: str = "canonical", attention: str = "dense") -> None:
    """Every scoring option, checked before any work (one-line errors)."""
    from dbgpu.formatting import SURFACE_FORMS
    from dbgpu.scoring import check_method
    from dbgpu.scoring.sparse import check_attention_mode

    if surface_forms not in SURFACE_FORMS:
        raise DbgpuError(f"unknown --surface-forms {surface_forms!r} (use {' or '.join(SURFACE_FORMS)})")
    temperature_setting(temperature)
    check_method(method)
    if check_attention_mode(attention) == "sparse" and method != "tree":
        raise DbgpuError("--attention sparse is the tree scorer's attention; use it with --method tree")
    check_positive("max logits", max_logits, allow_none=True)
    check_positive("batch tokens", batch_tokens, allow_none=True)
    check_positive("rows per block", rows_per_block)


@contextlib.contextmanager
def profiled(out: Path | None, device):
    """torch.profiler around the block when `out` is a directory (CPU, plus CUDA on a GPU),
    with its host-device synchronisations counted (`count_syncs`); the Chrome trace is
    written to out/trace.json (atomically) when the block ends. Yields a dict that then
    holds {"syncs": SyncCount, "kernels": top_kernels rows (totals over the block)}."""
    found: dict = {}
    if out is None:
        yield found
        return
    from torch.profiler import ProfilerActivity, profile

    from dbgpu.scoring.stats import count_syncs, top_kernels

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, count_syncs(device) as syncs:
        yield found
    found.update(syncs=syncs, kernels=top_kernels(prof, n=10, device_type=device.type))
    tmp = out / ".trace.json.tmp"
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, out / "trace.json")


def scoring_plan(config, enc, *, method: str, device_type: str, dtype: str, batch_tokens: int | None,
                 max_logits: int | None, rows_per_block: int, n_params: int | None = None,
                 attention: str = "dense") -> dict:
    """The batch plan of scoring `enc` (an `Encoded` state set) under a model of this config
    on this device type, computed before any scoring (`dbgpu.scoring.plan`): what
    meta.json records under scoring.plan and `--dry-run` prints. n_params: the exact count
    when the weights are loaded, else estimated from the config."""
    from dbgpu.scoring.plain import PLAIN_BATCH_TOKENS
    from dbgpu.scoring.plan import default_budget, model_shape, plan_plain, plan_scoring

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    shape = model_shape(text, dtype=dtype, n_params=n_params)
    if method == "plain":
        budget = default_budget(device_type, tokens=batch_tokens or PLAIN_BATCH_TOKENS, head_logits=max_logits)
        longest = max(map(len, enc.prompt_ids)) + max(map(len, enc.scored_ids))
        plan = plan_plain(shape, n_pairs=len(enc.prompt_ids) * len(enc.scored_ids), longest=longest, budget=budget)
    else:
        budget = default_budget(device_type, tokens=batch_tokens, head_logits=max_logits)
        plan = plan_scoring(shape, enc.prompt_ids, enc.scored_ids, budget, block_rows=rows_per_block,
                            attention=attention)
    return {"method": method, "device_type": device_type, **plan.as_dict()}


def plan_job(*, model: str, task: Task, states: list[str], method: str = "tree", device="auto", dtype="auto",
             cache_dir=None, batch_tokens: int | None = None, max_logits: int | None = None,
             rows_per_block: int = 128, surface_forms: str = "canonical", attention: str = "dense") -> dict:
    """`dbgpu score --dry-run`: the batch plan of a score job from the model's config and
    tokenizer, without loading its weights and without writing anything. The device need
    not be present (plan for CUDA on a laptop)."""
    import torch

    from dbgpu.devices import device_type, resolve_dtype
    from dbgpu.formatting import encode_states
    from dbgpu.models import model_config
    from dbgpu.tasks import canonical_states

    check_score_options(temperature=1.0, method=method, max_logits=max_logits, batch_tokens=batch_tokens,
                        rows_per_block=rows_per_block, surface_forms=surface_forms, attention=attention)
    states = canonical_states(task, states)
    kind = device_type(device)
    dt = str(resolve_dtype(dtype, torch.device(kind))).removeprefix("torch.")
    config, tok, resolved = model_config(model, cache_dir=cache_dir)
    enc = encode_states(tok, task, states, surface_forms=surface_forms)
    plan = scoring_plan(config, enc, method=method, device_type=kind, dtype=dt, batch_tokens=batch_tokens,
                        max_logits=max_logits, rows_per_block=rows_per_block, attention=attention)
    return {"model": model, "resolved": resolved, "dtype": dt, "n_states": len(states), "plan": plan}


#: binding settings an older dbgpu did not record, as it behaved
SETTING_DEFAULTS = {"surface_forms": "canonical", "attention": "dense"}


def job_settings(*, model: str, task: Task, states: list[str], temperature, method: str, device_type: str,
                 dtype: str, rows_per_block: int, surface_forms: str = "canonical", attention: str = "dense") -> dict:
    """What a score directory is bound to: a resume must repeat every one of these (the
    attention path too: sparse equals dense to float rounding, not bit for bit, and one
    matrix holds rows of one path)."""
    from dbgpu.tasks import task_spec, template_sha256

    return {"model": model, "task": task_spec(task), "template_sha256": template_sha256(task),
            "answer_prefix": task.answer_prefix, "states_sha256": sha256_text(json.dumps(states, ensure_ascii=False, sort_keys=True)), "n_states": len(states),
            "temperature": temperature_setting(temperature), "method": method, "device_type": device_type,
            "dtype": dtype,
            "rows_per_block": rows_per_block, "surface_forms": surface_forms, "attention": attention}


def _differs(stored: dict, wanted: dict) -> str | None:
    """The first binding setting in which `stored` differs from `wanted`, said in words."""
    for key, value in wanted.items():
        if stored.get(key, SETTING_DEFAULTS.get(key)) != value:
            if key.endswith("sha256"):
                return f"another {key.removesuffix('_sha256').replace('_', ' ')}"
            return f"{key} {stored.get(key)!r}, not {value!r}"
    return None


def _open_job(out: Path, settings: dict, *, overwrite: bool) -> tuple[dict | None, dict | None]:
    """(job.json's document or None to start one, meta.json's dict if the directory already
    holds this very score). Settings that differ are an error unless `overwrite`, which
    clears the directory's score files first."""
    from dbgpu import shards

    job = read_json(out / shards.JOB, what="score job manifest") if (out / shards.JOB).exists() else None
    done_file = out / TEMPERATURES if (out / TEMPERATURES).exists() else out / "meta.json"
    meta = read_json(done_file, what="meta file") if done_file.exists() else None
    if job is not None:
        why = _differs(job.get("settings", {}), settings)
    elif meta is not None:
        why = _differs(meta["job"], settings) if "job" in meta else "settings an older dbgpu did not record"
    else:
        why = None
    if why and not overwrite:
        raise DbgpuError(f"{out} holds a score with {why}; repeat its settings, use another --out, "
                         f"or --overwrite")
    if why:
        shards.remove(out)
        _clear_scores(out, (job or {}).get("settings") or (meta or {}).get("job") or {})
        return None, None
    complete = meta if job is None and meta is not None and _whole(out, meta) else None
    return job, complete


def _score_dirs(out: Path, temperature) -> list[Path]:
    """The score directories of a job at `temperature` (its recorded setting)."""
    return [out / tau_name(t) for t in temperature] if isinstance(temperature, list) else [out]


def _whole(out: Path, meta: dict) -> bool:
    """Every score directory of a finished job still holds its matrix."""
    return all((d / "logT.npy").exists() for d in _score_dirs(out, meta.get("job", {}).get("temperature")))


def _clear_scores(out: Path, settings: dict) -> None:
    """Remove the score files of the job recorded with `settings` (overwrite): DIR's own,
    or its DIR/tau-* directories and temperatures.json."""
    import shutil

    for name in SCORE_FILES:
        (out / name).unlink(missing_ok=True)
    if isinstance(settings.get("temperature"), list):
        for d in _score_dirs(out, settings["temperature"]):
            shutil.rmtree(d, ignore_errors=True)
    (out / TEMPERATURES).unlink(missing_ok=True)


def score_job(*, model: str, task: Task, states: list[str], out: str | Path, template_path=None,
              temperature=1.0, method: str = "tree", device="auto", dtype="auto", cache_dir=None,
              batch_tokens: int | None = None, max_logits: int | None = None, rows_per_block: int = 128,
              overwrite: bool = False, progress: bool = True, profile: str | Path | None = None, lm=None,
              surface_forms: str = "canonical", placement: dict | None = None, attention: str = "dense") -> dict:
    """Score `states` under `model` into a score directory (resuming one that is part done).
    Returns meta.json's dict (with "already_complete": True when the directory held this
    very score and nothing was done); None on the other ranks of a launched job. With a
    sequence of temperatures, one pass of forwards scores them all into DIR/tau-<tau>/;
    the dict returned is temperatures.json's (the first temperature's meta.json with
    "temperature" the list and "runs" {tau-name: directory}).
    surface_forms="all": T(f, g) sums every surface form of g the task lists. placement:
    big-model dispatch options for `load_model` (device_map, max_memory, offload_dir): one
    process spreads the model over its devices (not under a launcher). attention: the tree
    scorer's attention path, "dense" (the (Q, K) tree masks, the reference) or "sparse"
    (each trie node attends to the prefix, its row's suffix and its ancestors only,
    `dbgpu.scoring.sparse`)."""
    from dbgpu import distributed as dd
    from dbgpu.devices import resolve_device, resolve_dtype
    from dbgpu.tasks import canonical_states

    check_score_options(temperature=temperature, method=method, max_logits=max_logits, batch_tokens=batch_tokens,
                        rows_per_block=rows_per_block, surface_forms=surface_forms, attention=attention)
    states = canonical_states(task, states)
    out = check_out_dir(out)
    profile = check_out_dir(profile) if profile is not None else None
    ranks = dd.launched()
    dev = lm.device if lm is not None else resolve_device(
        "auto" if placement and placement.get("device_map") is not None else dd.rank_device(device, ranks))
    dt = lm.dtype if lm is not None else resolve_dtype(dtype, dev)
    settings = job_settings(model=model, task=task, states=states, temperature=temperature, method=method,
                            device_type=dev.type, dtype=str(dt).removeprefix("torch."), rows_per_block=rows_per_block,
                            surface_forms=surface_forms, attention=attention)
    dd.start(ranks, dev)
    try:
        with locked_dir(out) if ranks.main else contextlib.nullcontext():
            job, complete = _agree_on_job(out, settings, overwrite=overwrite, ranks=ranks, dev=dev)
            if complete is not None:
                return complete if ranks.main else None
            if lm is None:
                from dbgpu.models import load_model

                lm = load_model(model, device=dev, dtype=dt, cache_dir=cache_dir, **(placement or {}))
            return _score(lm, task, states, out, job=job, settings=settings, ranks=ranks, template_path=template_path,
                          options=dict(temperature=temperature, method=method, batch_tokens=batch_tokens,
                                       max_logits=max_logits, attention=attention), progress=progress,
                          profile=profile)
    finally:
        dd.stop(ranks)


def _agree_on_job(out: Path, settings: dict, *, overwrite: bool, ranks, dev):
    """Rank 0 opens the job (checks, clears on overwrite); every rank learns whether it may
    go on. Returns (job or None, meta if the score is already complete)."""
    from dbgpu import distributed as dd

    job, complete, problem = None, None, None
    if ranks.main:
        try:
            job, complete = _open_job(out, settings, overwrite=overwrite)
        except DbgpuError as e:
            problem = e
    if not dd.all_agree(problem is None, ranks, dev):
        raise problem or DbgpuError("rank 0 refused the job (see its message)")
    if not dd.all_agree(complete is None, ranks, dev):
        return None, {**complete, "already_complete": True} if ranks.main else {"rank": ranks.rank}
    return job, None


def _score(lm, task: Task, states: list[str], out: Path, *, job: dict | None, settings: dict, ranks,
           template_path, options: dict, progress: bool, profile: Path | None) -> dict:
    """Score this rank's share of the missing blocks, then (rank 0) assemble the directory."""
    from dbgpu import distributed as dd
    from dbgpu import shards
    from dbgpu.formatting import encode_states
    from dbgpu.io import ensure_out_dir
    from dbgpu.provenance import prompts_sha256

    t0 = time.perf_counter()
    enc = encode_states(lm.tokenizer, task, states, surface_forms=settings["surface_forms"])
    prompts_sha = prompts_sha256(enc.prompts_json)
    if job is not None and job.get("prompts_sha256") not in (None, prompts_sha):
        raise DbgpuError(f"{out} was scored with other prompt texts (another tokenizer or chat template); "
                         f"use another --out or --overwrite")
    blocks = shards.plan_blocks(np.array([len(p) for p in enc.prompt_ids]), settings["rows_per_block"])
    call = len(job["calls"]) if job else 0
    if ranks.main:
        job = job or {"settings": settings, "prompts_sha256": prompts_sha, "n_blocks": len(blocks), "calls": []}
        job["calls"].append({"call": call, "started": utc_now(), "world": ranks.world, "device": str(lm.device)})
        write_json_atomic(out / shards.JOB, job)
    dd.barrier(ranks)
    done, damaged = shards.read_shards(out, blocks, len(states), lead=_lead(settings))
    missing = [k for k in range(len(blocks)) if k not in done]
    from dbgpu.models import text_config

    plan = scoring_plan(text_config(lm.model), enc, method=options["method"], device_type=lm.device.type,
                        dtype=settings["dtype"], batch_tokens=options["batch_tokens"],
                        max_logits=options["max_logits"], rows_per_block=settings["rows_per_block"],
                        n_params=sum(p.numel() for p in lm.model.parameters()),
                        attention=options["attention"])
    weight = np.array([sum(len(enc.prompt_ids[i]) for i in b) for b in blocks], dtype=float)
    mine = shards.assign_blocks(missing, weight, ranks.world)[ranks.rank]
    with profiled(ensure_out_dir(profile) if profile and ranks.main else None, lm.device) as found:
        _score_blocks(lm, enc, blocks, mine, out, call=call, options=options, progress=progress and ranks.main,
                      sync=profile is not None)
    dd.barrier(ranks)
    if not ranks.main:
        return None
    job["calls"][-1].update(damaged=[p.name for p in damaged], wall_seconds=time.perf_counter() - t0)
    write_json_atomic(out / shards.JOB, job)
    metas = _assemble(lm, task, states, out, enc=enc, job=job, template_path=template_path,
                      method=options["method"], plan=plan)
    if profile is not None:
        for d, meta in metas.items():
            _write_profile(meta, profile, call=call, found=found, out=d)
    if not isinstance(settings["temperature"], list):
        return metas[out]
    return read_json(out / TEMPERATURES, what="temperatures manifest")


def _lead(settings: dict) -> tuple:
    """The axes a shard's logT has before (rows, N): (K,) for K temperatures from one pass."""
    t = settings["temperature"]
    return (len(t),) if isinstance(t, list) else ()


def _write_temperatures(out: Path, metas: dict, settings: dict) -> dict:
    """DIR/temperatures.json, last: the several-temperature job is complete."""
    first = next(iter(metas.values()))
    doc = {**first, "temperature": settings["temperature"], "job": settings,
           "runs": {d.name: str(d) for d in metas}, "created": utc_now()}
    write_json_atomic(out / TEMPERATURES, doc)
    return doc


def _write_profile(meta: dict, profile: Path, *, call: int, found: dict, out: Path) -> None:
    """stages.md (this call's blocks) beside the trace: time per stage, synchronisations per
    forward and their call sites, the top kernels; the same goes into meta.json's `profile`."""
    from dbgpu.io import write_text_atomic
    from dbgpu.scoring.stats import kernel_table, stage_table

    scoring = meta["scoring_calls"][str(call)]
    table = stage_table(scoring)
    forwards = max(scoring.get("forward_passes") or 0, 1)
    syncs, kernels = found.get("syncs"), found.get("kernels") or []
    for k in kernels:
        k["per_forward_ms"] = k["ms"] / forwards
    sync_record = None
    text = table
    if syncs is not None and syncs.supported:
        sync_record = {"total": syncs.syncs, "per_forward": syncs.syncs / forwards, "sites": dict(syncs.top(10))}
        text += (f"\n\nhost-device synchronisations: {syncs.syncs} in {forwards} forwards "
                 f"({syncs.syncs / forwards:.1f} per forward); top call sites: "
                 + (", ".join(f"{site} x{n}" for site, n in syncs.top(5)) or "none"))
    else:
        text += "\n\nhost-device synchronisations: not counted (no CUDA device)"
    if kernels:
        text += f"\n\ntop kernels / operators by self time (totals over {forwards} forwards):\n\n" + kernel_table(kernels)
    meta["profile"] = {"dir": str(profile), "trace": str(profile / "trace.json"), "table": table,
                       "syncs": sync_record, "top_kernels": kernels}
    write_text_atomic(profile / "stages.md", text + "\n")
    write_json_atomic(out / "meta.json", meta)


def _score_blocks(lm, enc, blocks: list[np.ndarray], mine: list[int], out: Path, *, call: int, options: dict,
                  progress: bool, sync: bool = False) -> None:
    """Score the blocks `mine`, writing each one's shard as it finishes."""
    from dbgpu import shards
    from dbgpu.console import eta
    from dbgpu.console import progress as progress_bar
    from dbgpu.scoring import ScoreStats, score_matrix, sum_surface_forms

    method, temperature = options["method"], options["temperature"]
    kw = {"max_logits": options["max_logits"], "batch_tokens": options["batch_tokens"]}
    if method == "tree":
        kw["attention"] = options["attention"]
    n = len(enc.scored_ids)
    total = sum(len(blocks[k]) for k in mine) * n
    bar = progress_bar(total=total, enabled=progress, desc="scoring pairs", unit="pair")
    lines = progress and bar.disable                        # stderr is a log, not a terminal: one line per block
    t0, done = time.perf_counter(), 0
    for j, k in enumerate(mine):
        rows = blocks[k]
        stats = ScoreStats(sync=sync)
        logT = score_matrix(lm.model, [enc.prompt_ids[i] for i in rows], enc.scored_ids, method=method,
                            temperature=temperature, pad_id=lm.tokenizer.pad_token_id, stats=stats, **kw)
        if enc.form_starts is not None:                     # (R, M) forms -> (R, N) states
            logT = sum_surface_forms(logT, enc.form_starts)
        shards.write_shard(out, k, rows, logT, stats=stats.as_dict(), call=call)
        bar.update(len(rows) * n)
        done += len(rows) * n
        if lines:
            sec = time.perf_counter() - t0
            print(f"scoring: block {j + 1}/{len(mine)} written ({len(rows)} rows); {done:,}/{total:,} pairs "
                  f"in {sec:,.0f} s, {done / sec:,.1f} pairs/s{eta(done, total, sec)}", file=sys.stderr, flush=True)
    bar.close()


def _assemble(lm, task, states, out: Path, *, enc, job: dict, template_path, method, plan: dict) -> dict:
    """Every shard present: write the score directory (meta.json last), or one per temperature,
    and drop the shards. Returns {directory: its meta.json dict}."""
    from dbgpu import shards
    from dbgpu.data import write_score_dir
    from dbgpu.scoring.stats import merge_stats
    from dbgpu.scoring.trie import trie_lower_bound

    blocks = shards.plan_blocks(np.array([len(p) for p in enc.prompt_ids]), job["settings"]["rows_per_block"])
    settings = job["settings"]
    done, damaged = shards.read_shards(out, blocks, len(states), lead=_lead(settings))
    if damaged or len(done) != len(blocks):
        raise DbgpuError(f"{out}: {len(blocks) - len(done)} of {len(blocks)} row blocks are missing after "
                         f"scoring (a rank failed?); run the same command again to score them")
    stats = merge_stats([s.stats for s in done.values()])
    bound = trie_lower_bound(enc.prompt_ids, enc.scored_ids)
    stats.update(trie_lower_bound=bound, tokens_over_lower_bound=stats["tokens"] / bound, plan=plan)
    per_call, by_call = {}, {}
    for s in done.values():
        per_call[str(s.call)] = per_call.get(str(s.call), 0) + len(s.rows)
        by_call.setdefault(str(s.call), []).append(s.stats)
    meta = _meta(lm=lm, task=task, states=states, template_path=template_path, temperature=settings["temperature"],
                 method=method, stats=stats, job=job)
    meta["scoring_calls"] = {c: merge_stats(parts) for c, parts in sorted(by_call.items())}
    meta["surface_forms"] = {"mode": job["settings"].get("surface_forms", "canonical"),
                             "continuations": len(enc.scored_ids)}
    meta["shards"] = {"blocks": len(blocks), "rows_per_block": job["settings"]["rows_per_block"],
                      "rows_scored": int(sum(per_call.values())), "rows_per_call": per_call,
                      "damaged_rescored": sum(len(c.get("damaged", [])) for c in job["calls"]),
                      "calls": job["calls"]}
    logT = shards.assemble(done, len(states), lead=_lead(settings))
    taus = settings["temperature"]
    if not isinstance(taus, list):
        write_score_dir(out, states, logT, prompts=enc.prompts_json, meta=meta)
        shards.remove(out)
        return {out: meta}
    metas = {}
    dirs = _score_dirs(out, taus)
    for i, (tau, d) in enumerate(zip(taus, dirs)):
        one = {**meta, "temperature": tau, "job": {**settings, "temperature": tau},
               "temperature_pass": {"temperatures": taus, "index": i, "job_dir": str(out),
                                    "dirs": [x.name for x in dirs],
                                    "note": "every temperature's kernel from one pass of forwards; seconds, "
                                            "tokens and scoring are the shared pass's"}}
        write_score_dir(d, states, logT[i], prompts=enc.prompts_json, meta=one)
        metas[d] = one
    _write_temperatures(out, metas, settings)          # before the shards go: a crash here loses nothing
    shards.remove(out)
    return metas


def _meta(*, lm, task: Task, states: list[str], template_path, temperature, method: str,
          stats: dict, job: dict) -> dict:
    """meta.json: what was scored, with what, how fast, and the reproducibility record."""
    from dbgpu.formatting import TEMPLATE_DATE
    from dbgpu.provenance import environment, model_record
    from dbgpu.tasks import task_spec, template_sha256

    env = environment(lm.device)
    return {
        "model": job["settings"]["model"],
        "resolved": lm.resolved,
        "tokenizer": lm.info.get("tokenizer"),        # {kind: byte-level | an alias | the model's own, source, size}
        "task": task_spec(task),
        "template": str(template_path) if template_path else None,
        "template_sha256": template_sha256(task),
        "answer_prefix": task.answer_prefix,
        "n_states": len(states),
        "temperature": temperature,
        "method": method,
        "attention": job["settings"].get("attention", "dense") if method == "tree" else None,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "seconds": stats["seconds"],
        "tokens": stats["tokens"],
        "load_seconds": lm.load_seconds,
        "loaded_from_cache": lm.from_cache,
        "scoring": stats,
        "precision": {"decoder": str(lm.dtype).removeprefix("torch."), "head": "float32", "sums": "float64"},
        "job": job["settings"],
        "model_record": model_record(lm),
        "prompts_sha256": job["prompts_sha256"],
        "chat_template_date": TEMPLATE_DATE.isoformat(),
        "versions": env["versions"],
        "provenance": env,
        "created": utc_now(),
    }
