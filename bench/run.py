"""Every benchmark table: bpcore beside NumPy, PyTorch and scikit-learn, measured in one run.

    python bench/run.py [--full] [--only peak,training] [--threads 1,2] [--peak-gflops 120,60]

Run it where ``import bpcore`` finds the build you want to measure (after
``pip install .``, or with the checkout on PYTHONPATH after an in-place
build); ``python -m bpcore bench --full`` runs it with that interpreter's
bpcore.  Without ``--full`` every table but the data-parallel one (which
launches mpiexec); ``--only`` picks tables by name.  Each table states its
thread counts; ``--threads`` replaces every table's default.  The training
table's ``% peak`` column is bpcore's share of ``--peak-gflops`` (float32,
float64), by default of the peak table's measured arithmetic peak: a
register-only FMA loop compiled with the C compiler at bench time, or the
large-GEMM rate when no compiler is found.

The ``steps`` table is the performance issue's: one SGD step of four
networks, bpcore float32 / float64 / bfloat16-compute beside the NumPy
reference, PyTorch (float32, and bfloat16 autocast) and JAX jit, each thread
count in a child process pinned to that many CPUs, with bpcore's % of the
peak table's float32 / float64 / bf16-dot peak.  PyTorch and JAX are
bench-only peers (``pip install torch==2.13.0 jax jaxlib``); a missing one
leaves its column out.
"""
import argparse
import sys

import numpy as np

import bpcore
from bpcore import _quickbench

import gemm_table
import harness
import peer_tables

# name -> default thread counts (None: the table fixes its own)
TABLES = {"peak": (1, 2), "steps": (1, 2), "gemm": (1, 2), "kernels": (1,), "linear": (1,),
          "training": (1,),
          "digits": (1,), "threads": None, "interleave": None, "sklearn": (1, 2), "distributed": None}
# table -> the peer it cannot run without
NEEDS = {"digits": "scikit-learn", "sklearn": "scikit-learn", "distributed": "mpi4py"}


def _csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="every table, the data-parallel one (mpiexec) included")
    parser.add_argument("--only", type=_csv(str), metavar="NAMES",
                        help=f"comma-separated tables among {', '.join(TABLES)}")
    parser.add_argument("--threads", type=_csv(int), metavar="N,N",
                        help="thread counts for every table (default: each table's own)")
    parser.add_argument("--peak-gflops", type=_csv(float), metavar="F32,F64",
                        help="reference GFLOP/s of the training table's %% column")
    args = parser.parse_args(argv)
    names = args.only or [n for n in TABLES if args.full or n != "distributed"]
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        parser.error(f"`--only`: unknown table(s) {', '.join(unknown)}; "
                     f"choose among {', '.join(TABLES)}")
    if args.peak_gflops is not None and len(args.peak_gflops) not in (1, 2):
        parser.error("`--peak-gflops` takes one value, or two: float32,float64")

    def threads(name):
        return TABLES[name] and (args.threads or TABLES[name])

    peers = {n: harness.import_peer(m) is not None for n, m in _quickbench.PEERS.items()}
    print(f"bpcore {bpcore.__version__} from {bpcore.__file__}; {bpcore.cpu_features()}; "
          f"numpy {np.__version__}; peers missing: "
          f"{', '.join(n for n, ok in peers.items() if not ok) or 'none'}")
    peaks, what = {}, ""
    peak_threads = set(threads("peak")) if "peak" in names else set()
    for name in ("training", "steps"):  # their % columns need the peak
        if name in names and args.peak_gflops is None:
            peak_threads |= set(threads(name))
    if peak_threads:
        peaks, what = harness.peak_table(threads=sorted(peak_threads))

    def training(t):
        if args.peak_gflops is not None:
            f32, f64 = (args.peak_gflops * 2)[:2]
            peak, label = {"float32": f32, "float64": f64}, "--peak-gflops"
        else:
            peak, label = peaks[t], f"{what} at {t} thread(s) (peak table)"
        _quickbench.training_table(threads=t, peak=peak, peak_label=label)

    dtypes = (np.float32, np.float64)
    def steps(t):
        if args.peak_gflops is not None:
            f32, f64 = (args.peak_gflops * 2)[:2]
            peak = {t: {"float32": f32, "float64": f64}}
        else:
            peak = {t: peaks[t]}
        peer_tables.steps_table(threads=[t], peaks=peak)

    tables = {
        "steps": steps,
        "gemm": lambda t: gemm_table.print_table([t]),
        "kernels": lambda t: [peer_tables.kernel_table(dtype=d, threads=t) for d in dtypes],
        "linear": lambda t: [peer_tables.linear_table(dtype=d, threads=t) for d in dtypes],
        "training": training,
        "digits": lambda t: _quickbench.digits_table(threads=t),
        "threads": lambda t: peer_tables.threads_table(),
        "interleave": lambda t: peer_tables.interleave_table(),
        "sklearn": lambda t: peer_tables.sklearn_table(threads=t),
        "distributed": lambda t: peer_tables.distributed_table(),
    }
    for name in (n for n in tables if n in names):
        if name in NEEDS and not peers[NEEDS[name]]:
            print(f"\n({name} table skipped: needs {NEEDS[name]})")
            continue
        for t in threads(name) or [None]:
            tables[name](t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
