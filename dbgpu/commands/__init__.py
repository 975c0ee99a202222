"""One module per command: each validates its input, calls the stages, writes its outputs
atomically and returns a summary; `dbgpu.cli` only parses arguments and prints.

    score    exact kernel of a state set               -> score directory
    fit      least-action potential and statistics     -> potential.json, stats.json, fit_points.npz, msm.*
    report   figures and report.md for a fit directory
    run      score + fit + report on defaults
    compare  models x templates on one state set
    explore  the sampling agent                        -> transitions.jsonl, explore.json
    states   the states an explore run discovered
    explain  the fitted potential regressed on the task's state features -> explain.json, explain.png
"""
