"""The Python API: dbgpu's stages as functions returning small result objects.

Each function is a thin front door to the job function its CLI command runs, so the two
cannot drift (the tests compare their output directories byte for byte):

    load_model          dbgpu.models.load_model
    get_task            dbgpu.tasks.get_task + read_template (the CLI's --task/--template/--answer-prefix)
    kernel -> Kernel    commands.score.score_job                     (dbgpu score)
      Kernel.save/load  data.write_score_dir / data.read_score_dir   (the score directory, manifest checked)
    potential           commands.fit.fit_data                        (dbgpu fit = read_input + fit_data + write_fit)
      Potential.save    commands.fit.write_fit; .load: report.read_fit
    draw_report         commands.report.report_job                   (dbgpu report)
    explanation         commands.explain.explain_job                 (dbgpu explain)
    exploration         commands.explore.explore_job                 (dbgpu explore; .states(): dbgpu states)
    compare             commands.compare.compare_job                 (dbgpu compare)

Layering: this module sits above `commands` and below `cli`. The job functions stay the
one definition of each stage (validation, locks, atomic writes, the one-line errors);
the API only turns Python values into their arguments and their results into objects
that print a summary. The other direction (commands calling into the API) would put
notebook concerns (reprs, pandas) into the job layer and make the objects the CLI's
currency; this way the CLI and the API share everything below the objects.

Names: the functions avoid the names of dbgpu's submodules (fit, report, explain,
explore, comparison): Python binds a submodule to its package's attribute of that name
when the submodule is first imported, which would replace a top-level function there.

Nothing heavy is imported at module level: numpy, torch and transformers load when a
function that needs them runs, so `import dbgpu` and `help(dbgpu)` stay fast.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from dbgpu.errors import DbgpuError

if TYPE_CHECKING:                                   # for annotations only: not imported at run time
    import numpy as np
    import pandas as pd

    from dbgpu.commands.fit import FitOutputs
    from dbgpu.models import LM
    from dbgpu.tasks import Task

PathLike = Union[str, "os.PathLike[str]"]
#: a state set: the states themselves, a states file (JSON list, text, score directory), or
#: how many of the task's seed states
States = Union[Sequence[str], PathLike, int]

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TASK = "word100"


def _pandas():
    try:
        import pandas
    except ImportError:
        raise DbgpuError("to_frame() needs pandas, which is not installed: pip install pandas "
                         "(or pip install 'dbgpu[pandas]')") from None
    return pandas


# --------------------------------------------------------------------------- models and tasks


def load_model(name: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto",
               cache_dir: PathLike | None = None, seed: int = 0, device_map: str | dict | None = None,
               max_memory: str | dict | None = None, offload_dir: PathLike | None = None) -> LM:
    """Load a model and its tokenizer once, to pass to `kernel` and `exploration`.

    `name`: an alias (smollm2-135m, gemma3-270m), random:llama|qwen2|gemma3 (tiny random
    weights, `seed`; real-size shapes such as random:llama-3.1-8b, and random:ARCH+smollm2-135m
    for SmolLM2's BPE tokenizer), a local directory, a .gguf file or a hub id. `device` auto is CUDA
    when available; `dtype` auto is bf16 on CUDA, float32 on CPU. GGUF models are
    dequantised once (tens of seconds on a CPU) and cached under `cache_dir` (default:
    the user cache directory). `device_map` ("auto", "balanced", "balanced_low_0",
    "sequential" or a {module: device} dict), `max_memory` ("0=20GiB,cpu=64GiB" or
    accelerate's dict) and `offload_dir`: a model larger than one device, spread by
    accelerate's big-model dispatch. Same as the CLI's --model/--device/--dtype/--cache-dir/
    --device-map/--max-memory/--offload-dir.
    """
    from dbgpu.models import load_model as load
    from dbgpu.models import placement

    placed = placement(device_map=device_map, max_memory=max_memory, offload_dir=offload_dir) or {}
    return load(name, device=device, dtype=dtype, cache_dir=cache_dir, seed=seed, **placed)


def get_task(spec: str = DEFAULT_TASK, *, template: str | None = None, answer_prefix: str | None = None) -> Task:
    """A task: built-in (word100, formula), package.module:Name, or an installed plugin.

    `template`: one of the task's built-in template names (word100: paper, terse,
    puzzle) or a template file; `answer_prefix`: the text opening the answer, part of
    the prompt ('' for none). Same as the CLI's --task/--template/--answer-prefix.
    """
    from dbgpu.tasks import get_task as get, read_template

    if not isinstance(spec, str):
        raise DbgpuError(f"a task is named by a string (word100, formula, package.module:Name), not a "
                         f"{type(spec).__name__}")
    return get(spec, template=read_template(template, task=spec), answer_prefix=answer_prefix)


def _task(task: Task | str, *, template: str | None, answer_prefix: str | None) -> Task:
    if isinstance(task, str):
        return get_task(task, template=template, answer_prefix=answer_prefix)
    if template is not None or answer_prefix is not None:
        raise DbgpuError("template and answer_prefix go with a task name; this task object is already "
                         "made: use get_task(name, template=..., answer_prefix=...)")
    return task


def _state_list(task: Task, states: States) -> list[str]:
    """The states as a list (the job canonicalises and checks them)."""
    from dbgpu.commands.run import seed_states
    from dbgpu.io import read_states_file

    if isinstance(states, int) and not isinstance(states, bool):
        return seed_states(task, states)
    if isinstance(states, (str, os.PathLike)):
        return read_states_file(states)
    if isinstance(states, (list, tuple)) and all(isinstance(s, str) for s in states):
        return list(states)
    raise DbgpuError("states must be a list of state strings, a states file (JSON list, text file, score "
                     "directory) or a number of the task's seed states")


def _model(model: LM | str) -> tuple[str, LM | None]:
    """(the model's name, the loaded model or None)."""
    return (model, None) if isinstance(model, str) else (model.name, model)


# --------------------------------------------------------------------------- kernel


@dataclass(eq=False, repr=False)
class Kernel:
    """An exact kernel: `logT[f, g]` = log T(f -> g) for every ordered pair of `states`
    (float64, row = source, column = target, diagonal included), with the exact prompt
    and answer texts (`prompts`) and the score's record (`meta`) when it came from a
    model; `path` is the directory it was loaded from or saved to.

    Made by `kernel(...)` or `Kernel.load(dir)`, or from arrays: `Kernel(states, logT)`.
    `.save(dir)` writes the `dbgpu score` directory format, which `dbgpu fit DIR` reads.
    """

    states: list[str]
    logT: np.ndarray
    prompts: dict | None = None
    meta: dict | None = None
    path: Path | None = None

    def __post_init__(self):
        import numpy as np

        from dbgpu.data import check_logT, check_states

        check_states(list(self.states) if isinstance(self.states, (list, tuple)) else self.states,
                     where="states")
        self.states = list(self.states)
        self.logT = check_logT(np.asarray(self.logT), len(self.states), where="logT")

    @classmethod
    def load(cls, dir: PathLike) -> Kernel:
        """Read a score directory (`dbgpu score` or `Kernel.save`), its manifest checked:
        a directory a crash or another process left half-written is a one-line error."""
        from dbgpu.data import read_score_dir
        from dbgpu.io import read_json

        path = Path(dir)
        k = read_score_dir(path)
        extra = {name: read_json(path / f"{name}.json", what=f"{name} file") if (path / f"{name}.json").is_file()
                 else None for name in ("prompts", "meta")}
        return cls(k.states, k.logT, path=path, **extra)

    def save(self, dir: PathLike) -> Path:
        """Write states.json, logT.npy, prompts.json and meta.json (when known) into `dir`
        atomically, as its only writer (`dbgpu score`'s writer); returns the directory."""
        from dbgpu.data import write_score_dir
        from dbgpu.io import check_out_dir, locked_dir

        out = check_out_dir(dir)
        with locked_dir(out):
            write_score_dir(out, self.states, self.logT, prompts=self.prompts, meta=self.meta)
        self.path = out
        return out

    @property
    def coverage(self) -> np.ndarray:
        """(N,) sum_g T(f, g) per source f: the mass on answers inside the state set."""
        import numpy as np

        return np.exp(self.logT).sum(1)

    @property
    def self_mass(self) -> np.ndarray:
        """(N,) T(f, f) per state: the mass on answering with the source itself."""
        import numpy as np

        return np.exp(np.diag(self.logT))

    def summary(self, *, top: int = 10) -> str:
        """Coverage and self-transition mass per state and the largest transitions
        (what `dbgpu run` prints)."""
        from dbgpu.commands.run import kernel_summary

        return kernel_summary(self.states, self.logT, top=top)

    def to_frame(self) -> pd.DataFrame:
        """log T as an N x N pandas DataFrame (index: source f, columns: target g).
        Needs pandas (pip install pandas)."""
        pd = _pandas()
        idx = pd.Index(self.states, name="source")
        return pd.DataFrame(self.logT, index=idx, columns=pd.Index(self.states, name="target"))

    def __repr__(self) -> str:
        import numpy as np

        m = self.meta or {}
        n = len(self.states)
        head = f"Kernel: {n} x {n} states"
        if m:
            head += (f", model {m.get('model')} ({m.get('dtype')} on {m.get('device')}), task {m.get('task')}, "
                     f"temperature {m.get('temperature')}, {m.get('method')} scorer")
        cov, own = self.coverage, self.self_mass
        shown = ", ".join(self.states[:8]) + (f", ... ({n - 8} more)" if n > 8 else "")
        return "\n".join([
            head,
            f"  coverage sum_g T(f,g): median {np.median(cov):.3g} (min {cov.min():.3g}, max {cov.max():.3g}); "
            f"self-transition T(f,f): median {np.median(own):.3g}",
            f"  states: {shown}",
            f"  saved in {self.path}" if self.path else "  not saved (.save(dir) writes a score directory)",
        ])


def kernel(model: LM | str, task: Task | str, states: States, *, temperature: float | Sequence[float] = 1.0,
           method: str = "tree", template: str | None = None, answer_prefix: str | None = None,
           device: str = "auto", dtype: str = "auto", cache_dir: PathLike | None = None,
           batch_tokens: int | None = None, max_logits: int | None = None, rows_per_block: int = 128,
           out: PathLike | None = None, overwrite: bool = False, progress: bool = True,
           profile: PathLike | None = None, surface_forms: str = "canonical", device_map: str | dict | None = None,
           max_memory: str | dict | None = None, offload_dir: PathLike | None = None, attention: str = "dense"
           ) -> Kernel | dict[float, Kernel] | None:
    """The exact kernel log T(f, g) of a state set under a model, by teacher forcing: what
    `dbgpu score` computes, through the same job (`commands.score.score_job`).

    `model`: a `load_model` result (loaded once, reused) or a name (loaded here with
    `device`, `dtype`, `cache_dir`). `task`: a `get_task` result or a name (with
    `template`, `answer_prefix`). `states`: a list, a states file, or N (the task's N
    seed states). `out`: score into this directory (resumable; kept) instead of a
    temporary one; `overwrite` as the CLI's --overwrite. `surface_forms="all"`: T(f, g)
    sums every surface form of g the task lists (--surface-forms). `device_map`, `max_memory`,
    `offload_dir`: as for `load_model`, when `model` is a name. Cost: N^2 continuations, the
    tree scorer running each distinct prompt prefix once; memory O(N^2) for log T.
    `temperature` a sequence (`[0.5, 1, 2]`): {tau: Kernel}, every one from the same pass
    of forwards (one log-softmax more per temperature, not another pass); with `out`,
    each saved in out/tau-<tau>. Returns None on the other ranks of a torchrun /
    accelerate launch. `attention="sparse"`: the tree scorer's attention without masks (each
    trie node attends to the prefix, its row's suffix and its ancestors; --attention sparse).
    """
    from dbgpu.commands.score import score_job
    from dbgpu.models import placement

    name, lm = _model(model)
    t = _task(task, template=template, answer_prefix=answer_prefix)
    job = dict(model=name, task=t, states=_state_list(t, states), template_path=template,
               temperature=temperature, method=method, device=device, dtype=dtype, cache_dir=cache_dir,
               batch_tokens=batch_tokens, max_logits=max_logits, rows_per_block=rows_per_block,
               overwrite=overwrite, progress=progress, profile=profile, lm=lm, surface_forms=surface_forms,
               placement=placement(device_map=device_map, max_memory=max_memory, offload_dir=offload_dir),
               attention=attention)
    several = not isinstance(temperature, (int, float))

    def loaded(d: Path):
        if not several:
            return Kernel.load(d)
        from dbgpu.commands.score import tau_name

        return {float(tau): Kernel.load(d / tau_name(float(tau))) for tau in temperature}

    if out is not None:
        return None if score_job(out=out, **job) is None else loaded(Path(out))
    from dbgpu.distributed import launched

    if launched().world > 1:
        raise DbgpuError("under torchrun / accelerate launch, kernel() needs out=DIR, a directory the ranks share")
    with tempfile.TemporaryDirectory(prefix="dbgpu-kernel-") as tmp:
        score_job(out=tmp, **job)
        ks = loaded(Path(tmp))
    for k in (ks.values() if several else [ks]):
        k.path = None
    return ks


# --------------------------------------------------------------------------- potential


class Potential:
    """A least-action potential and its detailed-balance statistics (what `dbgpu fit`
    writes), made by `potential(...)` or `Potential.load(dir)`.

    `V`: {state: V or None} in the input's order; V on the main strongly connected
    component (zero mean there), None for every state whose potential is unbounded
    relative to it. `sigma`: {state: error bar or None}, or None without error bars.
    `stats`: stats.json's dict (action, pairwise, loops, hodge, entropy_production,
    components, ...). `components`: stats["components"]. `task`: the task's name when
    known; `path`: the directory it was loaded from or saved to.
    """

    def __init__(self, outputs: FitOutputs, *, task: str | None = None, path: Path | None = None):
        self._outputs = outputs
        self.task = task
        self.path = path

    V = property(lambda self: self._outputs.potential, doc="{state: V or None (unbounded)}")
    sigma = property(lambda self: self._outputs.sigma, doc="{state: sigma or None}, or None without error bars")
    stats = property(lambda self: self._outputs.stats, doc="stats.json's dict")
    components = property(lambda self: self._outputs.stats["components"],
                          doc="the strongly connected components (sizes, positions, levels)")
    pi = property(lambda self: self._outputs.msm,
                  doc="{state: pi or None}: the stationary distribution of the reversible Markov model "
                      "the fit is (msm.json; docs/msm.md), None outside the main component; None for a "
                      "fit directory written before msm.json existed")

    @property
    def P(self):
        """The reversible Markov model's transition matrix (scipy.sparse CSR, main component
        x main component, rows summing to 1, `pi_f P_fg = pi_g P_gf`), rows and columns in
        the order of `msm_states`; None for a fit written before msm_transitions.npz existed."""
        import scipy.sparse as sp

        z = self._outputs.msm_npz
        if z is None:
            return None
        return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(int(k) for k in z["shape"]))

    @property
    def msm_states(self) -> list[str] | None:
        """The states of `P`'s rows and columns (the main component, input order)."""
        z = self._outputs.msm_npz
        return None if z is None else [str(s) for s in z["states"]]

    @property
    def states(self) -> list[str]:
        return list(self._outputs.potential)

    @property
    def bounded(self) -> list[str]:
        """The states with a finite V (the main component), in input order."""
        return [s for s, v in self._outputs.potential.items() if v is not None]

    @classmethod
    def load(cls, dir: PathLike) -> Potential:
        """Read a fit directory (`dbgpu fit`, `dbgpu run`, `Potential.save`), its manifest
        checked."""
        from dbgpu.commands.explain import task_of
        from dbgpu.commands.fit import FitOutputs
        from dbgpu.report import read_fit, read_msm

        path = Path(dir)
        stats, potential, points, sigma = read_fit(path)
        full = None if sigma is None else {s: sigma.get(s) for s in potential}
        msm, msm_npz = read_msm(path)
        try:
            task = task_of(path)
        except DbgpuError:
            task = None
        return cls(FitOutputs(potential=potential, stats=stats, points=points, sigma=full, msm=msm,
                              msm_npz=msm_npz), task=task, path=path)

    def save(self, dir: PathLike) -> Path:
        """Write potential.json, stats.json, fit_points.npz, msm.json, msm_transitions.npz
        (and uncertainty.json) into
        `dir`, as `dbgpu fit` does (`commands.fit.write_fit`); returns the directory."""
        from dbgpu.commands.fit import write_fit

        write_fit(dir, self._outputs)
        self.path = Path(dir)
        return self.path

    def summary(self) -> str:
        """The headline numbers and the extremes of V (what `dbgpu run` prints)."""
        from dbgpu.commands.run import analysis_summary

        return analysis_summary(self.stats, self.V)

    def to_frame(self) -> pd.DataFrame:
        """One row per state (index: state): V, bounded, and sigma when computed, lowest
        V first, unbounded states last. Needs pandas (pip install pandas)."""
        pd = _pandas()
        rows = {"V": [float("nan") if v is None else v for v in self.V.values()],
                "bounded": [v is not None for v in self.V.values()]}
        if self.sigma is not None:
            rows["sigma"] = [float("nan") if s is None else s for s in self.sigma.values()]
        df = pd.DataFrame(rows, index=pd.Index(self.states, name="state"))
        return df.sort_values("V", kind="stable", na_position="last")

    def __repr__(self) -> str:
        st, comp = self.stats, self.components
        head = (f"Potential: {st['n_states']} states, {len(self.bounded)} bounded (main component "
                f"{comp['main_size']} of {st['n_states']}; {comp['count']} component{'s' * (comp['count'] != 1)}), {st['n_edges']} edges, "
                f"weights {st['weights']}" + (f", task {self.task}" if self.task else ""))
        body = "  " + self.summary().replace("\n", "\n  ")
        where = f"  saved in {self.path}" if self.path else "  not saved (.save(dir) writes a fit directory)"
        return "\n".join([head, body, where])


def _fit_source(source) -> tuple[Any, str | None, str | None]:
    """(the input as `dbgpu.data` reads it, the input's label for stats.json, the task)."""
    from dbgpu.data import Kernel as Exact, Transitions, read_input, transitions_from_pairs

    if isinstance(source, Kernel):
        task = (source.meta or {}).get("task")
        return Exact(states=source.states, logT=source.logT), None if source.path is None else str(source.path), task
    if isinstance(source, Exploration):
        return read_input(source.log), str(source.log), source.task
    if isinstance(source, (str, os.PathLike)):
        return read_input(source), str(source), None
    if isinstance(source, (Exact, Transitions)):
        return source, None, None
    if isinstance(source, (list, tuple)):
        ok = all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
                 and (p[1] is None or isinstance(p[1], str)) for p in source)
        if not ok:
            raise DbgpuError("a list of transitions must hold (source, target) pairs: source a string, "
                             "target a string or None (a rejected answer)")
        return transitions_from_pairs([p[0] for p in source], [p[1] for p in source], kind="pairs"), None, None
    raise DbgpuError(f"cannot fit a {type(source).__name__}: expected a Kernel, an Exploration, a path (paper "
                     f".json, transitions .jsonl, score directory) or a list of (source, target) pairs")


