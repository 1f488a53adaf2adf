"""What ``detkit infer`` reads: an image, a folder, a glob, a video file or a webcam.

:func:`open_source` classifies the SOURCE argument. Image sources yield one item per readable image and
record unreadable files as skipped (reported at the end, never silently lost); video sources stream
frames one at a time (the video is never held in memory).
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from detkit.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv"}


@dataclass
class Frame:
    image: np.ndarray  # uint8 HxWx3 RGB
    name: str  # file name (images) or "<video stem>_<frame index>" (video)
    index: int  # position in the source
    path: str | None = None


@dataclass
class ImageSource:
    """A list of image files; unreadable ones are skipped and listed in ``skipped``."""

    paths: list[Path]
    kind: str = "images"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    max_pixels: int | None = None  # larger images are skipped (None: the reader's default limit)

    def __len__(self):
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        from detkit.data.io import read_image

        for i, path in enumerate(self.paths):
            try:
                image = read_image(path, self.max_pixels)
            except DataError as exc:
                self.skipped.append((str(path), str(exc)))
                log.warning("skipping %s: %s", path, exc)
                continue
            yield Frame(image, path.name, i, str(path))


class VideoSource:
    """Frames of a video file or a webcam, streamed with OpenCV."""

    def __init__(self, target, name: str, kind: str, max_pixels: int | None = None):
        import cv2

        from detkit.data.io import max_image_pixels

        self.kind, self.name, self.target = kind, name, target
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            what = f"webcam {target}" if kind == "webcam" else f"video {target}"
            raise DataError(f"{what}: cannot be opened (missing file, unsupported codec, or no device)")
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS)) or 30.0
        self.width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        limit = max_image_pixels(max_pixels)
        if limit and self.width * self.height > limit:  # every frame would be a decompression bomb
            self.capture.release()
            raise DataError(f"{target}: refused, frames of {self.width}x{self.height} = {self.width * self.height:,} "
                            f"pixels are over the limit of {limit:,} (data.max_image_pixels; 0 = no limit)")
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 and kind == "video" else None
        self.error: str | None = None  # why reading stopped early, if it did
        self.skipped: list[tuple[str, str]] = []

    def __len__(self):
        return self.frame_count or 0

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        index = 0
        try:
            while True:
                ok, frame = self.capture.read()
                if not ok:
                    if self.frame_count is not None and index < self.frame_count:
                        # OpenCV reports a corrupt frame and the end of the file the same way; the
                        # container's frame count tells them apart.
                        self.error = f"frame {index} of {self.frame_count} could not be decoded; stopped there"
                    break
                if frame is None or frame.ndim != 3:
                    self.error = f"frame {index} is not a colour image; stopped there"
                    break
                yield Frame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), f"{self.name}_{index:06d}", index)
                index += 1
        finally:
            self.capture.release()


def _expand_folder(folder: Path, skipped: list) -> list[Path]:
    paths = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            paths.append(p)
        elif not p.name.startswith("."):
            skipped.append((str(p), "not an image file (by extension)"))
    return paths


def open_source(source: str, max_pixels: int | None = None):
    """Classify ``source``: an image file, a folder, a glob, a video file, or a webcam index.

    ``max_pixels``: images (and video frames) with more pixels are refused (None: the reader's default).
    """
    if source.isdigit():
        return VideoSource(int(source), f"webcam{source}", "webcam", max_pixels)
    path = Path(source)
    if path.is_dir():
        skipped: list = []
        paths = _expand_folder(path, skipped)
        if not paths:
            raise DataError(f"{source}: the folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        src = ImageSource(paths, max_pixels=max_pixels)
        src.skipped.extend(skipped)
        return src
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            return VideoSource(str(path), path.stem, "video", max_pixels)
        if suffix in IMAGE_EXTENSIONS:
            return ImageSource([path], max_pixels=max_pixels)
        raise DataError(f"{source}: unknown file type '{suffix}' (expected an image or a video)")
    if any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        images = [p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise DataError(f"{source}: the pattern matches no image files")
        src = ImageSource(images, max_pixels=max_pixels)
        src.skipped.extend((str(p), "not an image file (by extension)") for p in matches if p not in images)
        return src
    raise DataError(f"{source}: no such file or folder")
