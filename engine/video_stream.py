"""Which stream of an input is its video: the first video stream that is not cover art.

FFmpeg shows an MP4's cover (`covr`) and a Matroska cover attachment as video streams with
the attached-picture disposition, and in the order it meets them: a file whose metadata comes
before its tracks has the cover first. Taking `streams.video[0]` there processed a single
still as the whole video, and an audio file with a cover as a one-frame video.
"""

from __future__ import annotations

import av


def is_cover_art(stream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def main_video(container) -> av.video.stream.VideoStream | None:
    """The input's video stream, or None if it has none (cover art alone is none)."""
    return next((s for s in container.streams.video if not is_cover_art(s)), None)
