"""The visual-geo-localization dataset format: image names that carry their own geo-tag.

SF-XL, SF-XS, Tokyo-XS and Pitts30k all name each image
`@UTM_east@UTM_north@zone_number@zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@altitude@timestamp@note@.jpg`,
so `name.split("@")` gives 16 parts: "" then the 14 fields then the extension. Empty fields are
allowed where datasets leave them empty (Pitts30k has no heading, for example): the number
fields then read as NaN.

A folder may come with `<folder>_images_paths.txt` beside it (one path per line) so that
listing millions of images does not have to walk the file system. As in CosPlace, relative
paths in it are relative to the folder itself; paths relative to the dataset root (an
ancestor of the folder) or absolute ones are accepted too.

Scale (SF-XL lists 41 million images; `dist-geo bench scale` measures this module): a record
has slots instead of a per-instance dict, the short fields repeated across images (panorama
id, timestamp, note: 12 crops share a panorama) are interned, and paths are joined and split
as strings, not as a `pathlib.Path` per line, with the same results as Path's; records are
built with the cycle collector paused (dist_geo/bulk.py).
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from dist_geo.bulk import gc_paused
from dist_geo.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FIELDS = (
    "utm_east", "utm_north", "zone_number", "zone_letter", "lat", "lon", "pano_id", "tile_num",
    "heading", "pitch", "roll", "altitude", "timestamp", "note",
)
NAME_PATTERN = "@" + "@".join(FIELDS) + "@.jpg"


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image and the geo-tag read from its name. `heading` is NaN when the name has none."""

    path: str
    utm_east: float
    utm_north: float
    heading: float
    zone_number: int | None = None
    zone_letter: str = ""
    lat: float = math.nan
    lon: float = math.nan
    pano_id: str = ""
    timestamp: str = ""
    note: str = ""


def _number(text: str, field: str, path: str, required: bool = False) -> float:
    if not text:
        if required:
            raise DataError(f"{path}: image name has an empty {field} (expected {NAME_PATTERN})")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{path}: image name field {field}={text!r} is not a number (expected {NAME_PATTERN})"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}: image name field {field}={text!r} is not finite")
    return value


def _file_name(path: str) -> str:
    """`Path(path).name` without building a Path: the last component, unless the path ends in
    '/' or '/.', which Path normalises away (then Path decides)."""
    name = path.rpartition("/")[2]
    return name if name not in ("", ".") else Path(path).name


def parse_name(path: str | Path) -> ImageRecord:
    """Read the geo-tag of one image from its file name; DataError names the file if it cannot."""
    path = str(path)
    parts = _file_name(path).split("@")
    if len(parts) != len(FIELDS) + 2 or parts[0] != "":
        raise DataError(
            f"{path}: image name has {max(len(parts) - 2, 0)} '@' fields instead of {len(FIELDS)} "
            f"(expected {NAME_PATTERN})"
        )
    _, east, north, zone, letter, lat, lon, pano, _, heading_text, *_, timestamp, note, _ = parts
    if zone and not zone.isdigit():
        raise DataError(f"{path}: image name field zone_number={zone!r} is not an integer")
    heading = _number(heading_text, "heading", path)
    return ImageRecord(
        path=path,
        utm_east=_number(east, "utm_east", path, required=True),
        utm_north=_number(north, "utm_north", path, required=True),
        heading=heading % 360.0 if math.isfinite(heading) else heading,
        zone_number=int(zone) if zone else None,
        zone_letter=sys.intern(letter),
        lat=_number(lat, "lat", path),
        lon=_number(lon, "lon", path),
        pano_id=sys.intern(pano),
        timestamp=sys.intern(timestamp),
        note=sys.intern(note),
    )


def format_name(
    utm_east: float,
    utm_north: float,
    zone_number: int,
    zone_letter: str,
    lat: float,
    lon: float,
    heading: float,
    pano_id: str = "",
    tile_num: str = "",
    pitch: float | None = None,
    roll: float | None = None,
    altitude: float | None = None,
    timestamp: str = "",
    note: str = "",
    ext: str = ".jpg",
) -> str:
    """The VG file name of an image (SF-XL's number formats), the inverse of `parse_name`."""
    def opt(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    fields = (
        f"{utm_east:010.2f}", f"{utm_north:010.2f}", f"{zone_number:02d}", zone_letter,
        f"{lat:.6f}", f"{lon:.6f}", pano_id, tile_num, f"{heading % 360.0:.2f}",
        opt(pitch), opt(roll), opt(altitude), timestamp, note,
    )
    for name, value in zip(FIELDS, fields):
        if "@" in value or "/" in value:
            raise ValueError(f"field {name}={value!r} may not contain '@' or '/'")
    return "@" + "@".join(fields) + "@" + ext


def images_paths_file(folder: str | Path) -> Path:
    """`<folder>_images_paths.txt`, the optional list of a folder's images."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}_images_paths.txt"


def _joined(base: Path, prefix: str, line: str) -> str:
    """`str(base / line)` without a Path per line (`prefix` is base as a string ending in '/'):
    plain lines are kept (absolute) or appended; a line Path would normalise ('//', '.'
    components, a trailing '/') goes through Path."""
    if "//" in line or "/./" in line or line.startswith("./") or line.endswith(("/", "/.")) \
            or line == ".":
        return str(base / line)
    return line if line.startswith("/") else prefix + line


def _read_paths_file(folder: Path, list_file: Path) -> list[str]:
    lines = [line for line in map(str.strip, list_file.read_text().splitlines()) if line]
    if not lines:
        raise DataError(f"{list_file}: images paths file is empty")
    first = Path(lines[0])
    if first.is_absolute():
        base = Path("/")
    else:
        # Relative to the folder (CosPlace's convention) or to one of its ancestors (the root).
        base = next((b for b in (folder, *folder.parents) if (b / first).exists()), None)
        if base is None:
            raise DataError(
                f"{list_file}: first listed image {lines[0]!r} exists neither under {folder} "
                f"nor under its parent folders"
            )
    prefix = str(base).rstrip("/") + "/"
    for i, line in enumerate(lines):  # in place: one copy of millions of paths, not two
        lines[i] = _joined(base, prefix, line)
    return lines


def _glob(folder: Path) -> list[str]:
    return [
        str(p) for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]


def list_images(folder: str | Path, skip_bad: bool = False) -> tuple[list[ImageRecord], list[str]]:
    """The images of a folder with their geo-tags, sorted by path, and the bad paths skipped.

    Uses `<folder>_images_paths.txt` when it exists, else a recursive glob of image files.
    A name that does not parse raises DataError, unless `skip_bad`: then it is left out and
    returned in the second list (and counted in the log).
    """
    folder = Path(folder)
    list_file = images_paths_file(folder)
    if list_file.exists():
        paths = _read_paths_file(folder, list_file)
    elif folder.is_dir():
        paths = _glob(folder)
    else:
        raise DataError(f"{folder}: image folder not found (and no {list_file.name} beside it)")
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    records: list[ImageRecord] = []
    bad: list[str] = []
    with gc_paused():
        for path in sorted(paths):
            try:
                records.append(parse_name(path))
            except DataError:
                if not skip_bad:
                    raise
                bad.append(path)
    if bad:
        log.warning("%s: skipped %d images with unparsable names, e.g. %s", folder, len(bad), bad[0])
    if not records:
        raise DataError(f"{folder}: none of the {len(paths)} image names could be parsed")
    return records, bad


__all__ = [
    "FIELDS", "IMAGE_EXTENSIONS", "ImageRecord", "format_name", "images_paths_file",
    "list_images", "parse_name",
]