def potential(source: Kernel | Exploration | PathLike | Sequence[tuple[str, str | None]], *,
              weights: str | None = None, reject: str = "high", threshold: float = 0, device: str = "auto",
              method: str = "newton", laplace: bool = False, bootstrap: int = 0, null: int = 0, seed: int = 0,
              progress: bool = False) -> Potential:
    """The least-action potential and the detailed-balance statistics: what `dbgpu fit`
    computes (`commands.fit.fit_data`), in memory; `.save(dir)` writes its files.

    `source`: a Kernel (exact: w = T), an Exploration or a transitions.jsonl / paper
    JSON path (sampled counts), a score directory, or a list of (source, target) pairs,
    target None for a rejected answer. Sampled inputs: `weights` "paper" (default, with
    `reject` high/low and `threshold`) or "counts"; `laplace`, `bootstrap` B, `null` B
    add error bars and null distributions. `device` auto is CUDA when available.
    Cost: O(E) per optimiser iteration (E edges, N^2 for a dense kernel).
    """
    from dbgpu.commands.fit import fit_data

    data, label, task = _fit_source(source)
    fitted = fit_data(data, input_label=label, reject=reject, threshold=threshold, weights=weights, device=device,
                      method=method, laplace=laplace, bootstrap=bootstrap, null=null, seed=seed, progress=progress)
    return Potential(fitted, task=task)


