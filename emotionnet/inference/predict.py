"""`emotionnet-predict PATH...`: find the faces in photos and videos and classify each one's expression.

Faces are found with OpenCV's bundled Haar cascade (no download), cropped with a small margin, turned
into 48x48 grayscale like FER2013 and classified. A 48x48 image is taken to be a FER crop already and
is classified whole, as is every image with `--no-detect`.

Memory stays bounded whatever the files claim: an image's size is read from its header (Pillow, no
pixels decoded) and one over MAX_IMAGE_PIXELS is refused with a per-file error before decoding (a PNG
of a few hundred KB can hold 20000x20000 pixels); faces are searched in a copy downscaled to at most
DETECT_MAX_PIXELS (the cascade's memory and time grow with the pixels searched) and cropped from the
full image; images are decoded one at a time and not kept.

Results stream: `predict_stream` yields each image's result in input order as soon as its faces are
classified, in batches of up to FORWARD_BATCH faces that wait at most STREAM_WAIT_S to fill, so the first
results of a 10,000-image job come out within seconds, not at the end. Videos (video.py) are sampled a few
frames a second; each sampled frame is classified like a photo.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data_prep.files import write_atomic
from data_prep.schema import IMAGE_SIZE
from emotionnet.errors import UserError
from emotionnet.inference.ensemble import FORWARD_BATCH, Ensemble
from emotionnet.inference.video import (
    DEFAULT_FPS,
    VIDEO_SUFFIXES,
    VideoReadError,
    is_video,
    sampled_frames,
    write_annotated_video,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
CASCADE_NAME = "haarcascade_frontalface_default.xml"
FACE_MARGIN = 0.1  # of the detected box's side, added on each side: Haar boxes cut the chin and brow
MIN_FACE_PX = 30  # smaller detections are mostly false positives, and too blurry to classify anyway
MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused (decoded as BGR: 150 MB at the limit)
NOT_AN_IMAGE = "not an image file that can be read"
DETECT_MAX_PIXELS = 4_000_000  # faces are searched in a copy downscaled to this (a 2449x1633 photo)
STREAM_WAIT_S = 1.0  # the longest a result waits for its batch to fill before it is classified


class PredictInputError(UserError):
    """Bad paths, an annotation folder that cannot be written, or a missing face detector."""


class ImageReadError(UserError):
    """One image cannot be used (reported for that file; the others are still classified)."""


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels
    detected: bool  # False: the whole image was taken as the face (48x48 crop or --no-detect)
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageResult:
    path: str
    faces: list[Face] = field(default_factory=list)
    error: str | None = None  # the image could not be read


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside the opencv-python wheels (cv2.data)."""

    def __init__(self) -> None:
        data_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(data_dir or "") / CASCADE_NAME
        if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
            raise PredictInputError(
                f"OpenCV {cv2.__version__} has no bundled Haar face cascade (OpenCV 5 dropped them): "
                "install opencv-python-headless<5, or pass --no-detect with images that are face crops"
            )
        self.cascade = cv2.CascadeClassifier(str(path))

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h), largest first."""
        # Equalizing first finds faces in dim or low-contrast photos that the raw image hides.
        boxes = self.cascade.detectMultiScale(
            cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE_PX, MIN_FACE_PX)
        )
        return sorted((tuple(int(v) for v in box) for box in boxes), key=lambda b: -b[2] * b[3])


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = FACE_MARGIN) -> np.ndarray:
    """The box grown by `margin` on each side (clipped to the image), as a 48x48 uint8 face."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    top, left = max(0, y - dy), max(0, x - dx)
    crop = gray[top : min(gray.shape[0], y + h + dy), left : min(gray.shape[1], x + w + dx)]
    return cv2.resize(crop, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def collect_inputs(paths: Sequence[str]) -> list[Path]:
    """The given files, and the image and video files under the given folders (sorted, recursive)."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            inputs = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            )
            if not inputs:
                raise PredictInputError(
                    f"{text}: the folder holds no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
                )
            found += inputs
        elif path.is_file():
            found.append(path)
        else:
            raise PredictInputError(f"{text}: no such file or folder")
    return found


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; Pillow decodes no pixels to answer."""
    # Pillow's own decompression-bomb check would refuse a huge image without saying how big it is;
    # MAX_IMAGE_PIXELS is checked by the caller, with the size in the message.
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:  # what Pillow raises for files it cannot parse
        raise ImageReadError(NOT_AN_IMAGE) from err
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def read_image(path: Path) -> np.ndarray:
    """The image as 8-bit BGR; ImageReadError when it is over MAX_IMAGE_PIXELS or cannot be decoded."""
    width, height = image_size(path)
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"{width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP; downscale the image first"
        )
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"cannot read the file ({err.strerror or err})") from err
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageReadError(NOT_AN_IMAGE)
    return bgr


