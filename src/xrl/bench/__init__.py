"""``xrl bench``: a spec's grid of (agent, seed, method) jobs, in process or on Ray, resumable.

spec = load_spec("quick")                  # a shipped spec or a TOML file; SpecError lists all problems
run_bench(spec, "bench-results/quick")     # ray="auto" for a local Ray, or a cluster address
"""

from xrl.bench.results import load_results, merge
from xrl.bench.runner import run_bench, run_job
from xrl.bench.spec import Job, Spec, SpecError, find_spec, load_spec, parse_spec

__all__ = [
    "Job",
    "Spec",
    "SpecError",
    "find_spec",
    "load_spec",
    "parse_spec",
    "run_bench",
    "run_job",
    "merge",
    "load_results",
]
