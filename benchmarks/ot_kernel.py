"""Time per call of optical_st's batched Sinkhorn vs POT's batched solver vs a per-pair POT loop.

All three solve the same entropic problems (cosine costs between random token embeddings, uniform marginals) to the
same tolerance on the marginal error, starting from zero potentials. Prints a markdown table per tolerance and the
range of speed-ups of ``optical_st.ot.sinkhorn_log`` over ``ot.batch.solve_batch(method="log_sinkhorn")`` across
tolerances, widths and shapes (the claim a reader can check with the settings they would try); target >= 3x.

    python benchmarks/ot_kernel.py [--reg 0.05] [--tols 1e-4 1e-5 1e-6] [--dims 16 64] [--repeats 5] [--threads 2]

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

import ot
import torch

from optical_st.ot import cosine_cost, sinkhorn_log


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


def main() -> None:
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, POT {ot.__version__}, CPU threads {torch.get_num_threads()}, CUDA {cuda}")
    print(f"reg={args.reg}, tolerance on max_b ||P1 - a||_2 (POT's criterion), max_iter={args.max_iter}\n")
    ratios: dict[tuple[float, int], list[float]] = {}
    for tol in args.tols:
        for dim in args.dims:
            print(f"### tol={tol:g}, token width {dim}\n")
            header = (
                "| B | n=m | iters | optical_st ms | POT batched ms | POT per-pair loop ms | speed-up vs POT batched |"
            )
            sep = "|---|---|---|---|---|---|---|"
            if cuda:
                header += " optical_st CUDA ms | POT batched CUDA ms | CUDA speed-up |"
                sep += "---|---|---|"
            print(header)
            print(sep)
            for shape in args.shapes:
                B, n = (int(x) for x in shape.split("x"))
                row, ratio = _row(args, B, n, dim, tol, cuda)
                ratios.setdefault((tol, dim), []).append(ratio)
                print(row, flush=True)
            print()
    every = [r for values in ratios.values() for r in values]
    print("| tol | width | min speed-up | max speed-up |\n|---|---|---|---|")
    for (tol, dim), values in ratios.items():
        print(f"| {tol:g} | {dim} | {min(values):.1f}x | {max(values):.1f}x |")
    verdict = "PASS" if min(every) >= 3 else "FAIL"
    print(
        f"\nspeed-up vs POT batched (CPU), all settings: {min(every):.1f}x–{max(every):.1f}x (target >= 3x): {verdict}"
    )


def _row(args: argparse.Namespace, B: int, n: int, dim: int, tol: float, cuda: bool) -> tuple[str, float]:
    C = problem(B, n, dim, "cpu")
    a = torch.full((B, n), 1.0 / n)
    _, log = sinkhorn_log(C, a, a, reg=args.reg, max_iter=args.max_iter, tol=tol, return_log=True)
    ours = timeit(lambda: sinkhorn_log(C, a, a, args.reg, args.max_iter, tol), args.repeats)
    pot_batched = timeit(
        lambda: ot.batch.solve_batch(C, args.reg, a, a, max_iter=args.max_iter, tol=tol, method="log_sinkhorn"),
        args.repeats,
    )
    if args.loop_max_batch >= B:
        Cn, an = C.double().numpy(), a[0].double().numpy()
        loop = timeit(
            lambda: [
                ot.sinkhorn(
                    an, an, Cn[i], args.reg, method="sinkhorn_log", numItermax=args.max_iter, stopThr=tol, warn=False
                )
                for i in range(len(Cn))
            ],
            max(1, args.repeats // 2),
        )
        loop_s = f"{loop:.1f}"
    else:
        loop_s = "(skipped)"
    ratio = pot_batched / ours
    row = f"| {B} | {n} | {log.n_iter} | {ours:.2f} | {pot_batched:.2f} | {loop_s} | {ratio:.1f}x |"
    if cuda:
        Cg, ag = C.cuda(), a.cuda()
        sync = torch.cuda.synchronize
        ours_g = timeit(lambda: sinkhorn_log(Cg, ag, ag, args.reg, args.max_iter, tol), args.repeats, sync)
        pot_g = timeit(
            lambda: ot.batch.solve_batch(Cg, args.reg, ag, ag, max_iter=args.max_iter, tol=tol, method="log_sinkhorn"),
            args.repeats,
            sync,
        )
        row += f" {ours_g:.2f} | {pot_g:.2f} | {pot_g / ours_g:.1f}x |"
    return row, ratio


if __name__ == "__main__":
    main()
