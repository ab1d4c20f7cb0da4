"""The losses' own cost per training step, this checkout against an earlier one, interleaved in one process.

A full step is dominated by the encoders, so a change to the loss's checks and diagnostics hides in its noise; this
times what the loss adds around them: ``compute_loss_from_embeddings`` (the transport problem or InfoNCE, the checks and
the diagnostics it runs) and its backward pass, on fixed token and sentence embeddings of a real batch's shapes (batch
32, Chichewa 96 tokens, English 55, width 384, the shapes of ``benchmarks/step_overhead.py``'s batch), plus the
finite-loss check the earlier checkout's ``forward`` ran on every batch (its per-batch row check on the token ids is
left out: the figure understates the difference).
Old and new run round-robin, so background load hits both alike; the median of ``--repeats`` is reported.

The earlier checkout's package is imported under another name (``optical_st_before``, a copy with its imports
rewritten), so both live in this process.

Usage:
    git archive <commit> | tar -x -C /tmp/before
    python benchmarks/loss_overhead_ab.py --before /tmp/before [--output PATH.json]
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script

import optical_st


def import_before(checkout: Path) -> object:
    """The checkout's ``optical_st`` as the module ``optical_st_before``."""
    folder = Path(tempfile.mkdtemp(prefix="optical_st_before_"))
    shutil.copytree(checkout / "optical_st", folder / "optical_st_before")
    for path in (folder / "optical_st_before").rglob("*.py"):
        path.write_text(re.sub(r"\boptical_st\b", "optical_st_before", path.read_text(encoding="utf-8")))
    sys.path.insert(0, str(folder))
    return importlib.import_module("optical_st_before")


def sides(package: object, shapes: dict[str, int], seed: int) -> dict:
    """Fixed embeddings of one batch ([CLS] first, [SEP] last, padding after a row's length) for ``package``."""
    g = torch.Generator().manual_seed(seed)
    b, n, m, d = shapes["batch"], shapes["lrl"], shapes["english"], shapes["width"]
    lengths = torch.randint(n // 3, n + 1, (b,), generator=g)
    s_mask = (torch.arange(n) < lengths[:, None]).float()
    t_mask = (torch.arange(m) < torch.randint(m // 3, m + 1, (b,), generator=g)[:, None]).float()

    def exclude(mask: torch.Tensor) -> torch.Tensor:
        ex = torch.zeros_like(mask, dtype=torch.bool)
        ex[:, 0] = True
        ex[torch.arange(len(mask)), mask.sum(1).long() - 1] = True
        return ex

    make = package.losses.TokenEmbeddings
    student = torch.randn(b, n, d, generator=g).requires_grad_()
    teacher = torch.randn(b, m, d, generator=g)
    return {
        "student": make(student, s_mask, exclude(s_mask), torch.randn(b, d, generator=g).requires_grad_()),
        "teacher": make(teacher, t_mask, exclude(t_mask), torch.randn(b, d, generator=g)),
        "negatives": [torch.randn(b, d, generator=g)],
        "leaves": [student],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    add_output_argument(parser, "results/bench_step_overhead_syncs/loss_ab.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = conditions()
    before = import_before(args.before)
    from sentence_transformers import SentenceTransformer

    from optical_st.data import default_teacher

    teacher = SentenceTransformer(default_teacher(), device="cpu")  # the losses need a model; its weights stay unused
    shapes = {"batch": 32, "lrl": 96, "english": 55, "width": 384}
    setups = {
        "OT": {},
        "OT, diagnostics callback attached": {},  # the earlier loss computed the diagnostics either way
        "OT + InfoNCE (recipe)": {"contrastive_weight": 1.0, "temperature": 0.01},
    }
    steps, timings = {}, {}
    for name, kwargs in setups.items():
        for label, package in (("before", before), ("after", optical_st)):
            loss = package.OTDistillationLoss(teacher, teacher=teacher, **kwargs)
            if "callback" in name:
                package.losses.OTDiagnosticsCallback(loss)
            batch = sides(package, shapes, seed=0)

            def step(loss=loss, batch=batch, name=name) -> None:
                negatives = batch["negatives"] if "InfoNCE" in name else None
                value = loss.compute_loss_from_embeddings(batch["student"], batch["teacher"], negatives)
                total = sum(value.values()) if isinstance(value, dict) else value
                if hasattr(loss, "_finite"):  # the earlier loss checked every batch's value in forward
                    loss._finite(value)
                total.backward()

            steps[(name, label)] = step
            timings[(name, label)] = []
    for _ in range(2):  # warm-up
        for step in steps.values():
            step()
    for _ in range(args.repeats):
        for key, step in steps.items():
            begin = time.perf_counter()
            step()
            timings[key].append(time.perf_counter() - begin)
    header = ["loss", "before (ms)", "after (ms)", "after / before"]
    rows, raw = [], {}
    for name in setups:
        old, new = (statistics.median(timings[(name, label)]) for label in ("before", "after"))
        rows.append([name, f"{old * 1e3:.1f}", f"{new * 1e3:.1f}", f"{new / old:.3f}"])
        raw[name] = {"before_s": timings[(name, "before")], "after_s": timings[(name, "after")]}
        print(f"{name}: before {old * 1e3:.1f} ms, after {new * 1e3:.1f} ms, after / before {new / old:.3f}")
    if args.output:
        table = {"header": header, "rows": rows, "raw": {"shapes": shapes, "repeats": args.repeats, **raw}}
        print(f"wrote {write_record(args.output, {'loss-overhead': table}, start)}")


if __name__ == "__main__":
    main()
