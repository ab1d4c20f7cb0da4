"""Fast CPU encoding of the English Bible: each backend's speed relative to torch float32 on the same CPU, its
agreement with float32, and what it does to retrieval quality.

The document route (the frozen teacher; multilingual-e5-small, the offline conversion, unless ``--model``) encodes
English verses with:

* ``float32``: torch as it is (the reference);
* ``bfloat16``: torch bf16 autocast (``optical_st.inference``; fast on CPUs with AMX or AVX512-BF16);
* ``int8``: torch dynamic int8 quantization of the Linear layers (``torch.ao.quantization.quantize_dynamic``);
* ``onnx`` / ``onnx-int8``: ONNX Runtime on the transformer exported with ``torch.onnx.export``, as it is and with
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights): what sentence-transformers'
  ``export_dynamic_quantized_onnx_model`` makes, without ``optimum``;
* ``openvino``: OpenVINO on the transformer converted with ``openvino.convert_model`` (its CPU plugin computes in
  bf16 where the CPU has it, f32 elsewhere).

sentence-transformers' own ``backend="onnx"`` / ``"openvino"`` need ``optimum-onnx`` / ``optimum-intel``, which do
not install beside sentence-transformers 6.3 and transformers 5 (docs/benchmarks.md); the exports here use
``onnx``, ``onnxruntime`` and ``openvino`` alone, and a backend whose package is missing is skipped.

Speed: every backend encodes the same seeded sample of ``--subset`` verses in ``--rounds`` interleaved rounds (the
median round; ratios to float32, so the CPU's own speed cancels). Agreement: the mean cosine to the float32
embeddings of the sample. Quality: the whole English Bible (31,095 verses) encoded with float32 and with each
``--rescore`` backend, then ``bible-xref.nya`` (MAP@100, nDCG@10, R@100 against the whole Bible) and ``bible.nya``
verse retrieval against the whole Bible (accuracy@1) re-scored with that backend's documents (queries float32), and,
for torch backends, with both sides::

    python benchmarks/cpu_backends.py --subset 256 --rounds 1 --max-documents 2000      # a quick look
    # the committed records (then python scripts/results_tables.py): the timing on idle cores, the re-scoring anywhere
    python benchmarks/cpu_backends.py --parts speed --threads 1 --subset 512 --rounds 5 \
        --output results/bench_cpu_backends/results.json
    python benchmarks/cpu_backends.py --parts quality --threads 1 --output results/bench_cpu_backends/quality.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _record import add_output_argument, conditions, write_record  # benchmarks/_record.py, beside this script

BACKENDS = ("float32", "bfloat16", "int8", "onnx", "onnx-int8", "openvino")
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "onnx-int8": ("onnx", "onnxruntime"), "openvino": ("openvino",)}
TORCH = {"float32", "bfloat16", "int8"}  # backends that can run the query route too


def main() -> None:
    cli = _parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(cli.threads)
    start = conditions()
    model, transformer = _load(cli.model)
    xref, translation = _benchmarks(cli.max_documents)
    tables = {}
    with tempfile.TemporaryDirectory(prefix="cpu_backends_") as folder:
        encoders = _encoders(model, transformer, cli, Path(folder))
        if "speed" in cli.parts:
            verses = list(xref.corpus.values())
            speed = _speed(encoders, random.Random(0).sample(verses, min(cli.subset, len(verses))), cli.rounds)
            tables["speed"] = _speed_table(speed)
        if "quality" in cli.parts:
            rescore = [b for b in cli.rescore if b in encoders]
            tables["quality"] = _quality_table(_quality(model, encoders, rescore, xref, translation))
    for name, table in tables.items():
        print(f"\n{name}\n" + _markdown(table))
    if cli.output:
        print(f"wrote {write_record(cli.output, tables, start)}")


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="an OPTICAL model or any ST model (default: multilingual-e5-small)"
    )
    parser.add_argument(
        "--parts",
        default="speed,quality",
        type=lambda s: s.split(","),
        help="speed (time it: run on idle cores), quality (re-score: any load), or both",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), type=lambda s: s.split(","))
    parser.add_argument("--rescore", default="bfloat16,int8,onnx-int8,openvino", type=lambda s: s.split(","),
                        help="backends whose whole-Bible encoding is re-scored against float32's")  # fmt: skip
    parser.add_argument("--subset", type=int, default=1024, help="verses timed per backend and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO threads")
    parser.add_argument("--max-documents", type=int, default=None, help="a Bible slice (quick looks only)")
    add_output_argument(parser, "results/bench_cpu_backends/results.json")
    return parser


def _load(name: str | None) -> tuple[Any, Any]:
    """The model and the Transformer module of its document route."""
    from sentence_transformers.base.modules import Transformer

    from optical_st import load_optical_model
    from optical_st.research.config import default_multilingual_model
    from optical_st.routes import encoding_modules

    model = load_optical_model(name or default_multilingual_model(), device="cpu")
    transformer = next(m for m in encoding_modules(model, "document") if isinstance(m, Transformer))
    return model, transformer


def _benchmarks(max_documents: int | None) -> tuple[Any, Any]:
    """bible-xref.nya and bible.nya against the whole English Bible (the same documents), or a slice of it."""
    from optical_st.evaluation import load_benchmark

    xref = load_benchmark("bible-xref.nya")
    translation = load_benchmark("bible.nya", corpus="bible")
    assert list(xref.corpus) == list(translation.corpus)
    if max_documents:  # the first queries of each, their relevant verses and other verses up to max_documents
        keep: set[str] = set()
        for bench in (xref, translation):
            bench.queries = dict(list(bench.queries.items())[: max_documents // 20])
            keep |= {doc for q in bench.queries for doc in bench.relevant_docs[q]}
        keep |= set(list(xref.corpus)[: max(0, max_documents - len(keep))])
        for bench in (xref, translation):
            bench.corpus = {doc: text for doc, text in bench.corpus.items() if doc in keep}
    return xref, translation


# ------------------------------------------------------------------------------------------------------------------
# backends: each a function texts -> float32 document embeddings, through the model's own encode_document
# ------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _swapped(transformer: Any, runtime: Any) -> Iterator[None]:
    """The Transformer module runs ``runtime`` instead of its Hugging Face model (tokenizer, pooling, normalisation
    and prompts stay sentence-transformers' own)."""
    original = transformer.model
    transformer.model = runtime
    try:
        yield
    finally:
        transformer.model = original


def _encoders(model: Any, transformer: Any, cli: argparse.Namespace, folder: Path) -> dict[str, Callable]:
    from optical_st.inference import encode_route

    encoders = {}
    for name in cli.backends:
        missing = [p for p in PACKAGES.get(name, ()) if importlib.util.find_spec(p) is None]
        if missing:
            print(f"skipping {name}: {', '.join(missing)} not installed")
            continue
        dtype = "bfloat16" if name == "bfloat16" else "float32"
        _progress(f"preparing {name}")
        runtime = _runtime(name, transformer, folder, cli.threads)

        def encode(texts: list[str], route: str = "document", runtime: Any = runtime, dtype: str = dtype) -> Any:
            swap = _swapped(transformer, runtime) if runtime is not None else contextlib.nullcontext()
            with swap:
                return encode_route(model, texts, route=route, compute_dtype=dtype, batch_size=cli.batch_size)

        encoders[name] = encode
    return encoders


def _runtime(name: str, transformer: Any, folder: Path, threads: int) -> Any:
    """What runs instead of the Hugging Face model: ``None`` (torch itself), an int8 copy, or an exported model."""
    if name in ("float32", "bfloat16"):
        return None
    if name == "int8":
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(transformer.model), {torch.nn.Linear}, torch.qint8)
    path = _export_onnx(transformer, folder) if name.startswith("onnx") else None
    if name == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(folder / "model.int8.onnx"), weight_type=QuantType.QInt8)
        path = folder / "model.int8.onnx"
    return _Runtime(name, path, transformer, threads)


