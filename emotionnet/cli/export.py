"""`emotionnet-export MODEL_DIR --format onnx`: a model export as an ONNX file for ONNX Runtime.

emotionnet-export outputs/fer2013_cpu/<run>/best --format onnx
emotionnet-eval outputs/fer2013_cpu/<run>/best dataset/fer2013 --runtime onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emotionnet.cli import report_user_error
from emotionnet.errors import UserError
from emotionnet.exit_codes import ExitCode, command_parser
from emotionnet.inference.onnx_export import ONNX_NAME, OPSET, PARITY_FACES, PARITY_TOLERANCE, export_onnx

PROG = "emotionnet-export"
FORMATS = ("onnx",)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        prog=PROG,
        description=f"Export an EmotionNet model export as ONNX (opset {OPSET}, dynamic batch; "
        "preprocessing and class names in the file's metadata), checked with ONNX Runtime against "
        f"PyTorch on {PARITY_FACES} synthetic faces (largest logit difference <= {PARITY_TOLERANCE:.0e}). "
        "Needs the onnx extra: pip install 'emotionnet[onnx]'.",
        notes=f"emotionnet-eval and emotionnet-predict run MODEL_DIR/{ONNX_NAME} with --runtime onnx.",
    )
    parser.add_argument(
        "model_dir", metavar="MODEL_DIR", type=Path, help="a model export (a run's best/ or final/)"
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="the file format to write")
    parser.add_argument("--out", type=Path, help=f"the file to write (default MODEL_DIR/{ONNX_NAME})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path, difference = export_onnx(args.model_dir, args.out)
    except UserError as err:
        return report_user_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(
        f"wrote {path} (ONNX opset {OPSET}, dynamic batch); ONNX Runtime vs PyTorch on {PARITY_FACES} "
        f"synthetic faces: largest logit difference {difference:.1e}"
    )
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
