"""Named phases of work that the code doing the work opts into, so that an observer can account for them: e.g.
:class:`optical_st.evaluation.FlopsCallback` counts the FLOPs of hard-negative mining, which
:class:`~optical_st.sampling.HardNegativeMiningCallback` runs inside ``work_phase(MINING)``.

The code marks a block with ``with work_phase(name):``; an observer subscribes for a while with
``with observe_phases(observer):``, where ``observer(name)`` returns the context manager entered around every marked
block (it may ignore the names it does not count). Without observers a marked block just runs.

Example::

    >>> import contextlib
    >>> from optical_st.phases import observe_phases, work_phase
    >>> seen = []
    >>> def observer(name):
    ...     seen.append(name)
    ...     return contextlib.nullcontext()
    >>> with observe_phases(observer):
    ...     with work_phase("mining"):
    ...         pass
    >>> seen
    ['mining']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["MINING", "PhaseObserver", "observe_phases", "work_phase"]

# re-encoding and searching for hard negatives during training (optical_st.sampling)
MINING = "mining"

PhaseObserver = Callable[[str], AbstractContextManager[Any]]
_observers: list[PhaseObserver] = []


@contextlib.contextmanager
def work_phase(name: str) -> Iterator[None]:
    """Run the block as phase ``name`` for every observer subscribed now (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        for observer in tuple(_observers):
            stack.enter_context(observer(name))
        yield


@contextlib.contextmanager
def observe_phases(observer: PhaseObserver) -> Iterator[None]:
    """Subscribe ``observer`` to the phases entered inside the block; it is unsubscribed when the block ends."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)
