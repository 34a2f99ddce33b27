"""Image-sequence input (`frames/%06d.png`): FFmpeg's image2 demuxer, one file per frame.

The files hold no frame rate, so the job gives one (`--fps`, default 24) and registers it
here (`set_rate`) before anything opens the input: every open of the pattern in this
process (source, packet scan, completeness check, probe) reads the frames at that rate, and
a segment's task carries it to a Ray worker, which registers it the same way. Timestamps
are frame numbers in 1/rate, as FFmpeg gives them.

image2 stops at the first missing file, so a sequence with a gap would come out short
without a word: `find` refuses it, naming the first missing frame.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction

import av

from engine.errors import UserError

DEFAULT_RATE = Fraction(24)
_rates: dict[str, Fraction] = {}   # abspath of a pattern → its frame rate, for this process
_found: dict[tuple[str, int], "ImageSequence"] = {}  # (abspath, directory mtime) → what `find` saw


def is_image_pattern(path: str) -> bool:
    """`dir/%06d.png`; a file's name may hold a '%' too (`100%.mp4`, `clip 50%.avi`, an existing
    `100%.png`): an existing file is never a pattern."""
    from engine.encoders import CONTAINERS  # here: encoders → hdr → this module

    name = os.path.basename(path)
    return "%" in name and os.path.splitext(name)[1].lower() not in CONTAINERS and not os.path.isfile(path)


# FFmpeg's image2 numbering (av_get_frame_filename2): `%d`, or `%Nd`, which it zero-pads to N
# digits whatever the leading 0 (Python's `%6d` pads with spaces); `%%` is a literal '%'
_FIELD = re.compile(r"%(\d*)d")


def _parts(pattern: str) -> tuple[str, int, str] | None:
    """(text before, width, text after) of the file name's one number field, '%%' undone;
    None if it has none, or a field image2 does not take (`%-6d`, `%#x`, two numbers)."""
    head, sep, tail = os.path.basename(pattern).replace("%%", "\0").partition("%")
    field = _FIELD.match("%" + tail)
    if not sep or field is None or "%" in tail[field.end() - 1:]:
        return None
    return (head.replace("\0", "%"), int(field.group(1) or 0),
            tail[field.end() - 1:].replace("\0", "%"))


def frame_file(pattern: str, number: int) -> str:
    """The file name image2 gives frame `number` of `pattern` (``%06d.png``, 7: ``000007.png``)."""
    head, width, tail = _parts(pattern)
    return f"{head}{number:0{width}d}{tail}"


def frame_name(pattern: str) -> re.Pattern | None:
    """The file names the image pattern `pattern` gives frames (``%06d.png``: ``000001.png``
    ...), as a regex whose group 1 is the number; None for a pattern image2 cannot number."""
    parts = _parts(pattern)
    if parts is None:
        return None
    head, _, tail = parts
    return re.compile(re.escape(head) + r"(-?\d+)" + re.escape(tail) + "$")


@dataclass(frozen=True)
class ImageSequence:
    pattern: str
    first: int     # the first frame's number
    count: int     # frames, numbered first .. first + count - 1 without a gap


def find(pattern: str) -> ImageSequence:
    """The frames `pattern` names on disk, or a one-line UserError (no directory, no frame,
    a gap, two files for one number)."""
    named = frame_name(pattern)
    if named is None:
        raise UserError(f"image pattern needs one number field, %d or %06d: {pattern}")
    directory = os.path.dirname(os.path.abspath(pattern))
    if not os.path.isdir(directory):
        raise UserError(f"input not found: {pattern} (no directory {directory})")
    # every open of the input asks (each segment, each cut check): list a directory of 100k
    # frames once while its entries stay as they are (adding or removing one changes its mtime)
    key = (os.path.abspath(pattern), os.stat(directory).st_mtime_ns)
    if key in _found:
        return _found[key]
    numbers: dict[int, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            found = named.match(name)
            if found and frame_file(pattern, int(found.group(1))) == name:  # %04d: 0001.png, not 1.png
                if not entry.is_file():  # a FIFO would hang the decoder, unwatched, before the run
                    raise UserError(f"input is not a regular file (a pipe, a device or a directory): "
                                    f"{os.path.join(os.path.dirname(pattern), name)}")
                numbers[int(found.group(1))] = name
    if not numbers:
        raise UserError(f"input not found: no file in {directory} is named by {os.path.basename(pattern)}")
    first, last = min(numbers), max(numbers)
    if len(numbers) != last - first + 1:
        missing = next(n for n in range(first, last + 1) if n not in numbers)
        raise UserError(f"image sequence {pattern} has a gap: {frame_file(pattern, missing)} is "
                        f"missing between {numbers[first]} and {numbers[last]}")
    _found[key] = ImageSequence(pattern, first, len(numbers))
    return _found[key]


def parse_rate(text: str) -> Fraction:
    """`--fps`: 24, 23.976, 24000/1001 (a decimal of a film/NTSC rate is taken as its exact one)."""
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--fps must be a number or a fraction such as 24000/1001, got {text!r}") from None
    if not 0 < rate <= 1000:
        raise UserError(f"--fps must be above 0 and at most 1000, got {text}")
    for exact in (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001)):
        if rate != exact and abs(rate - exact) < Fraction(1, 1000):  # "23.976" means 24000/1001
            return exact
    return rate


def set_rate(pattern: str, rate: Fraction) -> None:
    _rates[os.path.abspath(pattern)] = rate


def rate_of(pattern: str) -> Fraction:
    return _rates.get(os.path.abspath(pattern), DEFAULT_RATE)


def open_options(pattern: str) -> dict:
    """`av.open` keywords for the sequence: image2 at its registered rate from its first number
    (image2 itself only looks for a first number in 0..4)."""
    sequence = find(pattern)
    return {"format": "image2", "options": {"framerate": str(rate_of(pattern)),
                                            "start_number": str(sequence.first)}}


_SCHEME = re.compile(r"[A-Za-z0-9+.-]+:")


def local_name(path: str) -> str:
    """`path` as FFmpeg must be given a local file: a relative name that starts like a URL
    scheme ("clip16:9.mkv", ".out.partial-..:x.mp4") is read as a protocol ("Protocol not
    found") unless it starts with ./"""
    return os.path.join(".", path) if not os.path.isabs(path) and _SCHEME.match(path) else path


def open_media(path: str, **kwargs) -> av.container.InputContainer:
    """`av.open(path)` for reading, an image pattern at its rate: every reader of an input uses it."""
    if is_image_pattern(path):
        kwargs = {**open_options(path), **kwargs}
        # image2 reads '%' anywhere in the path as a field: the directory's are literal
        directory, name = os.path.split(path)
        path = os.path.join(directory.replace("%", "%%"), name)
    return av.open(local_name(path), mode="r", **kwargs)
