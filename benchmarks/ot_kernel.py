"""Time per call of optical_st's batched Sinkhorn vs POT's batched solver vs a per-pair POT loop.

All three solve the same entropic problems (cosine costs between random token embeddings, uniform marginals) to the
same tolerance on the marginal error, starting from zero potentials. Prints a markdown table per tolerance and the
range of speed-ups of ``optical_st.transport.sinkhorn_log`` over ``ot.batch.solve_batch(method="log_sinkhorn")`` across
tolerances, widths and shapes (the claim a reader can check with the settings they would try); target >= 3x.

    python benchmarks/ot_kernel.py [--reg 0.05] [--tols 1e-4 1e-5 1e-6] [--dims 16 64] [--repeats 5] [--threads 2]
    python benchmarks/ot_kernel.py --repeats 3 --threads 1 --shapes 32x32 32x64 128x32 128x64 --output
        # docs/benchmarks.md's table: writes results/bench_ot_kernel/results.json (a record, with the conditions and
        # raw timings); then python scripts/results_tables.py

Costs: cosine distances between random Gaussian token embeddings of width ``--dim`` (default 16). That width is
calibrated on real data: all-MiniLM-L6-v2 token embeddings of Chichewa vs English Bible verses give cosine costs in
~[0.1, 1.25] and need ~170 iterations at reg=0.05, tol=1e-6; dim-16 random embeddings give costs in ~[0.2, 1.8] and
~250 iterations. (At --dim 384, random vectors are nearly orthogonal, every cost is ~1, Sinkhorn stops after ~11
iterations and fixed per-call overheads dominate: not representative.)

A CUDA column is added when a GPU is present (timed with torch.cuda.synchronize).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import ot
import torch
from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script

from optical_st.transport import cosine_cost, sinkhorn_log


def timeit(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up (allocations, lazy imports, CUDA context)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def problem(B: int, n: int, dim: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, dim, generator=g)
    y = torch.randn(B, n, dim, generator=g)
    return cosine_cost(x, y).to(device)


TIMINGS = ["B", "n=m", "iters", "optical_st ms", "POT batched ms", "POT per-pair loop ms", "speed-up vs POT batched"]
CUDA_TIMINGS = ["optical_st CUDA ms", "POT batched CUDA ms", "CUDA speed-up"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reg", type=float, default=0.05)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[16, 64], help="widths of the random token embeddings (see above)"
    )
    parser.add_argument("--shapes", nargs="+", default=["32x32", "32x64", "32x128", "128x32", "128x64", "128x128"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--loop-max-batch", type=int, default=32, help="skip the slow per-pair loop above this B")
    add_output_argument(parser, "results/bench_ot_kernel/results.json")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = conditions()
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, POT {ot.__version__}, CPU threads {torch.get_num_threads()}, CUDA {cuda}")
    print(f"reg={args.reg}, tolerance on max_b ||P1 - a||_2 (POT's criterion), max_iter={args.max_iter}\n")
    measurements = []
    for tol in args.tols:
        for dim in args.dims:
            print(f"### tol={tolerance(tol)}, token width {dim}\n")
            print(_markdown(TIMINGS + (CUDA_TIMINGS if cuda else []), []))
            for shape in args.shapes:
                B, n = (int(x) for x in shape.split("x"))
                measurements.append(measure(args, B, n, dim, tol, cuda))
                print(_markdown(None, [timing_cells(measurements[-1])]), flush=True)
            print()
    every = [m["pot_batched_ms"] / m["optical_st_ms"] for m in measurements]
    print("Speed-up of optical_st over POT batched (CPU):\n")
    print(_markdown(*speedup_table(measurements)))
    verdict = "PASS" if min(every) >= 3 else "FAIL"
    print(
        f"\nspeed-up vs POT batched (CPU), all settings: {min(every):.1f}x–{max(every):.1f}x (target >= 3x): {verdict}"
    )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        print(f"wrote {write_record(args.output, record_tables(measurements, settings), start)}")


def _markdown(header: list[str] | None, rows: list[list[str]]) -> str:
    """Markdown lines: the header and its rule (unless None), then the rows."""
    lines = [] if header is None else ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def tolerance(value: float) -> str:
    """1e-4, not 0.0001: tolerances as the docs write them."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def timing_cells(m: dict[str, Any]) -> list[str]:
    """One measurement as the cells of the per-setting timing table."""
    loop = "(skipped)" if m["pot_loop_ms"] is None else f"{m['pot_loop_ms']:.1f}"
    ratio = m["pot_batched_ms"] / m["optical_st_ms"]
    cells = [str(m["B"]), str(m["n"]), str(m["iters"]), f"{m['optical_st_ms']:.2f}", f"{m['pot_batched_ms']:.2f}"]
    cells += [loop, f"{ratio:.1f}x"]
    if "optical_st_cuda_ms" in m:
        ours, pot = m["optical_st_cuda_ms"], m["pot_batched_cuda_ms"]
        cells += [f"{ours:.2f}", f"{pot:.2f}", f"{pot / ours:.1f}x"]
    return cells


