"""The two sides of a distillation loss: the student (:class:`Encoder`) and the frozen teacher
(:class:`FrozenTeacher`), each with the tokenizer that reads its column and the token ids that carry no text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from optical_st.fingerprints import weights_versions
from optical_st.losses.teacher_cache import TeacherCache
from optical_st.routes import module_state, route_tokenizer
from optical_st.transport import special_tokens_mask

__all__ = ["Encoder", "FrozenTeacher", "route_tokenizer"]


class Encoder:
    """One side of the distillation: how to run it, the tokenizer that reads its column (the dataset checks use it)
    and its special token ids, ``[UNK]`` left out: in LRL text it stands for real (unknown) words that must be aligned
    too. ``route`` is the Router route it runs, ``None`` without a Router."""

    def __init__(self, run: Callable[[dict[str, Any]], dict[str, Tensor]], tokenizer: Any, route: str | None) -> None:
        self.run = run
        self.route = route
        self.tokenizer = tokenizer
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special_ids = sorted(special - {getattr(tokenizer, "unk_token_id", None)})
        self.special_set = frozenset(self.special_ids)
        self._special_tensors: dict[torch.device, Tensor] = {}

    def special_ids_on(self, device: torch.device) -> Tensor:
        """:attr:`special_ids` as a tensor on ``device``, copied there once (a copy per batch would wait for the
        device)."""
        if device not in self._special_tensors:
            self._special_tensors[device] = torch.tensor(self.special_ids, dtype=torch.long, device=device)
        return self._special_tensors[device]

    def content_mask(self, features: dict[str, Any]) -> Tensor:
        """``(B, n)``: the tokens of a tokenized column that carry text: not padding, not special (``[UNK]`` is text)
        and not the prompt (``prompt_length``)."""
        ids = features["input_ids"]
        excluded = special_tokens_mask(ids, self.special_ids_on(ids.device), features.get("prompt_length"))
        return features["attention_mask"].bool() & ~excluded


class FrozenTeacher(Encoder):
    """The teacher side: :meth:`frozen` runs it in eval mode without a graph (the teacher is never trained), through
    :attr:`cache` when there is one.

    Args:
        run: the teacher's forward (the ``document`` route of the unwrapped Router, or the separate teacher).
        tokenizer: the tokenizer of the English column.
        route: the Router route, ``None`` for a separate teacher.
        modules: the teacher's modules, one by one: put in eval mode before every run (the trainer calls
            ``model.train()`` every step, which would switch on the teacher's dropout), and read by the cache's
            fingerprint (an adapter model's document route: its base).
    """

    def __init__(
        self,
        run: Callable[[dict[str, Any]], dict[str, Tensor]],
        tokenizer: Any,
        route: str | None,
        modules: list[nn.Module],
    ) -> None:
        super().__init__(run, tokenizer, route)
        self.modules = modules
        self._cache: TeacherCache | None = None
        self._bound_versions: tuple | None = None  # the weights' versions when the cache last checked them

    @property
    def cache(self) -> TeacherCache | None:
        """The :class:`~optical_st.TeacherCache` the teacher's outputs are read from (``None``: none). Set it at any
        time: the value is checked here, and the cache checks the teacher's weights at the next batch."""
        return self._cache

    @cache.setter
    def cache(self, cache: TeacherCache | None) -> None:
        if cache is not None and not isinstance(cache, TeacherCache):
            raise ValueError(f"teacher_cache must be an optical_st.TeacherCache or None, got {type(cache)}.")
        self._cache = cache
        self._bound_versions = None

    def frozen(self, features: dict[str, Any]) -> dict[str, Tensor]:
        """The teacher's outputs for a tokenized batch, in eval mode and without a graph; through the cache if any."""
        for module in self.modules:
            module.eval()
        with torch.no_grad():
            if self._cache is None:
                return self.run(features)
            # the weights' fingerprint is compared with the cache's whenever PyTorch saw them change (or the cache is
            # new to this teacher): load_state_dict, optimizer steps, in-place ops bump the version counters
            versions = weights_versions(t for module in self.modules for t in module_state(module)[2].values())
            if self._bound_versions != versions:
                self._cache.bind(self.modules)
                self._bound_versions = versions
            return self._cache.run(features, self.run)
