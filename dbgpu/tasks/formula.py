"""The paper's second agent (IdeaSearchFitter-style symbolic regression): fitting functions.

A state is a fitting function y = f(x) written with x, free parameters param1..paramK,
the constants 1, 2 and pi, + - * / ** and sin cos tan exp log sqrt abs tanh, in the
canonical form of `dbgpu.tasks.expr` (model text is parsed by a whitelist on `ast`,
never evaluated). The prompt describes the data, shows one expression with its score
and asks for a new expression expected to fit better, the expression only.

Data (`friction_table`): the Darcy friction factor lambda of turbulent flow in a rough
pipe against x = log10(Re), from the Colebrook-White law

    1/sqrt(lambda) = -2 log10(k/(3.7 D) + 2.51/(Re sqrt(lambda)))

at relative roughness k/D = 1/252 (Nikuradse's sand-roughened pipe r/k = 126), solved by
fixed-point iteration on u = 1/sqrt(lambda), at 30 Reynolds numbers log-spaced from
4e3 to 1e7 (x from 3.6 to 7), with 1% Gaussian relative scatter (seed 0) standing in for
Nikuradse's measurement error. Roughness fixed, one input variable (Re), as the paper
reduced the Nikuradse set.

Score (`fit_expression`, `score_from_error`): the parameters are fitted by
`scipy.optimize.least_squares` on relative residuals (f - y)/y (several seeded starts,
bounded evaluations; overflow/NaN residuals are replaced by a large finite penalty while
fitting). With e the RMS relative error of the best fit, e0 that of the best constant and
e_noise the RMS relative scatter of the table about the exact law,

    score = 100 * clip(log(e0 / e) / log(e0 / e_noise), 0, 1)

so 0 is no better than a constant, 100 fits as well as the law itself, and every factor
by which the error shrinks counts the same. Scores are cached per state.

Answers, as for words (alphabetic or not, summing to 100 or not):

- not a Python expression at all (prose, "f(x) = ... where ...", unbalanced brackets, an
  empty answer): rejected, like a non-alphabetic word (`parse` -> None);
- a Python expression the whitelist refuses (other names or numbers, attribute access,
  calls of anything else, lambdas, subscripts, strings, comprehensions) or one over the
  size limits: the single invalid state INVALID;
- an allowed expression: its canonical form, a state.

`hopeless`: once a partial answer holds two operands side by side outside strings and
comments ("The formula", "x) where"), no continuation makes it an expression
(`dbgpu.tasks.expr.juxtaposed`), so sampling stops it there; `parse` checks the same rule
before anything else, so an answer stopped early is rejected exactly as it would have been.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dbgpu.errors import DbgpuError
from dbgpu.tasks.base import after_prefix, fill_template
from dbgpu.tasks.expr import (FUNCTIONS, ExprError, compile_tree, depth, functions, juxtaposed, parameters,
                              parse_expression, to_text)

INVALID = "INVALID"
ROUGHNESS = 1 / 252            # relative roughness k/D
RE_RANGE = (4e3, 1e7)
N_POINTS = 30
SCATTER = 0.01                 # relative measurement scatter
SEED = 0
PENALTY = 1e3                  # residual that replaces inf/nan while fitting
MAX_ANSWER_TOKENS = 48         # explore's default --max-new-tokens for this task
SCAN_CHARS = 2000              # how much of an answer the side-by-side rule reads


def colebrook(re: np.ndarray, roughness: float, *, iterations: int = 60) -> np.ndarray:
    """Darcy friction factor from the Colebrook-White law, by fixed-point iteration on
    u = 1/sqrt(lambda): u <- -2 log10(k/3.7D + 2.51 u / Re). The map's slope is
    2/ln(10) * b/(a + b u) < 0.87/u (u > 5 here), so 60 iterations reach float precision."""
    a, b = roughness / 3.7, 2.51 / np.asarray(re, dtype=np.float64)
    u = np.full_like(b, 8.0)
    for _ in range(iterations):
        u = -2.0 * np.log10(a + b * u)
    return 1.0 / u ** 2


@dataclass(frozen=True)
class Table:
    x: np.ndarray              # log10(Re), (N,)
    y: np.ndarray              # measured friction factor, (N,)
    exact: np.ndarray          # the law without scatter, (N,)

    @property
    def e_const(self) -> float:
        """RMS relative error of the best constant (minimises sum ((c - y)/y)^2)."""
        c = np.sum(1 / self.y) / np.sum(1 / self.y ** 2)
        return float(np.sqrt(np.mean(((c - self.y) / self.y) ** 2)))

    @property
    def e_noise(self) -> float:
        """RMS relative deviation of the table from the exact law: the best a fit can do."""
        return float(np.sqrt(np.mean(((self.exact - self.y) / self.y) ** 2)))


def friction_table(*, n: int = N_POINTS, seed: int = SEED, scatter: float = SCATTER) -> Table:
    """The task's data: n points of Colebrook-White friction with relative Gaussian scatter."""
    x = np.linspace(np.log10(RE_RANGE[0]), np.log10(RE_RANGE[1]), n)
    exact = colebrook(10.0 ** x, ROUGHNESS)
    y = exact * (1 + scatter * np.random.default_rng(seed).standard_normal(n))
    return Table(x=x, y=y, exact=exact)