def speedup_table(measurements: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Speed-up over POT batched (CPU): a row per tolerance and width, a column per batch shape (docs/benchmarks.md)."""
    shapes = list(dict.fromkeys((m["B"], m["n"]) for m in measurements))
    settings = list(dict.fromkeys((m["tol"], m["dim"]) for m in measurements))
    ratio = {(m["tol"], m["dim"], m["B"], m["n"]): m["pot_batched_ms"] / m["optical_st_ms"] for m in measurements}
    header = ["tol", "width", *(f"B={B}, n=m={n}" for B, n in shapes)]
    rows = [
        [
            tolerance(tol),
            str(dim),
            *(f"{ratio[tol, dim, B, n]:.1f}x" if (tol, dim, B, n) in ratio else "–" for B, n in shapes),
        ]
        for tol, dim in settings
    ]
    return header, rows


def record_tables(measurements: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``--output`` record: the speed-up table and every timing, with the raw measurements."""
    cuda = any("optical_st_cuda_ms" in m for m in measurements)
    header, rows = speedup_table(measurements)
    timings = [[tolerance(m["tol"]), str(m["dim"]), *timing_cells(m)] for m in measurements]
    return {
        "speed-up": {"header": header, "rows": rows, "raw": {"settings": settings, "measurements": measurements}},
        "timings": {"header": ["tol", "width", *TIMINGS, *(CUDA_TIMINGS if cuda else [])], "rows": timings},
    }


def measure(args: argparse.Namespace, B: int, n: int, dim: int, tol: float, cuda: bool) -> dict[str, Any]:
    """Median milliseconds per call of each solver on one problem (and the iterations optical_st needs)."""
    C = problem(B, n, dim, "cpu")
    a = torch.full((B, n), 1.0 / n)
    _, log = sinkhorn_log(C, a, a, reg=args.reg, max_iter=args.max_iter, tol=tol, return_log=True)
    m: dict[str, Any] = {"tol": tol, "dim": dim, "B": B, "n": n, "iters": int(log.n_iter)}
    m["optical_st_ms"] = timeit(lambda: sinkhorn_log(C, a, a, args.reg, args.max_iter, tol), args.repeats)
    m["pot_batched_ms"] = timeit(
        lambda: ot.batch.solve_batch(C, args.reg, a, a, max_iter=args.max_iter, tol=tol, method="log_sinkhorn"),
        args.repeats,
    )
    m["pot_loop_ms"] = None
    if args.loop_max_batch >= B:
        Cn, an = C.double().numpy(), a[0].double().numpy()
        m["pot_loop_ms"] = timeit(
            lambda: [
                ot.sinkhorn(
                    an, an, Cn[i], args.reg, method="sinkhorn_log", numItermax=args.max_iter, stopThr=tol, warn=False
                )
                for i in range(len(Cn))
            ],
            max(1, args.repeats // 2),
        )
    if cuda:
        Cg, ag = C.cuda(), a.cuda()
        sync = torch.cuda.synchronize
        m["optical_st_cuda_ms"] = timeit(
            lambda: sinkhorn_log(Cg, ag, ag, args.reg, args.max_iter, tol), args.repeats, sync
        )
        m["pot_batched_cuda_ms"] = timeit(
            lambda: ot.batch.solve_batch(Cg, args.reg, ag, ag, max_iter=args.max_iter, tol=tol, method="log_sinkhorn"),
            args.repeats,
            sync,
        )
    return m


if __name__ == "__main__":
    main()
