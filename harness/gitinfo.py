"""Which code produced a result: the git commit and dirty flag of the harness checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

# The checkout the harness package was imported from (an editable install points here).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def repo_root(start: Path | str | None = None) -> Path | None:
    """The top of the git work tree containing ``start`` (default: the cwd), or None outside one."""
    top = _git(["rev-parse", "--show-toplevel"], Path(start or Path.cwd()))
    return Path(top) if top else None


def git_commit(root: Path | str = PACKAGE_ROOT) -> str | None:
    """The full sha of HEAD at ``root``; None outside a repository or before the first commit."""
    return _git(["rev-parse", "--verify", "--quiet", "HEAD"], Path(root)) or None


def git_dirty(root: Path | str = PACKAGE_ROOT) -> bool | None:
    """Whether the work tree at ``root`` has uncommitted changes (untracked files included).

    None outside a repository.
    """
    status = _git(["status", "--porcelain"], Path(root))
    return None if status is None else bool(status)
