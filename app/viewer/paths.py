"""Opening paths safely: a path the user types is opened only when it resolves (symbolic links
followed) to a location inside one of the allowed roots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


class PathRefused(Exception):
    """A path outside the allowed roots, or one that does not exist; ``str(exc)`` is the one-line
    message shown to the user."""


def resolve_under(roots: Sequence[Path], text: str, root: Path | None = None) -> Path:
    """The resolved, existing path that ``text`` names inside the allowed ``roots``.

    ``text``: a path relative to ``root`` (default: the first allowed root), or an absolute path.
    Symbolic links and ``..`` are resolved first, then the result must lie inside one of ``roots``
    (each resolved too). Raises :class:`PathRefused` otherwise, or when nothing exists there.
    """
    allowed = [Path(r).resolve() for r in roots]
    if not allowed:
        raise PathRefused("No data root is configured: set I2M2_DATA_ROOT to the folder(s) the app may open.")
    text = (text or "").strip()
    if "\x00" in text:
        raise PathRefused("Refused: the path contains a NUL character.")
    base = Path(root).resolve() if root is not None else allowed[0]
    if not any(base == a or a in base.parents for a in allowed):
        raise PathRefused("Refused: that root is not one of the allowed data roots.")
    candidate = Path(os.path.expanduser(text)) if text.startswith("~") else Path(text)
    candidate = candidate if candidate.is_absolute() else base / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        # say "outside" before "missing", so the answer does not reveal what exists elsewhere
        loose = candidate.resolve(strict=False)
        if not any(loose == a or a in loose.parents for a in allowed):
            raise PathRefused(f"Refused: {text or '.'} is outside the allowed data roots.") from None
        raise PathRefused(f"Not found: {text or '.'} does not exist under the data root.") from None
    except (OSError, RuntimeError) as exc:
        raise PathRefused(f"Refused: {text or '.'} cannot be resolved ({exc.__class__.__name__}).") from None
    if not any(resolved == a or a in resolved.parents for a in allowed):
        raise PathRefused(f"Refused: {text or '.'} is outside the allowed data roots.")
    return resolved


def is_under(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path`` resolves inside one of ``roots``."""
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return any(resolved == r.resolve() or r.resolve() in resolved.parents for r in roots)


def relative_label(path: Path, roots: Sequence[Path]) -> str:
    """``path`` relative to the root that holds it (for display)."""
    for r in roots:
        try:
            return Path(path).resolve().relative_to(Path(r).resolve()).as_posix() or "."
        except ValueError:
            continue
    return Path(path).name