def relative_error(tree: tuple, table: Table, params: np.ndarray) -> float:
    """RMS relative error of the expression at `params` (inf if any value is not finite)."""
    with np.errstate(all="ignore"):
        f = np.broadcast_to(np.asarray(compile_tree(tree)(table.x, params), dtype=np.float64), table.y.shape)
    r = (f - table.y) / table.y
    return float(np.sqrt(np.mean(r ** 2))) if np.all(np.isfinite(r)) else float("inf")


def fit_expression(tree: tuple, table: Table, *, starts: int = 4, seed: int = 0,
                   max_nfev: int = 300) -> tuple[np.ndarray, float]:
    """(parameters, RMS relative error) of the best of `starts` least-squares fits: the
    first from all ones, the others from seeded N(0, 1) draws. Each fit costs at most
    max_nfev * (K + 1) evaluations of the expression on the table (K parameters)."""
    from scipy.optimize import least_squares

    k = len(parameters(tree))
    if k == 0:
        return np.zeros(0), relative_error(tree, table, np.zeros(0))
    fn = compile_tree(tree)

    def residual(p):
        with np.errstate(all="ignore"):
            f = np.broadcast_to(np.asarray(fn(table.x, p), dtype=np.float64), table.y.shape)
            r = (f - table.y) / table.y
        return np.where(np.isfinite(r), np.clip(r, -PENALTY, PENALTY), PENALTY)

    rng = np.random.default_rng(seed)
    best_p, best_e = np.ones(k), relative_error(tree, table, np.ones(k))
    for s in range(starts):
        p0 = np.ones(k) if s == 0 else rng.standard_normal(k)
        try:
            res = least_squares(residual, p0, method="trf", max_nfev=max_nfev)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            continue
        e = relative_error(tree, table, res.x)
        if e < best_e:
            best_p, best_e = res.x, e
    return best_p, best_e


def score_from_error(e: float, *, e_const: float, e_noise: float) -> float:
    """100 * clip(log(e0/e) / log(e0/e_noise), 0, 1); 0 for a non-finite error."""
    if not np.isfinite(e):
        return 0.0
    if e <= 0:
        return 100.0
    return float(100 * np.clip(np.log(e_const / e) / np.log(e_const / e_noise), 0.0, 1.0))


def describe(table: Table) -> str:
    shown = np.linspace(0, len(table.x) - 1, 5).astype(int)
    rows = "; ".join(f"x = {table.x[i]:.2f}: y = {table.y[i]:.4f}" for i in shown)
    return (f"The data: the friction factor y of turbulent flow in a rough pipe (relative roughness 1/252) "
            f"against x = log10 of the Reynolds number, {len(table.x)} measurements with x from "
            f"{table.x.min():.1f} to {table.x.max():.1f} and y from {table.y.min():.3f} to {table.y.max():.3f} "
            f"({rows}).")


DEFAULT_TEMPLATE = (
    "We are looking for a formula y = f(x) that fits experimental data. {data}\n"
    "A formula may use x, free parameters param1, param2, ... (fitted to the data by least squares), "
    "the constants 1, 2 and pi, the operators + - * / ** and the functions sin, cos, tan, exp, log, "
    "sqrt, abs, tanh. Its score is 0 when it fits no better than a constant and 100 when it fits "
    "within the measurement error.\n"
    "Here is a formula with score {score}: {state}\n"
    "Write a new formula that you expect to fit the data better. "
    "Answer with the formula only, without explanation."
)

TEMPLATES = {
    "default": DEFAULT_TEMPLATE,
    "terse": (
        "Fit y(x) = friction factor against x = log10(Reynolds number) for a rough pipe. "
        "Allowed: x, param1..param9, 1, 2, pi, + - * / **, sin cos tan exp log sqrt abs tanh.\n"
        "Current formula (score {score} of 100): {state}\n"
        "Give a better formula. Formula only."
    ),
}

