"""`emotionnet-predict PATH...`: find the faces in photos and videos and classify each one's expression.

Text and JSON Lines (`--jsonl`) results are printed as they are classified, with a progress bar on stderr;
`--json` prints one object at the end. A video gives a result per sampled frame (`--fps`), then a summary
naming its per-frame table and emotions-over-time plot (in `--out`) and, with `--annotate`, its annotated
copy."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from emotionnet.cli import add_inference_options, report_user_error
from emotionnet.data.transforms import TTA_MODES
from emotionnet.errors import UserError
from emotionnet.evaluation.video_report import VideoReports
from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.inference.ensemble import DEFAULT_MODEL_ENV, Ensemble, pick_device
from emotionnet.inference.predict import FrameResult, Result, VideoResult, predict_stream
from emotionnet.inference.video import DEFAULT_FPS

PROG = "emotionnet-predict"


def shown_path(path: str) -> str:
    """`path` as is, or quoted (Python string syntax) when it holds a newline or another character that
    is not printable, so that a file's name cannot forge lines of the text output."""
    return path if path.isprintable() else repr(path)


def result_lines(result: Result) -> list[str]:
    """The text output's lines for one result: one per face, or one saying why there is none; a video's
    summary names the files written for it."""
    shown = shown_path(result.path)
    if isinstance(result, VideoResult):
        lines = [f"{shown}: error: {result.error}"] if result.error else []
        if result.files:
            lines.append(
                f"{shown}: {result.sampled_frames} frames sampled, {result.frames_with_faces} with a face: "
                + ", ".join(map(shown_path, result.files))
            )
        return lines
    if isinstance(result, FrameResult):
        shown = f"{shown} frame {result.frame} ({result.time_s:.2f} s)"
    if result.error:
        return [f"{shown}: error: {result.error}"]
    if not result.faces:
        return [f"{shown}: no face found"]
    lines = []
    for k, face in enumerate(result.faces, start=1):
        where = "whole image" if not face.detected else "x={} y={} w={} h={}".format(*face.box)
        probs = " ".join(f"{name} {p:.3f}" for name, p in face.probabilities.items())
        lines.append(f"{shown}: face {k} ({where}): {face.label} | {probs}")
    return lines


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def emit(text: str) -> None:
    """One piece of output on stdout now (not when the buffer fills), around the progress bar on stderr."""
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog=PROG,
        description="Find faces in photos and videos (OpenCV Haar cascade) and classify their expression. "
        "48x48 images are taken as FER2013 face crops and classified whole.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image or video files, or folders of them (searched recursively)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="MODEL",
        help="model export directory or MLflow model URI; repeat for an ensemble "
        f"(default: ${DEFAULT_MODEL_ENV} or the bundled model)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object at the end")
    output.add_argument(
        "--jsonl", action="store_true", help="print one JSON object per image, as each is classified"
    )
    parser.add_argument(
        "--annotate", metavar="OUT_DIR", type=Path, help="write images and videos with boxes and labels"
    )
    parser.add_argument(
        "--fps",
        type=positive,
        default=DEFAULT_FPS,
        help=f"video frames classified per second (default {DEFAULT_FPS:g})",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path(),
        help="where each video's <name>_frames.csv and <name>_emotions.png go (default: the current folder)",
    )
    parser.add_argument("--no-detect", action="store_true", help="classify each whole image as one face")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation")
    add_inference_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images: list[dict] = []  # --json: printed at the end, as one object
    failed = False
    try:
        ensemble = Ensemble.load(args.model, pick_device(args.device), runtime=args.runtime)
        results = predict_stream(
            args.paths, ensemble, not args.no_detect, args.tta, args.annotate, not args.no_progress, args.fps
        )
        with VideoReports(args.out, ensemble.class_names) as reports:
            for result in results:
                reports.add(result)
                failed |= result.error is not None
                if args.json:
                    images.append(asdict(result))
                elif args.jsonl:
                    emit(json.dumps(asdict(result)))
                elif lines := result_lines(result):
                    emit("\n".join(lines))
    except UserError as err:
        return report_user_error(PROG, err)
    if args.json:
        print(json.dumps({"models": ensemble.sources, "images": images}))
    return ExitCode.BAD_INPUT if failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