def find_faces(gray: np.ndarray, detector: FaceDetector | None) -> tuple[list[Face], list[np.ndarray]]:
    """The faces of one grayscale image and their 48x48 crops; without a detector the whole image is the
    face. Faces are searched in a copy of at most DETECT_MAX_PIXELS; boxes are in the image's pixels."""
    height, width = gray.shape
    if detector is None or (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        whole = cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        return [Face((0, 0, width, height), detected=False)], [whole]
    scale = min(1.0, math.sqrt(DETECT_MAX_PIXELS / (height * width)))
    searched = (
        gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    )
    boxes = [_clip(tuple(round(v / scale) for v in box), width, height) for box in detector.detect(searched)]
    return [Face(box, detected=True) for box in boxes], [crop_face(gray, box) for box in boxes]


def _clip(box: tuple[int, ...], width: int, height: int) -> tuple[int, int, int, int]:
    """A box scaled back to the image, kept inside it (rounding can push it a pixel out)."""
    x, y, w, h = box
    return x, y, min(w, width - x), min(h, height - y)


class PendingBatch:
    """Results whose faces are found but not yet classified, in input order. Their crops are classified
    together once FORWARD_BATCH faces are pending (full batches for throughput), or sooner when the first
    has waited STREAM_WAIT_S (so that results of slow inputs still come out as they go)."""

    def __init__(self) -> None:
        self.results: list[ImageResult] = []
        self.crops: list[np.ndarray] = []
        self.since = 0.0  # when the first pending result was added

    def add(self, result: ImageResult, crops: list[np.ndarray]) -> None:
        if not self.results:
            self.since = time.monotonic()
        self.results.append(result)
        self.crops += crops

    def ready(self) -> bool:
        waited = time.monotonic() - self.since
        return len(self.crops) >= FORWARD_BATCH or (bool(self.results) and waited >= STREAM_WAIT_S)

    def classify(self, ensemble: Ensemble, tta: str) -> list[ImageResult]:
        """The pending results with each face's probabilities and label filled in; empties the batch."""
        results, crops = self.results, self.crops
        self.results, self.crops = [], []
        if not crops:
            return results
        faces = torch.from_numpy(np.stack(crops))
        probabilities = iter(ensemble.predict_proba(faces, tta).tolist())
        names = ensemble.class_names
        for result in results:
            for face in result.faces:
                face.probabilities = dict(zip(names, next(probabilities), strict=True))
                face.label = max(face.probabilities, key=face.probabilities.get)
        return results


def annotate(bgr: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of the image with each face's box and top label drawn; small images are enlarged first."""
    scale = max(1.0, 256 / max(bgr.shape[:2]))  # labels on a 48 px crop would be unreadable
    out = (
        cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        if scale > 1
        else bgr.copy()
    )
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for face in faces:
        x, y, w, h = (round(v * scale) for v in face.box)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
        text = f"{face.label} {face.probabilities[face.label]:.2f}"
        font_scale = max(0.4, w / 300)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y - base - 2 if y - th - base - 2 >= 0 else y + th + 2  # above the box when it fits
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(out, text, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness)
    return out


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"OpenCV cannot encode {path.suffix} images")
    write_atomic(path, encoded.tobytes())


def unique_path(out_dir: Path, name: str, taken: set[Path]) -> Path:
    """OUT_DIR/name, numbered (`<stem>_2<suffix>`, ...) when an earlier input already took it."""
    path, n = out_dir / name, 1
    while path in taken:
        n += 1
        path = out_dir / f"{Path(name).stem}_{n}{Path(name).suffix}"
    taken.add(path)
    return path


@dataclass
class FrameResult(ImageResult):
    """The faces of one sampled frame of a video."""

    frame: int = 0  # index in the video, from 0
    time_s: float = 0.0  # seconds from the video's start


@dataclass
class VideoResult:
    """What a video came to, after its frames' results: how many frames were sampled, the files written for
    it, or why it could not be read (to its end)."""

    path: str
    sampled_frames: int = 0
    frames_with_faces: int = 0
    files: list[str] = field(default_factory=list)  # per-frame table, plot, annotated video
    error: str | None = None


Result = ImageResult | FrameResult | VideoResult


def predict_stream(
    paths: Sequence[str],
    ensemble: Ensemble,
    detect: bool = True,
    tta: str = "none",
    annotate_dir: Path | None = None,
    progress: bool = True,
    fps: float = DEFAULT_FPS,
) -> Iterator[Result]:
    """Detect, crop and classify the faces in every image and video (files, or folders of them), yielding
    results in input order as soon as their batch is classified (see PendingBatch): an ImageResult per
    image; a FrameResult per sampled frame of a video (`fps` a second), then its VideoResult. Progress bars
    over the inputs, and over each video's frames, on stderr."""
    files = collect_inputs(paths)
    predictor = Predictor(ensemble, FaceDetector() if detect else None, tta, annotate_dir, progress)
    bar = tqdm(files, desc="predict", unit="file", disable=not progress or len(files) < 2, file=sys.stderr)
    with bar:
        for path in bar:
            yield from predictor.video(path, fps) if is_video(path) else predictor.image(path)
        yield from predictor.flush()


class Predictor:
    """Finds faces input by input, classifies them in batches (PendingBatch) and annotates the results."""

    def __init__(
        self,
        ensemble: Ensemble,
        detector: FaceDetector | None,
        tta: str,
        annotate_dir: Path | None,
        progress: bool,
    ) -> None:
        self.ensemble, self.detector, self.tta, self.progress = ensemble, detector, tta, progress
        self.annotator = Annotator(annotate_dir) if annotate_dir is not None else None
        self.pending = PendingBatch()

    def image(self, path: Path) -> Iterator[ImageResult]:
        try:
            gray = cv2.cvtColor(read_image(path), cv2.COLOR_BGR2GRAY)
        except ImageReadError as err:
            result, crops = ImageResult(str(path), error=str(err)), []
        else:
            faces, crops = find_faces(gray, self.detector)
            result = ImageResult(str(path), faces)
        self.pending.add(result, crops)
        if self.pending.ready():
            yield from self.flush()

    def video(self, path: Path, fps: float) -> Iterator[FrameResult | VideoResult]:
        summary = VideoResult(str(path))
        bar = tqdm(desc=path.name, unit="frame", leave=False, disable=not self.progress, file=sys.stderr)
        try:
            with bar:
                for index, seconds, bgr, info in sampled_frames(path, fps, MAX_IMAGE_PIXELS):
                    bar.total = info.frames or None
                    bar.update(index + 1 - bar.n)
                    faces, crops = find_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), self.detector)
                    self.pending.add(FrameResult(str(path), faces, frame=index, time_s=seconds), crops)
                    summary.sampled_frames += 1
                    summary.frames_with_faces += bool(faces)
                    if self.pending.ready():
                        yield from self.flush()
                bar.update((bar.total or bar.n) - bar.n)  # the frames after the last one sampled
        except VideoReadError as err:
            summary.error = str(err)
        yield from self.flush()  # the video's frames are all classified before its summary comes
        if self.annotator is not None:
            self.annotator.finish_video(summary)
        yield summary

    def flush(self) -> list[ImageResult]:
        results = self.pending.classify(self.ensemble, self.tta)
        if self.annotator is not None:
            for result in results:
                self.annotator.add(result)
        return results