def _fit_dir(source: Potential | PathLike, out: PathLike | None, *, doing: str) -> Path:
    """The fit directory of `source`: a path as it is; a Potential saved into `out` first,
    or where it was saved."""
    if not isinstance(source, Potential):
        if not isinstance(source, (str, os.PathLike)):
            raise DbgpuError(f"{doing} needs a Potential or a fit directory, not a {type(source).__name__}")
        if out is not None:
            raise DbgpuError(f"out= goes with a Potential; {doing} writes into the fit directory {source} itself")
        return Path(source)
    if out is not None:
        return source.save(out)
    if source.path is None:
        raise DbgpuError(f"this potential is not saved: pass out=DIR ({doing} saves it there first)")
    return source.path


def draw_report(source: Potential | PathLike, *, out: PathLike | None = None) -> Path:
    """Figures (PNG and PDF) and report.md for a fit: what `dbgpu report DIR` draws
    (`commands.report.report_job`). `source`: a fit directory, or a Potential (saved
    into `out` first when given). Returns report.md's path."""
    from dbgpu.commands.report import report_job

    return report_job(_fit_dir(source, out, doing="draw_report"))


def explanation(source: Potential | PathLike, *, task: Task | str | None = None, folds: int = 5, seed: int = 0,
                out: PathLike | None = None) -> dict:
    """V regressed on the task's state features (standardised OLS and ridge,
    cross-validated R^2): what `dbgpu explain DIR` writes (explain.json, explain.png),
    returned as a dict. `task` defaults to the potential's own (or the one recorded with
    the directory)."""
    from dbgpu.commands.explain import explain_job

    if task is None and isinstance(source, Potential):
        task = source.task
    return explain_job(_fit_dir(source, out, doing="explanation"), task=task, folds=folds, seed=seed)


