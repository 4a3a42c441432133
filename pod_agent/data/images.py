"""Image files of a pod: reading them safely under the owner's images directory, decoding and resizing them,
and the folder-per-class layout as a table.

Owns the one way the agent opens an image file named by a table row (``ImageReader``): the row's path is
relative to ``datasource.images.dir``; an absolute path, a ``..`` part, a symlink anywhere on the way
(each component is opened with ``O_NOFOLLOW`` under the directory's own descriptor, so swapping a component
for a link while the task prepares does not help either) or anything but a regular file is refused with a
DataError, as is a file over ``max_file_mb`` or an image over ``_MAX_PIXELS``. Pillow decodes (imported on
first use: the daemon stays light), converts to the mode (``L`` or ``RGB``) and resizes to (height, width);
pixels stay uint8, channels first (a quarter of float32's bytes in the prepared file; the training
side scales them to [0, 1]). The sandbox never opens an image file:
``task_input.py`` writes the decoded pixels into the task's prepared input.

``ImageFolderTable`` is ``datasource.format = "image-folders"``: ``path`` holds one sub-directory per
class, and the table is its image files, columns ``image`` (the path relative to ``path``) and ``label``
(the sub-directory's name), in sorted order. Symlinks are not listed.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pyarrow as pa

from pod_agent.config import DatasourceSection, ImagesSection
from pod_agent.data.schema import ColumnSchema, Stype
from pod_agent.errors import DataError

IMAGE_COLUMN, LABEL_COLUMN = "image", "label"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Decoded pixels of one image before resizing: bounds the memory a crafted small file can demand.
_MAX_PIXELS = 64_000_000
_CHANNELS = {"L": 1, "RGB": 3}

ImageMode = Literal["L", "RGB"]


@dataclass(frozen=True)
class ImageFormat:
    """What every image of a task becomes: ``mode`` and (height, width)."""

    mode: ImageMode
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (_CHANNELS[self.mode], self.height, self.width)


def images_section(section: DatasourceSection) -> ImagesSection:
    """The datasource's images settings; the folder layout's directory is its ``path`` unless set."""
    if section.images is not None:
        return section.images
    if section.format == "image-folders":
        return ImagesSection(dir=section.path)
    raise DataError(
        f"{section.path}: the table has an image column but pod.toml sets no [datasource.images] dir - "
        "name the directory its paths are relative to"
    )


class ImageReader:
    """Opens, decodes and resizes images named relative to ``config.dir``; see the module docstring."""

    def __init__(self, config: ImagesSection, image_format: ImageFormat) -> None:
        self._root = config.dir
        self._max_bytes = config.max_file_mb << 20
        self.format = image_format

    def pixels(self, relative: str) -> np.ndarray:
        """The image at ``relative`` as uint8 ``[channels, height, width]``."""
        from PIL import Image, UnidentifiedImageError

        data = self.read_bytes(relative)
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > _MAX_PIXELS:
                    raise DataError(f"image {relative!r} has {image.width}x{image.height} pixels, over {_MAX_PIXELS}")
                fitted = image.convert(self.format.mode).resize(
                    (self.format.width, self.format.height), Image.Resampling.BILINEAR
                )
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"image {relative!r} under {self._root} does not decode ({exc}); fix or remove it") from exc
        array = np.asarray(fitted, dtype=np.uint8)
        return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))

    def read_bytes(self, relative: str) -> bytes:
        """The bytes of the regular file at ``relative`` under the images directory, never past it."""
        parts = _checked_parts(relative, self._root)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._root, flags | os.O_DIRECTORY)
        except OSError as exc:
            raise DataError(f"images directory {self._root} unreadable ({exc.strerror}); fix datasource.images.dir") \
                from exc
        try:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                inner = _open_under(fd, part, flags | (os.O_NONBLOCK if last else os.O_DIRECTORY), relative,
                                    self._root)
                os.close(fd)
                fd = inner
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"image path {relative!r} under {self._root} is not a regular file")
            if info.st_size > self._max_bytes:
                raise DataError(
                    f"image {relative!r} is {info.st_size} bytes, over datasource.images.max_file_mb "
                    f"({self._max_bytes >> 20} MiB)"
                )
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(self._max_bytes + 1)
        finally:
            os.close(fd)


def _checked_parts(relative: str, root: Path) -> list[str]:
    path = PurePosixPath(relative)
    if not relative or path.is_absolute() or ".." in path.parts or "\\" in relative or "\x00" in relative:
        raise DataError(
            f"image path {relative[:200]!r} is not a plain relative path under {root}: absolute paths and "
            "'..' are refused"
        )
    return list(path.parts)


def _open_under(dir_fd: int, name: str, flags: int, relative: str, root: Path) -> int:
    """Open ``name`` under ``dir_fd`` without following a symlink."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        # O_NOFOLLOW on a link is ELOOP; O_DIRECTORY on a link (to a directory) is ENOTDIR.
        linked = exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(os.path.join(f"/proc/self/fd/{dir_fd}",
                                                                                             name))
        reason = "is or passes a symlink, which is refused" if linked else exc.strerror
        raise DataError(f"image path {relative!r} under {root}: {reason}") from exc


class ImageFolderTable:
    """``path/<class>/<file>`` as a table of ``image`` (relative path) and ``label`` (class) columns."""

    def __init__(self, section: DatasourceSection) -> None:
        self.section = section
        self.names = [IMAGE_COLUMN, LABEL_COLUMN]
        self._files = _listing(section.path)
        if not self._files:
            raise DataError(
                f"{section.path}: no image files in class sub-directories - the layout is "
                f"<path>/<class>/<image> with suffixes {sorted(IMAGE_SUFFIXES)}"
            )

    def infer(self, *, visible: list[str], forced: dict[str, Stype]) -> tuple[list[ColumnSchema], int]:
        classes = sorted({label for _, label in self._files})
        known = {
            IMAGE_COLUMN: ColumnSchema(name=IMAGE_COLUMN, arrow_type="string", stype="image"),
            LABEL_COLUMN: ColumnSchema(name=LABEL_COLUMN, arrow_type="string", stype="categorical", categories=classes),
        }
        return [known[name] for name in visible], len(self._files)

    def batches(self, columns: list[str], *, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for start in range(0, len(self._files), batch_rows):
            chunk = self._files[start : start + batch_rows]
            values = {IMAGE_COLUMN: [path for path, _ in chunk], LABEL_COLUMN: [label for _, label in chunk]}
            yield pa.RecordBatch.from_arrays([pa.array(values[name], pa.string()) for name in columns], names=columns)


def _listing(root: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    try:
        classes = sorted((e for e in os.scandir(root) if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{root}: image folders unreadable ({exc.strerror}) - check datasource.path") from exc
    for class_dir in classes:
        for dirpath, dirnames, filenames in os.walk(class_dir.path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if full.suffix.lower() in IMAGE_SUFFIXES and not full.is_symlink():
                    found.append((full.relative_to(root).as_posix(), class_dir.name))
    return found