class _HiddenStates:
    """``hf_model(input_ids, attention_mask).last_hidden_state`` as a plain function, for the exporters."""

    @staticmethod
    def module(hf_model: Any) -> Any:
        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = hf_model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return Wrapped().eval()


def _example(transformer: Any) -> tuple[Any, Any]:
    features = transformer.preprocess(["an example sentence to trace", "and a second, longer one to trace with"])
    return features["input_ids"], features["attention_mask"]


def _export_onnx(transformer: Any, folder: Path) -> Path:
    path = folder / "model.onnx"
    if not path.exists():
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "last_hidden_state": {0: "batch", 1: "tokens"}}  # fmt: skip
        torch.onnx.export(
            _HiddenStates.module(transformer.model), _example(transformer), str(path), dynamo=False, opset_version=17,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"], dynamic_axes=axes,
        )  # fmt: skip
    return path


class _Runtime(torch.nn.Module):
    """ONNX Runtime or OpenVINO in the place of a Hugging Face model: ``forward(input_ids, attention_mask)`` ->
    ``{"last_hidden_state": tensor}``, as sentence-transformers' Transformer module reads it."""

    def __init__(self, name: str, path: Path | None, transformer: Any, threads: int) -> None:
        super().__init__()
        self.config = transformer.model.config
        self.register_buffer("where", torch.zeros(1))  # the model's device is read from its tensors
        if name.startswith("onnx"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._run = lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        else:
            import openvino as ov

            converted = ov.convert_model(_HiddenStates.module(transformer.model), example_input=_example(transformer))
            compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads})
            self._run = lambda ids, mask: compiled([ids, mask])[0]

    def forward(self, input_ids: Any, attention_mask: Any, **kwargs: Any) -> dict[str, Any]:
        hidden = self._run(input_ids.numpy(), attention_mask.numpy())
        return {"last_hidden_state": torch.from_numpy(hidden)}