# --------------------------------------------------------------------------- exploration


@dataclass(eq=False, repr=False)
class Exploration:
    """An explore run directory after a call of `exploration(...)`: the log
    (transitions.jsonl), what this call did (`summary`, steps) and every state the run
    has discovered. `potential(run)` fits its counts."""

    dir: Path
    log: Path
    task: str
    model: str
    first_step: int
    steps: int
    summary: dict
    discovered: list[str]
    record: dict = field(default_factory=dict)

    def states(self, *, min_count: int = 0) -> list[str]:
        """The discovered valid states answered at least `min_count` times, most answered
        first (what `dbgpu states DIR` prints), e.g. to pass to `kernel`."""
        from dbgpu.commands.states import states_job

        return [s for s, _ in states_job(self.dir, min_count=min_count)]

    def to_frame(self) -> pd.DataFrame:
        """The log's complete steps, one row per query (source, answer, target, ...).
        Needs pandas (pip install pandas)."""
        from dbgpu.explore import read_run

        pd = _pandas()
        return pd.DataFrame(read_run(self.dir)[1])

    def __repr__(self) -> str:
        from dbgpu.commands.explore import summary_text

        text = summary_text(self.summary, steps=(self.first_step, self.first_step + self.steps),
                            n_discovered=len(self.discovered), path=self.log)
        return f"Exploration: task {self.task}, model {self.model}\n  " + text.replace("\n", "\n  ")


