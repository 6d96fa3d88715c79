"""One progress-bar policy for every long loop: shown on a terminal, silent in pipes, logs and CI."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that is off when ``enabled`` is False and off automatically when stderr is not a terminal."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