# ------------------------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------------------------
def _speed(encoders: dict[str, Callable], sample: list[str], rounds: int) -> dict[str, Any]:
    """Median seconds per backend over interleaved rounds, and the mean cosine to float32 on the sample."""
    for encode in encoders.values():  # warm-up: first-call allocations, graph compilation
        encode(sample[:16])
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    embeddings: dict[str, Any] = {}
    for round_ in range(rounds):
        _progress(f"speed, round {round_ + 1} of {rounds}")
        for name, encode in encoders.items():
            start = time.perf_counter()
            embeddings[name] = encode(sample)
            seconds[name].append(time.perf_counter() - start)
    reference = embeddings["float32"]
    return {
        name: {"seconds": statistics.median(s), "rounds": s, "verses": len(sample),
               "cosine": torch.nn.functional.cosine_similarity(embeddings[name], reference).mean().item()}
        for name, s in seconds.items()
    }  # fmt: skip


def _quality(
    model: Any, encoders: dict[str, Callable], rescore: list[str], xref: Any, translation: Any
) -> dict[str, Any]:
    """float32's scores and each re-scored backend's: document side alone, and both sides for torch backends."""
    texts = list(xref.corpus.values())
    query_texts = {"xref": list(xref.queries.values()), "translation": list(translation.queries.values())}

    def queries(backend: str) -> dict[str, Any]:
        return {k: encoders[backend](v, route="query") for k, v in query_texts.items()}

    _progress(f"the whole Bible ({len(texts)} verses) with float32")
    start = time.perf_counter()
    documents = {"float32": encoders["float32"](texts)}
    seconds = {"float32": time.perf_counter() - start}
    reference_queries = queries("float32")
    scores = {("float32", "both"): _scores(reference_queries, documents["float32"], xref, translation, model)}
    for backend in rescore:
        _progress(f"the whole Bible with {backend}")
        start = time.perf_counter()
        documents[backend] = encoders[backend](texts)
        seconds[backend] = time.perf_counter() - start
        scores[(backend, "documents")] = _scores(reference_queries, documents[backend], xref, translation, model)
        if backend in TORCH:
            scores[(backend, "both")] = _scores(queries(backend), documents[backend], xref, translation, model)
    return {"bible_seconds": seconds, "documents": len(texts), "scores": scores}