def exploration(model: LM | str, task: Task | str, *, steps: int, out: PathLike, protocol: str = "paper",
                batch: int = 32, start: str | None = None, temperature: float = 1.0,
                max_new_tokens: int | None = None, seed: int = 0, template: str | None = None,
                answer_prefix: str | None = None, device: str = "auto", dtype: str = "auto",
                cache_dir: PathLike | None = None, progress: bool = True, device_map: str | dict | None = None,
                max_memory: str | dict | None = None, offload_dir: PathLike | None = None,
                kv_cache: str = "auto") -> Exploration:
    """Run the sampling agent for `steps` steps of `batch` queries, appending one line
    per query to out/transitions.jsonl (a second call on `out` continues the run): what
    `dbgpu explore` does (`commands.explore.explore_job`). Pure temperature sampling;
    `protocol` paper (sources drawn from the discovered states) or walk. Cost: `steps`
    batched generations of at most `max_new_tokens` tokens. `device_map`, `max_memory`,
    `offload_dir`: as for `load_model`, when `model` is a name. `kv_cache`: the sampler's
    decode loop (auto: static on CUDA, dynamic elsewhere; `dbgpu.sampling`)."""
    from dbgpu.commands.explore import explore_job
    from dbgpu.models import placement
    from dbgpu.tasks import task_spec

    name, lm = _model(model)
    t = _task(task, template=template, answer_prefix=answer_prefix)
    res = explore_job(model=name, task=t, steps=steps, out=out, protocol=protocol, batch=batch, start=start,
                      temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, device=device,
                      dtype=dtype, cache_dir=cache_dir, progress=progress, lm=lm, kv_cache=kv_cache,
                      placement=placement(device_map=device_map, max_memory=max_memory, offload_dir=offload_dir))
    return Exploration(dir=Path(out), log=Path(res["log"]), task=task_spec(t), model=name,
                       first_step=res["first_step"], steps=res["steps"], summary=res["summary"],
                       discovered=res["discovered"], record=res)