class Annotator:
    """Writes each readable image with its faces boxed and labelled as OUT_DIR/<name>_annotated.png, and
    each video that could be read to its end as OUT_DIR/<name>_annotated.mp4."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.taken: set[Path] = set()
        self.video_faces: dict[int, list[Face]] = {}  # the current video's sampled frames
        self._guard(lambda: out_dir.mkdir(parents=True, exist_ok=True))  # fails before any work is done

    def add(self, result: ImageResult) -> None:
        if isinstance(result, FrameResult):
            self.video_faces[result.frame] = result.faces
        elif result.error is None:
            path = Path(result.path)  # decoded again: images are not kept in memory
            out = unique_path(self.out_dir, f"{path.stem}_annotated.png", self.taken)
            self._guard(lambda: write_image_atomic(out, annotate(read_image(path), result.faces)))

    def finish_video(self, summary: VideoResult) -> None:
        faces, self.video_faces = self.video_faces, {}
        if summary.error is not None:
            return
        source = Path(summary.path)  # read again, frame by frame: frames are not kept in memory
        out = unique_path(self.out_dir, f"{source.stem}_annotated.mp4", self.taken)
        self._guard(lambda: write_annotated_video(source, out, faces, annotate, MAX_IMAGE_PIXELS))
        summary.files.append(str(out))

    def _guard(self, write) -> None:
        try:
            write()
        except OSError as err:
            raise PredictInputError(
                f"cannot write {err.filename or self.out_dir}: {err.strerror or err}"
            ) from err
