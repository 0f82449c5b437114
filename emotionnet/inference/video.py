"""Videos for `emotionnet-predict`: frames sampled a few times a second, and the annotated copy.

Memory stays bounded whatever the length: frames are decoded one at a time by cv2.VideoCapture and not
kept (only the 48x48 crops of faces waiting for their batch are). A video that cannot be opened, whose
frames are over MAX_IMAGE_PIXELS, or that ends well before the frame count its header gives (a truncated
or corrupted file) raises VideoReadError, a per-file error: the other inputs are still classified.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_prep.files import atomic_file
from emotionnet.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
DEFAULT_FPS = 2.0  # frames classified per second of video: expressions change over about half a second
ANNOTATED_FOURCC = "mp4v"  # an MPEG-4 encoder every opencv-python wheel has (H.264 is not bundled)

# FFmpeg's own messages about a broken file ("moov atom not found") would precede our one-sentence error;
# OpenCV reads this when it opens its first video. Set it yourself to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


class VideoReadError(UserError):
    """One video cannot be used, or not to its end (reported for that file; the others are still classified)."""


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    fps: float  # the video's own frame rate
    frames: int  # the frame count its header gives (an estimate for some containers; 0 when unknown)
    width: int
    height: int


def open_video(path: Path, max_pixels: int) -> tuple[cv2.VideoCapture, VideoInfo]:
    """An opened capture and what its header says; VideoReadError when it cannot be used."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoReadError("not a video file that can be read (unknown format, truncated or corrupted)")
    info = VideoInfo(
        fps=capture.get(cv2.CAP_PROP_FPS),
        frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    if not info.fps > 0:  # also NaN
        capture.release()
        raise VideoReadError("the video has no frame rate, so its frames have no time")
    if info.width * info.height > max_pixels:
        capture.release()
        raise VideoReadError(
            f"{info.width}x{info.height} frames are over the limit of {max_pixels / 1e6:.0f} MP; "
            "downscale the video first"
        )
    return capture, info


def frames(path: Path, max_pixels: int) -> Iterator[tuple[int, VideoInfo, cv2.VideoCapture]]:
    """(frame index, header, capture positioned just after grabbing that frame) for each frame, in order;
    `capture.retrieve()` decodes the grabbed frame. VideoReadError at the end if the video stopped early."""
    capture, info = open_video(path, max_pixels)
    try:
        index = 0
        while capture.grab():
            yield index, info, capture
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise VideoReadError("the video holds no frame that can be read (truncated or corrupted)")
    # Header counts of some containers are estimates from the duration: allow a little slack.
    if info.frames and index < info.frames - max(2, info.frames // 50):
        raise VideoReadError(
            f"the video ends after {index} of the {info.frames} frames its header gives (truncated or corrupted)"
        )


def sampled_frames(
    path: Path, fps: float, max_pixels: int
) -> Iterator[tuple[int, float, np.ndarray, VideoInfo]]:
    """(frame index, time in seconds, BGR frame, header) of about `fps` frames per second of the video
    (every frame when the video has fewer); frames in between are grabbed but not decoded into images."""
    next_time = 0.0
    for index, info, capture in frames(path, max_pixels):
        seconds = index / info.fps
        if seconds + 0.5 / info.fps < next_time:  # the frame nearest each sampling time is taken
            continue
        ok, bgr = capture.retrieve()
        if not ok:
            raise VideoReadError(f"frame {index} cannot be decoded (corrupted video)")
        next_time += 1 / fps
        yield index, seconds, bgr, info


def write_annotated_video(
    source: Path,
    out: Path,
    faces_at: Mapping[int, list],
    draw: Callable[[np.ndarray, list], np.ndarray],
    max_pixels: int,
) -> int:
    """`source` again, every frame with `draw(frame, faces)` of the latest sampled frame's faces (so boxes
    stay on screen between samples), written to `out` atomically. Returns the frames written."""
    written = 0
    with atomic_file(out) as tmp:
        # OpenCV picks the container from the name's suffix, which the temp file lacks.
        video_tmp = tmp.with_name(tmp.name + out.suffix)
        writer = None
        try:
            faces: list = []
            for index, info, capture in frames(source, max_pixels):
                ok, bgr = capture.retrieve()
                if not ok:
                    break
                faces = faces_at.get(index, faces)
                image = draw(bgr, faces)  # also without faces: `draw` may resize, and every frame must match
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer = cv2.VideoWriter(
                        str(video_tmp), cv2.VideoWriter_fourcc(*ANNOTATED_FOURCC), info.fps, size
                    )
                    if not writer.isOpened():
                        raise OSError(f"OpenCV cannot write {out.suffix} videos with {ANNOTATED_FOURCC}")
                writer.write(image)
                written += 1
            if writer is not None:
                writer.release()
                os.replace(video_tmp, tmp)
        finally:
            if writer is not None:
                writer.release()
            video_tmp.unlink(missing_ok=True)
    return written