# --------------------------------------------------------------------------- comparison


@dataclass(eq=False, repr=False)
class Comparison:
    """Potentials of one state set under several models x templates, compared
    (compare.json's dict as `result`; the files in `dir`)."""

    dir: Path
    result: dict

    pairs = property(lambda self: self.result["pairs"], doc="one dict per pair of runs (compare.csv)")
    runs = property(lambda self: self.result["runs"], doc="one dict per run (runs.csv)")
    spread = property(lambda self: self.result["spread"], doc="the spread of V across the runs")

    def to_frame(self) -> pd.DataFrame:
        """One row per pair of runs (compare.csv). Needs pandas (pip install pandas)."""
        return _pandas().DataFrame(self.pairs)

    def __repr__(self) -> str:
        from dbgpu.commands.compare import compare_summary

        head = (f"Comparison: task {self.result['task']}, {len(self.result['states'])} states, "
                f"{len(self.runs)} runs -> {self.dir}")
        return head + "\n  " + compare_summary(self.result).replace("\n", "\n  ")


def compare(models: Sequence[str], states: States = 24, *, out: PathLike, templates: Sequence[str] | None = None,
            task: str = DEFAULT_TASK, answer_prefix: str | None = None, temperature: float = 1.0,
            temperatures: Sequence[float] | None = None, method: str = "tree", device: str = "auto", dtype: str = "auto", cache_dir: PathLike | None = None,
            progress: bool = True, device_map: str | dict | None = None, max_memory: str | dict | None = None,
            offload_dir: PathLike | None = None) -> Comparison | None:
    """Score one state set under every model x template (reusing runs already in `out`),
    fit each and compare the potentials: what `dbgpu compare` does
    (`commands.compare.compare_job`). `templates`: built-in names or files (default:
    the task's own). Cost: one `kernel` and one `potential` per run. Returns None on
    the other ranks of a launched job. `device_map`, `max_memory`, `offload_dir`: as for
    `load_model`. `temperatures` (a list): a temperature axis, each model x template scored
    once for all of them, one run per temperature (`result["temperature_axis"]`)."""
    from dbgpu.commands.compare import compare_job
    from dbgpu.models import placement

    if isinstance(models, str):
        raise DbgpuError("models must be a list of model names (a comparison needs at least two runs)")
    states = _state_list(get_task(task), states)
    result = compare_job(models=list(models), templates=list(templates) if templates else [None], task_name=task,
                         states=states, out=out, answer_prefix=answer_prefix,
                         temperature=temperature if temperatures is None else [float(t) for t in temperatures],
                         method=method, device=device, dtype=dtype, cache_dir=cache_dir, progress=progress,
                         placement=placement(device_map=device_map, max_memory=max_memory, offload_dir=offload_dir))
    return Comparison(dir=Path(out), result=result) if result else None
