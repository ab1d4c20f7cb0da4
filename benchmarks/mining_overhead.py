"""How much of the training wall time DynamicHardNegativeSampler spends mining (target: <= 15%).

OPTICAL setting on the demo data: Chichewa-English Bible bitext, all-MiniLM-L6-v2 teacher, student = a trainable
copy of it (``build_optical_model``), ``OTDistillationLoss`` with its InfoNCE term fed by the mined negatives. Each
refresh encodes the anchors the next ``refresh_steps`` steps will read with the current student and searches the
cached teacher embeddings of the candidate pool; the one-off pool encoding is part of the first mining.

    python benchmarks/mining_overhead.py                       # default refresh (200), 300 steps, 4000 pairs
    python benchmarks/mining_overhead.py --steps 60 --max-pairs 1000 --refresh-steps 20   # quick look
    python benchmarks/mining_overhead.py --steps 250 --threads 2 --output \
        --plot results/bench_mining_overhead/mining_overhead.png
        # docs/hard_negatives.md's table and plot: writes results/bench_mining_overhead/results.json (a record, with
        # the conditions and the raw numbers); then python scripts/results_tables.py

Prints a markdown table: training wall time, mining wall time (first mining incl. pool encoding, refreshes) and
the ratios. Timings depend on the machine and its load; the script prints the CPU count and load average.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script

TARGET = 0.15  # mining's share of the training wall time


def main() -> None:
    cli = _parser().parse_args()

    import torch

    logging.basicConfig(level=logging.WARNING)
    if cli.threads:
        torch.set_num_threads(cli.threads)
    start = conditions()
    trainer, train, wall = _train(cli)
    results = _results(trainer, train, wall, cli)
    _print_table(results)
    if cli.output:
        header, rows = cost_table(results)
        table = {"header": header, "rows": rows, "raw": results}
        print(f"wrote {write_record(cli.output, {'cost': table}, start)}")
    if cli.plot:
        plot(results, cli.plot)


def _parser() -> argparse.ArgumentParser:
    from optical_st.sampling import HardNegativeConfig

    default_refresh = inspect.signature(HardNegativeConfig).parameters["refresh_steps"].default
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (the scale of the run)")
    parser.add_argument("--max-pairs", type=int, default=4000, help="training pairs from the Bible train split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--refresh-steps", type=int, default=default_refresh)
    parser.add_argument("--num-negatives", type=int, default=4)
    parser.add_argument("--contrastive-weight", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output-dir", default="runs/bench_mining_overhead")
    add_output_argument(parser, "results/bench_mining_overhead/results.json")
    parser.add_argument("--plot", default=None, help="also draw the wall-time split to this PNG")
    return parser


def _train(cli: argparse.Namespace) -> tuple[Any, Any, float]:
    """``(trainer, training pairs, training wall time)`` of one run with the sampler mining hard negatives."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args

    from optical_st import DynamicHardNegativeSampler, OTDistillationLoss, build_optical_model, router_mapping
    from optical_st.data import default_teacher, load_bible_bitext

    train = load_bible_bitext(max_pairs={"train": cli.max_pairs})["train"]
    teacher = SentenceTransformer(default_teacher(), device="cpu")
    model = build_optical_model(teacher)
    sampler = DynamicHardNegativeSampler.configure(num_negatives=cli.num_negatives, refresh_steps=cli.refresh_steps)
    args = Args(
        output_dir=cli.output_dir,
        per_device_train_batch_size=cli.batch_size,
        max_steps=cli.steps,
        learning_rate=2e-5,
        warmup_steps=0,
        logging_steps=max(cli.steps // 10, 1),
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        router_mapping=router_mapping(train),
        batch_sampler=sampler,
    )
    loss = OTDistillationLoss(model, contrastive_weight=cli.contrastive_weight)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    DynamicHardNegativeSampler.attach(trainer)
    start = time.perf_counter()
    trainer.train()
    return trainer, train, time.perf_counter() - start


def _results(trainer: Any, train: Any, wall: float, cli: argparse.Namespace) -> dict[str, Any]:
    """The run's numbers from the trainer's log: training wall time and the mining time in it."""
    import torch

    minings = [e for e in trainer.state.log_history if "hard_negatives/mining_seconds" in e]
    per_mining = [
        {
            "step": e.get("step"),
            "seconds": e["hard_negatives/mining_seconds"],
            "anchors": e.get("hard_negatives/anchors_mined", 0.0),
            "pool_seconds": e.get("hard_negatives/pool_seconds", 0.0),
            "anchor_seconds": e.get("hard_negatives/anchor_seconds", 0.0),
        }
        for e in minings
    ]
    first = minings[0]["hard_negatives/mining_seconds"]
    refreshes = sum(e["hard_negatives/mining_seconds"] for e in minings[1:])
    mining = first + refreshes
    return {
        "steps": trainer.state.global_step,
        "batch_size": cli.batch_size,
        "pairs": len(train),
        "pool": len(set(train["english"])),
        "refresh_steps": cli.refresh_steps,
        "num_negatives": cli.num_negatives,
        "refreshes": len(minings) - 1,
        "anchors_mined": sum(e["hard_negatives/anchors_mined"] for e in minings),
        "train_wall_s": wall,
        "mining_first_s": first,
        "mining_refresh_s": refreshes,
        "mining_total_s": mining,
        "mining_share": mining / wall,
        "mining_overhead": mining / (wall - mining),
        "pool_encoding_s": sum(e.get("hard_negatives/pool_seconds", 0.0) for e in minings),
        "anchor_encoding_s": sum(e.get("hard_negatives/anchor_seconds", 0.0) for e in minings),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_end": os.getloadavg(),
        "minings": per_mining,
    }


def _print_table(results: dict[str, Any]) -> None:
    print()
    print(
        f"{results['pairs']} pairs (pool {results['pool']} English verses), {results['steps']} steps x "
        f"{results['batch_size']}, {results['num_negatives']} negatives, refresh every {results['refresh_steps']} "
        f"steps, {results['torch_threads']} torch threads on {results['cpus']} CPUs, load average at the end "
        f"{results['load_avg_end'][0]:.1f}"
    )
    print()
    header, rows = cost_table(results)
    print("\n".join("| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), *rows)))


def cost_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The run as docs/hard_negatives.md shows it: wall times, each mining, the anchors encoded and the shares."""
    wall, first, steps, refresh = (results[k] for k in ("train_wall_s", "mining_first_s", "steps", "refresh_steps"))
    minings = results.get("minings") or []
    pool_first = minings[0]["pool_seconds"] if minings else results["pool_encoding_s"]
    rows = [
        ["training wall time (incl. mining)", f"{wall:.0f} s"],
        [
            f"first mining: pool encoding (teacher, once) + anchors of the first {min(refresh or steps, steps)} steps",
            f"{first:.0f} s ({pool_first:.0f} s + {first - pool_first:.0f} s)",
        ],
    ]
    for mining in minings[1:]:
        left = steps - int(mining["step"])
        span = f"the last {left}" if left <= refresh else f"the next {refresh}"
        what = f"refresh at step {int(mining['step'])} ({int(mining['anchors']):,} anchors for {span} steps)"
        rows.append([what, f"{mining['seconds']:.0f} s"])
    if not minings and results["refreshes"]:  # raw numbers of a run before the per-mining log was kept
        rows.append([f"{results['refreshes']} refresh(es)", f"{results['mining_refresh_s']:.0f} s"])
    without_pool = (results["mining_total_s"] - results["pool_encoding_s"]) / wall
    rows += [
        [
            f"anchors encoded in total ({steps * results['batch_size']:,} rows served)",
            f"{int(results['anchors_mined']):,}",
        ],
        ["**mining / training wall time**", f"**{results['mining_share']:.1%}** (target ≤ {TARGET:.0%})"],
        ["mining without the one-off pool encoding / training wall time", f"{without_pool:.1%}"],
    ]
    return ["quantity", "value"], rows


def plot(results: dict, path: str) -> None:
    """One horizontal bar: training wall time split into training, anchor encoding, pool encoding, search/other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool, anchors = results["pool_encoding_s"], results["anchor_encoding_s"]
    other = results["mining_total_s"] - pool - anchors
    parts = [
        ("training", results["train_wall_s"] - results["mining_total_s"], "#4c72b0"),
        ("anchor encoding (student)", anchors, "#dd8452"),
        ("pool encoding (teacher, once)", pool, "#c44e52"),
        ("search, filters, sync", other, "#8172b3"),
    ]
    fig, ax = plt.subplots(figsize=(8, 2.6))
    left = 0.0
    for label, width, color in parts:
        ax.barh([0], [width], left=left, color=color, label=f"{label}: {width:.0f} s")
        left += width
    ax.set_yticks([])
    ax.set_xlim(0, left)
    ax.set_xlabel("wall time (s)")
    ax.set_title(
        f"Mining = {results['mining_share']:.1%} of training wall time ({results['steps']} steps, refresh every "
        f"{results['refresh_steps']})",
        fontsize=10,
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55), ncol=2, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.03, right=0.97, top=0.85, bottom=0.5)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