SEEDS = (
    # trivial, parameter-free and one-parameter
    "x", "1/x", "param1", "param1*x", "param1/x", "param1*sqrt(x)", "param1/log(x)", "param1*exp(-x)",
    "param1*tanh(x)", "param1*cos(x)", "param1/x**2", "param1*x**2",
    # two and three parameters
    "param1 + param2*x", "param1 + param2/x", "param1 + param2*log(x)", "param1*x**param2",
    "param1 + param2/x**2", "param1*exp(-param2*x)", "param1 + param2*sin(x)", "param1 + param2/sqrt(x)",
    "param1 + param2*exp(-x)", "1/(param1 + param2*x)**2", "param1 + param2*x + param3*x**2",
    "param1 + param2*exp(-param3*x)", "param1 + param2*x**param3", "param1 + param2/(x + param3)",
    "param1 + param2*tanh(param3*x)", "(param1 + param2/x)**2",
    # four parameters and the law's own shape
    "param1 + param2*x + param3*x**2 + param4/x",
    "param1 + param2*tanh(param3*(x - param4))",
    "param1 + param2/(1 + exp(param3*(x - param4)))",
    "param1/log(param2 + param3*exp(-param4*x))**2",
)


@dataclass
class Formula:
    """The formula task. `answer_prefix` "y =" opens the answer: measured on SmolLM2 from
    the start state (128 answers each, temperature 1), "y =" / "Formula:" / none gave
    3.9% / 0.8% / 0% answers that were not rejected (README)."""

    template: str = DEFAULT_TEMPLATE
    answer_prefix: str = "y ="
    name: str = "formula"
    invalid_state: str | None = INVALID
    start_state: str = "param1 + param2*x"
    templates: dict = field(default_factory=lambda: dict(TEMPLATES))
    max_new_tokens: int = MAX_ANSWER_TOKENS
    table: Table = field(default_factory=friction_table, repr=False)
    _fits: dict = field(default_factory=dict, repr=False, compare=False)

    def messages(self, f: str) -> list[dict[str, str]]:
        text = fill_template(self.template, f, score=f"{self.score(f):.1f}", data=describe(self.table))
        return [{"role": "user", "content": text}]

    def render(self, g: str) -> str:
        return after_prefix(self.answer_prefix, g)

    def parse(self, text: str) -> str | None:
        """The canonical expression; INVALID for a refused Python expression; None for an
        answer that is not a Python expression (see the module doc)."""
        s = clean_answer(text)
        if not s or juxtaposed(s[:SCAN_CHARS]):
            return None
        try:
            return to_canonical(s)
        except ExprError as e:
            return None if e.syntax else INVALID

    def hopeless(self, text: str) -> bool:
        """A partial answer with two operands side by side: no continuation parses."""
        return juxtaposed(text.strip()[:SCAN_CHARS])

    def valid(self, g: str) -> bool:
        return g != INVALID and self.parse(g) == g

    def check_state(self, s: str) -> str:
        if s.strip() == INVALID:
            return INVALID
        try:
            return to_canonical(clean_answer(s))
        except ExprError as e:
            raise DbgpuError(f"state {s[:60]!r} is not an allowed formula: {e}") from None

    def seed_states(self, n: int = 24) -> list[str]:
        if n > len(SEEDS):
            raise DbgpuError(f"the formula task has {len(SEEDS)} seed states, not {n}")
        return [to_canonical(s) for s in SEEDS[:n]]

    def fit(self, g: str) -> tuple[np.ndarray, float]:
        """(fitted parameters, RMS relative error) of a valid state, cached."""
        if g not in self._fits:
            self._fits[g] = fit_expression(parse_expression(g), self.table)
        return self._fits[g]

    def score(self, g: str) -> float:
        if not self.valid(g):
            return 0.0
        return score_from_error(self.fit(g)[1], e_const=self.table.e_const, e_noise=self.table.e_noise)

    def features(self, g: str) -> dict[str, float]:
        """Length, parameters, depth, parentheses, functions used, score (the paper's kinds)."""
        tree = parse_expression(g)
        used = functions(tree)
        return {"length": len(g), "parameters": len(parameters(tree)), "depth": depth(tree),
                "parentheses": g.count("("), "functions": len(used),
                **{f"uses_{name}": float(name in used) for name in FUNCTIONS},
                "score": self.score(g)}


def clean_answer(text: str) -> str:
    """What a model wraps around a formula, removed: whitespace, backticks, a final period,
    a leading `y =` or `f(x) =`. Long texts are left as they are (and refused later)."""
    s = text.strip()
    if len(s) > 2000:
        return s
    s = s.removesuffix(".").strip().strip("`").strip().removesuffix(".").rstrip()
    for head in ("y =", "y=", "f(x) =", "f(x)=", "y(x) =", "y(x)="):
        if s.startswith(head):
            return s[len(head):].strip()
    return s


def to_canonical(text: str) -> str:
    return to_text(parse_expression(text))
