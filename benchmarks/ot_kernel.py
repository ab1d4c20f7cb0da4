"""Time per call of optical_st's batched Sinkhorn vs POT's batched solver vs a per-pair POT loop.

All three solve the same entropic problems (cosine costs between random token embeddings, uniform marginals) to the
same tolerance on the marginal error, starting from zero potentials. Prints a markdown table and the speed-up of
``optical_st.ot.sinkhorn_log`` over ``ot.batch.solve_batch(method="log_sinkhorn")``; target >= 3x.

    python benchmarks/ot_kernel.py [--reg 0.05] [--tol 1e-6] [--repeats 5] [--threads 2]

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
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=16, help="width of the random token embeddings (see above)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--loop-max-batch", type=int, default=32, help="skip the slow per-pair loop above this B")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, POT {ot.__version__}, CPU threads {torch.get_num_threads()}, CUDA {cuda}")
    print(f"reg={args.reg} tol={args.tol} (max_b ||P1 - a||_2, POT's criterion) max_iter={args.max_iter}\n")

    header = "| B | n=m | iters | optical_st ms | POT batched ms | POT per-pair loop ms | speed-up vs POT batched |"
    sep = "|---|---|---|---|---|---|---|"
    if cuda:
        header += " optical_st CUDA ms | POT batched CUDA ms | CUDA speed-up |"
        sep += "---|---|---|"
    print(header)
    print(sep)
    ratios = []
    for B in (32, 128):
        for n in (32, 128):
            C = problem(B, n, args.dim, "cpu")
            a = torch.full((B, n), 1.0 / n)
            _, log = sinkhorn_log(C, a, a, reg=args.reg, max_iter=args.max_iter, tol=args.tol, return_log=True)
            ours = timeit(lambda C=C, a=a: sinkhorn_log(C, a, a, args.reg, args.max_iter, args.tol), args.repeats)
            pot_batched = timeit(
                lambda C=C, a=a: ot.batch.solve_batch(
                    C, args.reg, a, a, max_iter=args.max_iter, tol=args.tol, method="log_sinkhorn"
                ),
                args.repeats,
            )
            if args.loop_max_batch >= B:
                Cn, an = C.double().numpy(), a[0].double().numpy()
                loop = timeit(
                    lambda Cn=Cn, an=an: [
                        ot.sinkhorn(
                            an,
                            an,
                            Cn[i],
                            args.reg,
                            method="sinkhorn_log",
                            numItermax=args.max_iter,
                            stopThr=args.tol,
                            warn=False,
                        )
                        for i in range(len(Cn))
                    ],
                    max(1, args.repeats // 2),
                )
                loop_s = f"{loop:.1f}"
            else:
                loop_s = "(skipped)"
            ratio = pot_batched / ours
            ratios.append(ratio)
            row = f"| {B} | {n} | {log.n_iter} | {ours:.2f} | {pot_batched:.2f} | {loop_s} | {ratio:.1f}x |"
            if cuda:
                Cg, ag = C.cuda(), a.cuda()
                sync = torch.cuda.synchronize
                ours_g = timeit(
                    lambda Cg=Cg, ag=ag: sinkhorn_log(Cg, ag, ag, args.reg, args.max_iter, args.tol),
                    args.repeats,
                    sync,
                )
                pot_g = timeit(
                    lambda Cg=Cg, ag=ag: ot.batch.solve_batch(
                        Cg, args.reg, ag, ag, max_iter=args.max_iter, tol=args.tol, method="log_sinkhorn"
                    ),
                    args.repeats,
                    sync,
                )
                row += f" {ours_g:.2f} | {pot_g:.2f} | {pot_g / ours_g:.1f}x |"
            print(row, flush=True)
    print(
        f"\nmin speed-up vs POT batched (CPU): {min(ratios):.1f}x (target >= 3x): {'PASS' if min(ratios) >= 3 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
