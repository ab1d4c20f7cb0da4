"""Host reads (device-to-host syncs) per training step of the distillation losses, counted by call site.

Every ``.item()``, ``.tolist()``, ``bool()`` / ``float()`` / ``int()`` of a tensor, ``.cpu()``, ``.numpy()``,
``.nonzero()`` and boolean-mask indexing made by optical_st's code (whichever optical_st is imported: run it from an
older checkout with ``PYTHONPATH=<checkout>`` to count that one) during a loss's forward and backward is counted. On a
GPU each waits for every kernel queued before it. The first batch is left out (checks may read it once); the steps
after it are counted, split into the Sinkhorn solver's stopping rule (``_sinkhorn_stabilized``: one read per block of
iterations, the algorithm itself) and everything else.

Model: all-MiniLM-L6-v2 from the offline package (teacher and its trainable copy as student, one Router model) on
Chichewa–English Bible verses, batch ``--batch-size``.

Usage:
    python benchmarks/step_host_reads.py                       # prints the counts
    python benchmarks/step_host_reads.py --output PATH.json    # and writes them as a record
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script

import optical_st
from optical_st import ContrastiveDistillationLoss, OTDistillationLoss, build_optical_model, router_mapping
from optical_st.data import default_teacher, load_bible_bitext
from optical_st.losses import OTDiagnosticsCallback

PACKAGE = Path(optical_st.__file__).resolve().parent
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero")
SOLVER = "_sinkhorn_stabilized"


def count_reads(patch: Callable[[object, str, object], None] = setattr) -> Counter:
    """Patch the tensor class with ``patch`` (``setattr``: for the rest of the process; pytest's
    ``monkeypatch.setattr``: for one test) to count reads by optical_st call site, ``"<file>:<function>"``."""
    reads: Counter = Counter()

    def record() -> None:
        caller = sys._getframe(2).f_code  # the code that called the tensor method
        path = Path(caller.co_filename).resolve()
        if path.is_relative_to(PACKAGE):
            reads[f"{path.relative_to(PACKAGE).as_posix()}:{caller.co_name}"] += 1

    def counted(original):
        def method(self, *args, **kwargs):
            record()
            return original(self, *args, **kwargs)

        return method

    for name in READS:
        patch(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    getitem = torch.Tensor.__getitem__

    def masked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts):  # the result's size is read back
            record()
        return getitem(self, index)

    patch(torch.Tensor, "__getitem__", masked_getitem)
    return reads


SETUPS = {
    "OT": lambda model: OTDistillationLoss(model),
    "OT + diagnostics callback": lambda model: OTDistillationLoss(model),
    "OT + InfoNCE + 1 negative (recipe)": lambda model: OTDistillationLoss(model, contrastive_weight=1.0),
    "contrastive KD + 1 negative": lambda model: ContrastiveDistillationLoss(model),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps counted after the first batch")
    add_output_argument(parser, "results/bench_step_overhead_syncs/host_reads.json")
    args = parser.parse_args()
    start = conditions()
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + 1)
    pairs = load_bible_bitext({"train": range(40, 44)}, max_pairs={"train": n}, seed=0)["train"]
    english = list(pairs["english"])
    data = pairs.select_columns(["english", "chichewa"]).add_column("negative_1", english[1:] + english[:1])
    reads = count_reads()
    rows, raw = [], {}
    for name, make in SETUPS.items():
        model = build_optical_model(default_teacher(), device="cpu")
        loss = make(model)
        if "callback" in name:
            OTDiagnosticsCallback(loss)  # the newer losses compute the plan statistics only then
        columns = data.column_names if "negative" in name else ["english", "chichewa"]
        mapping = router_mapping(columns)
        batches = []
        for i in range(args.steps + 1):
            rows_i = data.select(range(i * args.batch_size, (i + 1) * args.batch_size))
            batches.append([{**model.preprocess(rows_i[c], task=mapping[c]), "task": mapping[c]} for c in columns])
        for i, features in enumerate(batches):
            if i == 1:
                reads.clear()
            value = loss(features)
            (sum(value.values()) if isinstance(value, dict) else value).backward()
        solver = sum(v for k, v in reads.items() if k.endswith(f":{SOLVER}"))
        other = {k: v for k, v in reads.items() if not k.endswith(f":{SOLVER}")}
        raw[name] = {"by_call_site": dict(reads), "steps": args.steps}
        rows.append([name, f"{sum(other.values()) / args.steps:g}", f"{solver / args.steps:g}"])
        print(f"{name}: {sum(other.values()) / args.steps:g} reads/step outside the solver's stopping rule, "
              f"{solver / args.steps:g} in it; {dict(other)}")  # fmt: skip
    header = ["loss", "host reads per step (checks, diagnostics)", "host reads per step (Sinkhorn stopping rule)"]
    if args.output:
        print(f"wrote {write_record(args.output, {'host-reads': {'header': header, 'rows': rows, 'raw': raw}}, start)}")


if __name__ == "__main__":
    main()
