"""``detkit data get NAME``: download a known public data set and lay it out the way detkit reads it.

Only when asked: nothing in detkit downloads data otherwise (training, tests and ``make demo`` never
touch the network). For each data set the table below gives the files (URL, size, checksums), what
is done with them and the folder that results, under ``--dir`` (default: the data folder,
:func:`detkit.data.paths.data_home`: ``$DETKIT_DATA``, else ``data/`` of the clone). The shipped
recipes read those folders.

* **Progress**: a progress bar per file (stderr).
* **Resume**: a file is downloaded to ``<name>.part`` next to its final place; a later run asks the
  server for the rest (an HTTP ``Range`` request) and appends, or starts over when the server does not
  honour ranges.
* **Checksums**: every published checksum (sha256, md5) is verified before anything is extracted; a
  mismatch deletes the file and says so. Where no checksum is published (GitHub builds its archives on
  the fly) the sha256 of what arrived is printed, so it can be pinned; zip archives still check their
  per-member CRCs while extracting.
* **Offline**: a one-line error naming the URL and the reason, and the file to put in place by hand.
* **Safe extraction**: members that would land outside the target (absolute paths, ``..``, links
  pointing out) are refused; extraction goes to a staging folder first, so a failure leaves nothing
  half-written; ``.detkit-get.json`` in the result marks it complete (a second run does nothing).
* ``--mirror URL``: fetch every file as ``URL/<file name>`` instead (an institutional mirror, or the
  local server of detkit's tests); the checksums still apply.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from detkit.errors import ConfigError, DataError

__all__ = ["Resource", "DatasetSpec", "DATASETS", "fetch", "download", "format_table"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
MARKER = ".detkit-get.json"


@dataclass(frozen=True)
class Resource:
    """One file to download. ``sha256`` / ``md5``: the published checksums (None: none published)."""

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    mirrors: tuple = ()  # other URLs of the same file, tried in order when the first fails


@dataclass(frozen=True)
class DatasetSpec:
    """A known data set: its files, the folder it becomes (under ``--dir``) and how."""

    name: str
    description: str
    target: str  # relative to --dir
    resources: tuple
    prepare: Callable  # prepare(archives: list[Path], staging: Path, target: Path) -> list[str] (summary lines)
    use: str  # what reads it
    licence: str = ""
    notes: tuple = field(default=())


# ----------------------------------------------------------------------------------------------
# Preparation steps (archive -> the layout detkit reads)
# ----------------------------------------------------------------------------------------------
def _safe_extract(archive: Path, dest: Path, members: Callable[[str], bool] | None = None) -> None:
    """Extract ``archive`` (zip or tar) into ``dest``; refuse members that would leave it."""
    dest.mkdir(parents=True, exist_ok=True)

    def check(name: str) -> None:
        norm = os.path.normpath(name.replace("\\", "/"))
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep) or re.match(r"^[A-Za-z]:", norm):
            raise DataError(f"{archive}: refused, member {name!r} would be written outside {dest}")

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if members is None or members(n)]
                for name in names:
                    check(name)
                for name in names:  # ZipFile checks each member's CRC as it reads it
                    zf.extract(name, dest)
            return
        with tarfile.open(archive) as tf:
            chosen = [m for m in tf.getmembers() if members is None or members(m.name)]
            for m in chosen:
                check(m.name)
            if hasattr(tarfile, "data_filter"):  # also refuses links pointing out, device files...
                tf.extractall(dest, members=chosen, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tf.extractall(dest, members=[m for m in chosen if m.isfile() or m.isdir()])
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot extract: {exc} (a damaged download? delete it and run again)") from None


def _move_into(source: Path, target: Path) -> None:
    """Move the tree ``source`` to ``target``, merging into folders that exist (files are replaced)."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    for item in source.iterdir():
        if item.is_dir() and (target / item.name).is_dir():
            _move_into(item, target / item.name)
        else:
            if (target / item.name).is_dir():
                shutil.rmtree(target / item.name)
            os.replace(item, target / item.name)


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _prepare_raccoon(archives: list, staging: Path, target: Path) -> list[str]:
    """datitran/raccoon_dataset (images/, annotations/, data/*_labels.csv) -> a Pascal VOC folder."""
    _safe_extract(archives[0], staging)
    top = next((p for p in [staging, *staging.iterdir()] if (p / "annotations").is_dir() and (p / "images").is_dir()),
               None)
    if top is None:
        raise DataError(f"{archives[0]}: no annotations/ and images/ folders inside; not the raccoon archive?")
    out = staging / "_voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    xmls = sorted(p for p in (top / "annotations").glob("*.xml"))
    images = {p.stem: p for p in (top / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    for xml in xmls:
        os.replace(xml, out / "Annotations" / xml.name)
    for image in images.values():
        os.replace(image, out / "JPEGImages" / image.name)
    lines = []
    # The repository's own split: data/train_labels.csv (train) and data/test_labels.csv (used as val).
    for split, csv_name in (("train", "train_labels.csv"), ("val", "test_labels.csv")):
        path = top / "data" / csv_name
        if not path.is_file():
            raise DataError(f"{archives[0]}: no data/{csv_name} (the split of the raccoon data set)")
        with path.open(newline="", encoding="utf-8") as f:
            stems = {os.path.splitext(row["filename"])[0] for row in csv.DictReader(f)}
        missing = sorted(s for s in stems if s not in images or not (out / "Annotations" / f"{s}.xml").is_file())
        if missing:
            raise DataError(f"{archives[0]}: {csv_name} lists {len(missing)} images without image or XML file, "
                            f"e.g. {missing[0]}")
        ids = sorted(stems, key=_natural)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        lines.append(f"{split}: {len(ids)} images")
    for extra in ("LICENSE", "README.md"):
        if (top / extra).is_file():
            os.replace(top / extra, out / extra)
    _move_into(out, target)
    return [f"{len(images)} images, {len(xmls)} annotation files (Pascal VOC layout); " + ", ".join(lines)]


def _prepare_voc(year: str) -> Callable:
    def prepare(archives: list, staging: Path, target: Path) -> list[str]:
        for archive in archives:
            _safe_extract(archive, staging)
        source = staging / "VOCdevkit" / f"VOC{year}"
        if not (source / "Annotations").is_dir():
            raise DataError(f"{archives[0]}: no VOCdevkit/VOC{year}/Annotations inside")
        _move_into(source, target)
        splits = sorted(p.stem for p in (target / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        n = sum(1 for _ in (target / "JPEGImages").iterdir())
        return [f"{n} images; splits: {', '.join(splits)}"]

    return prepare


def _prepare_coco_val(archives: list, staging: Path, target: Path) -> list[str]:
    images, annotations = archives
    _safe_extract(images, staging)
    # The annotation archive also holds train2017 (448 MB of JSON) and captions: take only what val needs.
    _safe_extract(annotations, staging, members=lambda n: n.endswith("instances_val2017.json"))
    if not (staging / "val2017").is_dir() or not (staging / "annotations" / "instances_val2017.json").is_file():
        raise DataError(f"{images} / {annotations}: no val2017/ or annotations/instances_val2017.json inside")
    _move_into(staging / "val2017", target / "val2017")
    _move_into(staging / "annotations", target / "annotations")
    n = sum(1 for _ in (target / "val2017").iterdir())
    return [f"{n} images in val2017/, annotations/instances_val2017.json"]


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
# Checksums: VOC md5 as published with the data (torchvision lists the same), VOC sha256 and sizes
# from TensorFlow Datasets' url_checksums/voc.txt, COCO sizes and sha256 from url_checksums/coco.txt
# and md5 as published by many COCO download scripts. The raccoon archive is generated by GitHub on
# request, so it has no published checksum (see fetch() for what is checked instead).
_VOC = "http://host.robots.ox.ac.uk/pascal/VOC"
_VOC_MIRROR = "http://pjreddie.com/media/files"  # the copies TensorFlow Datasets checksums


def _voc(year: str, filename: str, size: int, sha256: str, md5: str) -> Resource:
    return Resource(f"{_VOC}/voc{year}/{filename}", filename, size, sha256=sha256, md5=md5,
                    mirrors=(f"{_VOC_MIRROR}/{filename}",))


DATASETS = {
    "raccoon": DatasetSpec(
        name="raccoon",
        description="200 photos of raccoons, 217 boxes, 1 class (datitran/raccoon_dataset, MIT)",
        target="raccoon",
        resources=(Resource(
            url="https://github.com/datitran/raccoon_dataset/archive/93938849301895fb73909842ba04af9b602f677a.zip",
            filename="raccoon_dataset-9393884.zip"),),
        prepare=_prepare_raccoon,
        use="configs/yolov1_raccoon_lite0.py, yolov1_raccoon_resnet18.py, rcnn_raccoon_lite0.py",
        licence="MIT",
        notes=("pinned to commit 9393884; split: the repository's train_labels.csv (160) / test_labels.csv "
               "(40, used as val)",),
    ),
    "voc2007": DatasetSpec(
        name="voc2007",
        description="Pascal VOC 2007 trainval + test: 9,963 images, 20 classes",
        target="VOCdevkit/VOC2007",
        resources=(
            _voc("2007", "VOCtrainval_06-Nov-2007.tar", 460_032_000,
                 "7d8cd951101b0957ddfd7a530bdc8a94f06121cfc1e511bb5937e973020c7508", "c52e279531787c972589f7e41ab4ae64"),
            _voc("2007", "VOCtest_06-Nov-2007.tar", 451_020_800,
                 "6836888e2e01dca84577a849d339fa4f73e1e4f135d312430c4856b5609b4892", "b6e924de25625d8de591ea690078ad9f"),
        ),
        prepare=_prepare_voc("2007"),
        use="configs/yolov1_voc.py, rcnn_voc.py (with voc2012)",
    ),
    "voc2012": DatasetSpec(
        name="voc2012",
        description="Pascal VOC 2012 trainval: 17,125 images, 20 classes",
        target="VOCdevkit/VOC2012",
        resources=(_voc("2012", "VOCtrainval_11-May-2012.tar", 1_999_639_040,
                        "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
                        "6cd6e144f989b92b3379bac3b3de84fd"),),
        prepare=_prepare_voc("2012"),
        use="configs/yolov1_voc.py, rcnn_voc.py (with voc2007)",
    ),
    "coco2017-val": DatasetSpec(
        name="coco2017-val",
        description="COCO 2017 val: 5,000 images, 36,781 boxes, 80 classes (for evaluation)",
        target="coco",
        resources=(
            Resource("http://images.cocodataset.org/zips/val2017.zip", "val2017.zip", 815_585_330,
                     sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
                     md5="442b8da7639aecaf257c1dceb8ba8c80"),
            Resource("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                     "annotations_trainval2017.zip", 252_907_541,
                     sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
                     md5="f4bbac642086de4f52a3fdda2de5fa2c"),
        ),
        prepare=_prepare_coco_val,
        use="configs/yolov1_coco.py (data.val; detkit eval)",
        licence="annotations CC BY 4.0; images under their Flickr terms",
    ),
}


def _size_text(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def format_table() -> str:
    """The known data sets, one paragraph each (``detkit data get --list``)."""
    from detkit.data.paths import data_home

    lines = [f"known data sets (`detkit data get NAME` puts them under {data_home()}):"]
    for spec in DATASETS.values():
        total = sum(r.size or 0 for r in spec.resources)
        size = _size_text(total) if all(r.size for r in spec.resources) else "size not published"
        lines.append(f"  {spec.name:14s} {spec.description}")
        lines.append(f"  {'':14s} -> {spec.target}/  ({size}; read by {spec.use})")
        for r in spec.resources:
            check = "sha256" if r.sha256 else "no published checksum"
            lines.append(f"  {'':14s}    {r.url}  [{check}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------
def _hashes(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _verify(path: Path, resource: Resource, url: str) -> str:
    """Check size and checksums; returns the sha256. DataError (the file removed) on a mismatch."""
    size = path.stat().st_size
    problem = None
    if resource.size is not None and size != resource.size:
        problem = f"size mismatch: expected {resource.size:,} bytes, got {size:,}"
    sha, md5 = _hashes(path)
    if problem is None and resource.sha256 and sha != resource.sha256.lower():
        problem = f"sha256 mismatch: expected {resource.sha256}, got {sha}"
    if problem is None and resource.md5 and md5 != resource.md5.lower():
        problem = f"md5 mismatch: expected {resource.md5}, got {md5}"
    if problem:
        path.unlink(missing_ok=True)
        raise DataError(f"{resource.filename} from {url}: {problem}; the file was deleted (a damaged download, "
                        "or the server changed it): run the command again")
    return sha


def _open(url: str, offset: int, timeout: float):
    from urllib.request import Request, urlopen

    from detkit import __version__

    headers = {"User-Agent": f"detkit/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310 - http(s) URLs of the table


def _fetch(url: str, part: Path, expected: int | None, progress: bool, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from its current length when the server allows."""
    from urllib.error import HTTPError

    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if expected is not None and offset > expected:
        part.unlink()
        offset = 0
    if expected is not None and offset == expected:
        return  # complete already (a run stopped before checking it)
    try:
        response = _open(url, offset, timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:  # the range is past the end: start over
            part.unlink()
            response, offset = _open(url, 0, timeout), 0
        else:
            raise
    with response:
        status = getattr(response, "status", 200)
        if offset and status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                raise OSError(f"the server answered range {response.headers.get('Content-Range')!r} to "
                              f"'bytes={offset}-'")
            mode = "ab"
            logger.info("resuming %s at %s", part.name, _size_text(offset))
        else:
            if offset:
                logger.info("%s: the server does not resume downloads; starting over", url)
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else expected
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                   desc=part.name[:-5], disable=None if progress else True, leave=False)
        with bar, open(part, mode) as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        if length and length.isdigit() and part.stat().st_size != offset + int(length):
            raise OSError(f"the connection closed after {part.stat().st_size:,} of {offset + int(length):,} bytes")


def download(resource: Resource, folder: str | os.PathLike, *, mirror: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download ``resource`` into ``folder`` (resuming a ``.part`` file) and verify it; returns its path."""
    from http.client import HTTPException
    from urllib.error import URLError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / resource.filename
    urls = [f"{mirror.rstrip('/')}/{resource.filename}"] if mirror else [resource.url, *resource.mirrors]
    if final.exists():
        _verify(final, resource, str(final))
        return final
    part = final.with_name(final.name + ".part")
    errors = []
    for url in urls:
        try:
            _fetch(url, part, resource.size, progress, timeout)
        except (URLError, OSError, HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url}: {reason}")
            logger.warning("download of %s failed: %s: %s", resource.filename, url, reason)
            continue
        sha = _verify(part, resource, url)
        if not resource.sha256:
            logger.warning("%s has no published checksum; what arrived has sha256 %s (size %s)", resource.filename,
                           sha, _size_text(part.stat().st_size))
        os.replace(part, final)
        return final
    kept = (f"; {_size_text(part.stat().st_size)} kept in {part}, the next run resumes"
            if part.exists() and part.stat().st_size else "")
    raise DataError(f"cannot download {resource.filename} ({'; '.join(errors)}){kept}. Offline? Put the file at "
                    f"{final} by hand (it is checked the same way) or pass --mirror")


def fetch(name: str | DatasetSpec, dest: str | os.PathLike | None = None, *, mirror: str | None = None,
          keep_archives: bool = False, force: bool = False, progress: bool = True, timeout: float = 60.0) -> str:
    """Download, verify and prepare the data set ``name`` under ``dest``; returns a summary.

    ``dest`` defaults to :func:`~detkit.data.paths.data_home`. Archives are kept in
    ``dest/.downloads/`` until the data set is in place (then deleted unless ``keep_archives``).
    """
    from detkit.data.paths import data_home

    if isinstance(name, DatasetSpec):
        spec = name
    elif name in DATASETS:
        spec = DATASETS[name]
    else:
        import difflib

        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown data set {name!r}.{hint} Known: {', '.join(DATASETS)} (detkit data get --list)")
    dest = Path(dest) if dest is not None else data_home()
    target = dest / spec.target
    marker = target / MARKER
    if marker.is_file() and not force:
        return f"{spec.name} is already in {target} (delete {marker.name} or pass --force to fetch it again)"
    downloads = dest / ".downloads"
    start = time.perf_counter()
    archives = [download(r, downloads, mirror=mirror, progress=progress, timeout=timeout) for r in spec.resources]
    staging = dest / f".staging-{spec.name}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        lines = spec.prepare(archives, staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {"name": spec.name, "files": [a.name for a in archives], "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    if not keep_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    head = f"{spec.name}: ready in {target} ({time.perf_counter() - start:.0f} s)"
    return "\n".join([head] + [f"  {line}" for line in lines] + [f"  read by {spec.use}"])
