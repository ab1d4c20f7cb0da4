"""Wall time of one training step: OT distillation vs MSE KD vs contrastive KD, same teacher, student and batch.

Every method trains the same OPTICAL model (teacher = multilingual-e5-small reading English, student = a trainable
copy of it, 12 layers, 118M parameters; unless --teacher / --student say otherwise) on the same batch of
Chichewa–English Bible verses with the model's prompts (same tokenization, hence the same sequence lengths). One step = forward, backward, AdamW step. Steps are interleaved across methods (round-robin) so
that load from other processes hits all methods alike; the median of --repeats steps is reported after --warmup
steps. A CUDA column is added when a GPU is present.

Methods:
  OT-KD                OTDistillationLoss: student forward+backward, teacher forward (token embeddings), Sinkhorn.
  MSE-KD (online)      sentence-transformers' MSELoss with the teacher embedding computed in the step (the
                       like-for-like comparison: every method runs the teacher once per step).
  MSE-KD (precomputed) MSELoss with teacher embeddings precomputed once (Reimers & Gurevych's recipe): no teacher
                       in the step.
  Contrastive-KD       ContrastiveDistillationLoss (in-batch InfoNCE).
  OT + InfoNCE         OTDistillationLoss(contrastive_weight=1.0): the demo's default student.
  ... (frozen embeddings)  the same with the student's word-embedding matrix frozen: 250,037 x 384 = 96M of the
                       student's 118M parameters, whose AdamW update dominates the optimizer's cost on CPU.

Target: OT step <= 1.10x the MSE-KD (online) step.

Usage:
    python benchmarks/step_overhead.py                     # CPU (+ CUDA when available), batch 32
    python benchmarks/step_overhead.py --batch-size 64 --max-seq-length 128 --repeats 20
    python benchmarks/step_overhead.py --threads 2 --repeats 5 --warmup 2 --devices cpu --output
        # docs/benchmarks.md's table: writes results/bench_step_overhead/results.json (a record, with the conditions
        # and raw step times); then python scripts/results_tables.py
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script
from sentence_transformers.sentence_transformer.losses import MSELoss

from optical_st import ContrastiveDistillationLoss, OTConfig, OTDistillationLoss, build_optical_model, column_prompts
from optical_st.data import load_bible_bitext
from optical_st.research.config import default_multilingual_model
from optical_st.routes import STUDENT_ROUTE, model_routes, route_modules

TARGET = 1.10
REFERENCE = "MSE-KD (online)"  # the like-for-like baseline: every method runs the teacher once per step


def make_features(model, english, lrl, device):
    feats = {}
    prompts = column_prompts(model, ["english", "lrl"])
    for key, texts, task in (("english", english, "document"), ("lrl", lrl, "query")):
        f = model.preprocess(texts, prompt=prompts.get(key), task=task)
        f["task"] = task
        feats[key] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()}
    return feats


def build_steps(base_model, feats, device, reg):
    """One closure per method, each with its own loss and AdamW state, all on one copy of the model: a copy per
    method (two 118M-parameter encoders each) did not fit in 24 GB. The weights' values do not change a step's time,
    so sharing them costs the comparison nothing; the word-embedding switch is set by each step."""
    steps, trainable = {}, {}
    model = copy.deepcopy(base_model).to(device).train()
    word_embeddings = route_modules(model, STUDENT_ROUTE)[0].auto_model.get_input_embeddings()

    def make(name, loss_factory, run, freeze_word_embeddings=False):
        loss = loss_factory(model)
        word_embeddings.requires_grad_(not freeze_word_embeddings)
        params = [p for p in model.parameters() if p.requires_grad]
        trainable[name] = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=1e-5)

        def step():
            word_embeddings.requires_grad_(not freeze_word_embeddings)
            model.zero_grad(set_to_none=True)  # all grads: another method may have left some
            value = run(model, loss)
            value.backward()
            optimizer.step()

        steps[name] = step

    def copy_feats(*keys):
        return [dict(feats[k]) for k in keys]

    make(
        "OT-KD",
        lambda m: OTDistillationLoss(m, ot_config=OTConfig(reg=reg)),
        lambda m, loss: loss(copy_feats("english", "lrl")),
    )

    def mse_online(model, loss):
        teacher = model[0]  # the Router: its document route is the frozen teacher
        with torch.no_grad():
            labels = teacher(dict(feats["english"]))["sentence_embedding"]
        return loss(copy_feats("lrl"), labels)

    make("MSE-KD (online)", lambda m: MSELoss(m), mse_online)

    with torch.no_grad():
        precomputed = copy.deepcopy(base_model).to(device).eval()[0](dict(feats["english"]))["sentence_embedding"]
    make("MSE-KD (precomputed)", lambda m: MSELoss(m), lambda m, loss: loss(copy_feats("lrl"), precomputed))
    make(
        "Contrastive-KD",
        lambda m: ContrastiveDistillationLoss(m),
        lambda m, loss: loss(copy_feats("english", "lrl")),
    )

    def total(m, loss):
        value = loss(copy_feats("english", "lrl"))
        return sum(value.values()) if isinstance(value, dict) else value

    default = lambda m: OTDistillationLoss(m, ot_config=OTConfig(reg=reg), contrastive_weight=1.0)  # noqa: E731
    make("OT + InfoNCE", default, total)
    make("OT + InfoNCE (frozen embeddings)", default, total, freeze_word_embeddings=True)
    return steps, trainable


def time_steps(steps, device, warmup, repeats):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():  # round-robin: background load hits every method alike
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None, help="teacher (default: multilingual-e5-small, offline copy)")
    parser.add_argument("--student", default=None, help="student encoder (default: a copy of the teacher)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reg", type=float, default=0.05, help="Sinkhorn regularisation of OTDistillationLoss")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    add_output_argument(parser, "results/bench_step_overhead/results.json")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = conditions()

    base = build_optical_model(args.teacher or default_multilingual_model(), args.student, device="cpu")
    for modules in model_routes(base).values():
        modules[0].max_seq_length = args.max_seq_length
    pairs = load_bible_bitext({"train": range(40, 44)}, max_pairs={"train": args.batch_size}, seed=0)["train"]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    results, trainable, shapes = {}, {}, {}
    for name in devices:
        device = torch.device(name)
        feats = make_features(base, list(pairs["english"]), list(pairs["chichewa"]), device)
        shapes = {k: list(v["input_ids"].shape) for k, v in feats.items()}
        steps, trainable = build_steps(base, feats, device, args.reg)
        results[name] = time_steps(steps, device, args.warmup, args.repeats)

    print(
        f"\nOne training step (forward + backward + AdamW), median of {args.repeats} after {args.warmup} warm-up; "
        f"batch {args.batch_size}, token shapes english {shapes['english']}, chichewa {shapes['lrl']}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}\n"
    )
    header, rows = overhead_table(results, trainable)
    print("\n".join(["| " + " | ".join(row) + " |" for row in (header, ["---"] * len(header), *rows)]))
    print()
    for d in devices:
        r = results[d]
        ratio = r["OT-KD"] / r[REFERENCE]
        verdict = "meets" if ratio <= TARGET else "MISSES"
        print(
            f"[{d}] OT / MSE-KD (online) = {ratio:.3f} ({verdict} the {TARGET:.2f}x target); "
            f"OT / MSE-KD (precomputed) = {r['OT-KD'] / r['MSE-KD (precomputed)']:.3f}; "
            f"OT / Contrastive-KD = {r['OT-KD'] / r['Contrastive-KD']:.3f}"
        )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        raw = {
            "settings": settings,
            "token_shapes": shapes,
            "trainable_params": trainable,
            "seconds_per_step": results,
        }
        table = {"header": header, "rows": rows, "raw": raw}
        print(f"wrote {write_record(args.output, {'step-time': table}, start)}")


def overhead_table(
    seconds: dict[str, dict[str, float]], trainable: dict[str, int]
) -> tuple[list[str], list[list[str]]]:
    """A row per method: trainable parameters, AdamW state (two fp32 moments per parameter), and per device the
    median step in ms and its ratio to the MSE-KD (online) step. One device: its columns are not prefixed."""
    devices = list(seconds)
    header = ["method", "trainable params", "AdamW state"]
    for d in devices:
        prefix = "" if len(devices) == 1 else f"{d} "
        header += [f"{prefix}ms/step", f"{prefix}× {REFERENCE}"]
    rows = []
    for method in seconds[devices[0]]:
        cells = [method, f"{trainable[method] / 1e6:.1f}M", f"{trainable[method] * 8 / 2**20:.0f} MB"]
        for d in devices:
            cells += [f"{seconds[d][method] * 1e3:,.0f}", f"{seconds[d][method] / seconds[d][REFERENCE]:.2f}"]
        rows.append(cells)
    return header, rows


if __name__ == "__main__":
    main()