def _scores(queries: dict[str, Any], documents: Any, xref: Any, translation: Any, model: Any) -> dict[str, float]:
    """xref MAP@100, nDCG@10, R@100 (trec_eval, own verse excluded) and translation accuracy@1."""
    from optical_st.evaluation import trec_eval_metrics

    doc_ids = list(xref.corpus)
    column = {doc: j for j, doc in enumerate(doc_ids)}
    similarity = model.similarity(queries["xref"], documents)
    for i, qid in enumerate(xref.queries):
        for doc in xref.excluded_docs.get(qid, ()):
            if doc in column:
                similarity[i, column[doc]] = float("-inf")
    top = similarity.topk(min(100, len(doc_ids)), dim=1)
    run = {qid: {doc_ids[j]: float(s) for s, j in zip(top.values[i].tolist(), top.indices[i].tolist(), strict=True)}
           for i, qid in enumerate(xref.queries)}  # fmt: skip
    trec = trec_eval_metrics({q: xref.relevant_docs[q] for q in xref.queries}, run, map_at_k=[100], ndcg_at_k=[10],
                             mrr_at_k=[10], recall_at_k=[100])  # fmt: skip
    best = model.similarity(queries["translation"], documents).argmax(dim=1).tolist()
    hits = [doc_ids[j] in translation.relevant_docs[q] for q, j in zip(translation.queries, best, strict=True)]
    return {"xref MAP@100": trec["trec_map@k"][100], "xref nDCG@10": trec["trec_ndcg@k"][10],
            "xref R@100": trec["trec_recall@k"][100], "acc@1": sum(hits) / len(hits)}  # fmt: skip


def _software() -> dict[str, Any]:
    """The CPU (model name, its bf16 and int8 instructions) and the runtimes' versions."""
    from importlib.metadata import PackageNotFoundError, version

    from optical_st.utils import fast_bf16_available

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    versions = {}
    for package in ("torch", "sentence-transformers", "transformers", "onnx", "onnxruntime", "openvino"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    wanted = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")
    return {"cpu": name, "cpu_flags": [f for f in wanted if f in flags], "fast_bf16": fast_bf16_available(), **versions}


# ------------------------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------------------------
def _speed_table(speed: dict[str, Any]) -> dict[str, Any]:
    base = speed["float32"]["seconds"]
    rows = [[name, f"{base / s['seconds']:.2f}", f"{s['cosine']:.5f}"] for name, s in speed.items()]
    header = ["backend", "speed-up vs float32", "mean cosine to float32"]
    return {"header": header, "rows": rows, "raw": {"backends": speed, "software": _software()}}


def _quality_table(quality: dict[str, Any]) -> dict[str, Any]:
    reference = quality["scores"][("float32", "both")]
    rows = []
    for (backend, sides), scores in quality["scores"].items():
        change = {m: 100 * (scores[m] - reference[m]) / reference[m] for m in ("xref MAP@100", "acc@1")}
        rows.append([backend, "queries and documents" if sides == "both" else "documents only",
                     f"{scores['xref MAP@100']:.4f}", f"{change['xref MAP@100']:+.2f}%", f"{scores['xref nDCG@10']:.4f}",
                     f"{scores['acc@1']:.4f}", f"{change['acc@1']:+.2f}%"])  # fmt: skip
    header = ["backend", "encoded with it", "xref MAP@100", "MAP change", "xref nDCG@10", "acc@1", "acc@1 change"]
    raw = {**quality, "scores": {f"{b}/{s}": v for (b, s), v in quality["scores"].items()}, "software": _software()}
    return {"header": header, "rows": rows, "raw": raw}


def _markdown(table: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(table["header"]) + " |", "|" + "---|" * len(table["header"])]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in table["rows"])])


if __name__ == "__main__":
    main()
