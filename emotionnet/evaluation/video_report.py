"""A video's report files from `emotionnet-predict`: the per-frame table and the emotions-over-time plot.

Fed the prediction stream in order (`VideoReports.add`), it writes, per video, OUT_DIR/<name>_frames.csv
as the frames come (a row per face of each sampled frame; a row without a face for a frame that has none)
and, once the video's summary arrives, OUT_DIR/<name>_emotions.png. Both are written atomically; the plot
is drawn from what the table holds (the largest face of each frame: 7 numbers a frame, whatever the
video's length).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from data_prep.files import atomic_file
from emotionnet.evaluation.plots import emotions_over_time, save_figure
from emotionnet.inference.predict import FrameResult, PredictInputError, Result, VideoResult, unique_path

FRAME_COLUMNS = ("frame", "time_s", "face", "x", "y", "w", "h", "label")


class VideoReports:
    """Use as a context manager: a table left half-written by an error is removed, never renamed into place."""

    def __init__(self, out_dir: Path, class_names: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.class_names = list(class_names)
        self.taken: set[Path] = set()
        self._stack = ExitStack()
        self._table: csv.writer | None = None
        self._csv_path: Path | None = None
        self._seconds: list[float] = []
        self._largest: list[list[float]] = []  # the largest face's probabilities per frame (NaN: no face)

    def __enter__(self) -> VideoReports:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.__exit__(*exc_info)

    def add(self, result: Result) -> None:
        """A frame's rows go into its video's table; a video's summary closes the table, draws the plot and
        lists both in the summary's `files`."""
        try:
            if isinstance(result, FrameResult):
                self._add_frame(result)
            elif isinstance(result, VideoResult) and self._table is not None:
                self._finish(result)
        except OSError as err:
            raise PredictInputError(
                f"cannot write {err.filename or self.out_dir}: {err.strerror or err}"
            ) from err

    def _add_frame(self, result: FrameResult) -> None:
        if self._table is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._csv_path = unique_path(self.out_dir, f"{Path(result.path).stem}_frames.csv", self.taken)
            tmp = self._stack.enter_context(atomic_file(self._csv_path))
            self._table = csv.writer(self._stack.enter_context(open(tmp, "w", newline="")))
            self._table.writerow([*FRAME_COLUMNS, *self.class_names])
        when = [result.frame, f"{result.time_s:.3f}"]
        for k, face in enumerate(result.faces, start=1):
            probs = [f"{face.probabilities[name]:.6f}" for name in self.class_names]
            self._table.writerow([*when, k, *face.box, face.label, *probs])
        if not result.faces:
            self._table.writerow(when + [""] * (len(FRAME_COLUMNS) - 2 + len(self.class_names)))
        self._seconds.append(result.time_s)
        first = result.faces[0].probabilities if result.faces else {}
        self._largest.append([first.get(name, math.nan) for name in self.class_names])

    def _finish(self, summary: VideoResult) -> None:
        self._stack.close()  # the table is complete: renamed into place
        plot = unique_path(self.out_dir, f"{Path(summary.path).stem}_emotions.png", self.taken)
        name = Path(summary.path).name
        save_figure(
            emotions_over_time(
                self._seconds,
                np.array(self._largest),
                self.class_names,
                f"{name}: emotions over time (largest face)",
            ),
            plot,
        )
        summary.files[:0] = [str(self._csv_path), str(plot)]
        self._table, self._csv_path, self._seconds, self._largest = None, None, [], []
