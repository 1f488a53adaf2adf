"""A new Agg figure and an atomic PNG write: the two things every detkit figure shares.

Each PNG is written to a temporary file and renamed, so an image viewer (or an experiment tracker
uploading the plots folder) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from detkit.fileio import temp_path

__all__ = ["DPI", "new_figure", "save_figure", "write_png"]

DPI = 100  # a figure of figsize (w, h) inches is a (100 w) x (100 h) pixel PNG


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on its own Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _replace(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name the work dir's stale-temporary clean-up knows (matplotlib and cv2 need the extension)
    tmp = temp_path(path, extension=path.suffix)
    write(tmp)
    os.replace(tmp, path)
    return path


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG of exactly ``figsize * DPI`` pixels (no bbox cropping)."""
    return _replace(Path(path), lambda tmp: fig.savefig(tmp, dpi=DPI))


def write_png(image, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 ``[H, W, 3]`` array as a PNG."""
    import cv2

    ok, data = cv2.imencode(".png", image[..., ::-1])
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    return _replace(Path(path), lambda tmp: Path(tmp).write_bytes(data.tobytes()))
