"""One side of an OT distillation batch: :class:`TokenEmbeddings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

__all__ = ["TokenEmbeddings"]


@dataclass(frozen=True)
class TokenEmbeddings:
    """One side of an OT distillation batch (the student's LRL texts or the teacher's English texts), as
    :meth:`OTDistillationLoss.compute_loss_from_embeddings` reads it.

    Args:
        tokens: ``(B, n, d)`` token embeddings (the student's with grad).
        mask: ``(B, n)`` attention mask.
        exclude: optional ``(B, n)`` mask of tokens that get zero transport mass (special and prompt tokens).
        sentence: optional ``(B, d)`` pooled embeddings, for the sentence and InfoNCE terms.
    """

    tokens: Tensor
    mask: Tensor
    exclude: Tensor | None = None
    sentence: Tensor | None = None

    @classmethod
    def from_output(cls, output: Mapping[str, Tensor], exclude: Tensor | None = None) -> TokenEmbeddings:
        """The side from a sentence-transformers forward output (``token_embeddings``, ``attention_mask`` and, when
        the model pools, ``sentence_embedding``)."""
        return cls(output["token_embeddings"], output["attention_mask"], exclude, output.get("sentence_embedding"))

    def check_padded(self, name: str) -> None:
        """Raise unless the tokens are padded ``(B, n, d)`` matching the mask (``name``: whose, for the message)."""
        if self.tokens.dim() != 3 or self.tokens.shape[:2] != self.mask.shape:
            # e.g. FlashAttention-2 with unpadded (packed) outputs: (total_tokens, d) instead of (B, n, d)
            raise ValueError(
                f"The {name}'s token embeddings have shape {tuple(self.tokens.shape)}, but the loss needs padded "
                f"(batch, tokens, dim) embeddings matching the attention mask {tuple(self.mask.shape)}. Load the "
                "model with model_kwargs={'attn_implementation': 'sdpa'} (or 'eager') instead of unpadded "
                "FlashAttention."
            )
