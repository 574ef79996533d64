"""Run profiles: how big a run is, as data.

A profile says which data world a run reads, which model size it builds and how long it trains.
`smoke` runs in seconds on a CPU, `mini` in minutes on one GPU, `paper` follows the paper's
recipes on the real datasets. Task recipes read these fields; they never branch on the name.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable


class UnknownNameError(KeyError):
    """A name (table, profile, model, ...) that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def _natural_key(name: str) -> list[int | str]:
    """``table2`` sorts before ``table10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Builds the one error every registry in the harness raises for a name it does not know.

    Args:
        kind: what the name names, e.g. ``"table"`` or ``"profile"``.
        name: the name that was asked for.
        known: every valid name.
    """
    known = sorted(known, key=_natural_key)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}.")


@dataclass(frozen=True)
class Profile:
    """One run profile.

    Args:
        name: ``smoke``, ``mini`` or ``paper``.
        description: one line for ``harness list profiles``.
        world: the data source: the name of a synthetic world built by ``harness data world``
            (``smoke``/``mini``), or ``real`` for the official datasets under ``data/``.
        model_size: size of the backbone the task runs build (``tiny``, ``base``, ``large``).
        max_steps: training steps per task run; ``None`` means the recipe's own schedule.
        batch_size: per-device batch size; ``None`` means the recipe's own batch size.
        default_seeds: how many seeds ``harness run`` uses unless ``--seeds`` says otherwise.
    """

    name: str
    description: str
    world: str
    model_size: str
    max_steps: int | None
    batch_size: int | None
    default_seeds: int

    @property
    def synthetic(self) -> bool:
        """Whether the profile reads a generated world rather than the real datasets."""
        return self.world != "real"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="smoke",
            description="seconds on a CPU: tiny backbone, the generated smoke world, a few steps",
            world="smoke",
            model_size="tiny",
            max_steps=4,
            batch_size=2,
            default_seeds=1,
        ),
        Profile(
            name="mini",
            description="minutes on one GPU: base backbone, the generated mini world, short schedules",
            world="mini",
            model_size="base",
            max_steps=200,
            batch_size=16,
            default_seeds=1,
        ),
        Profile(
            name="paper",
            description="the paper's recipes on the official datasets (needs data/ and a GPU cluster)",
            world="real",
            model_size="base",
            max_steps=None,
            batch_size=None,
            default_seeds=3,
        ),
    )
}


def list_profiles() -> list[str]:
    """Names of all profiles, sorted."""
    return sorted(PROFILES)


def get_profile(name: str) -> Profile:
    """Returns the profile called ``name``.

    Raises:
        UnknownNameError: ``name`` is not a profile; the message lists the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise unknown_name_error("profile", name, PROFILES) from None
