"""`emotionnet-summary`: EmotionNet's per-stage parameters, output shapes and FLOPs for a configuration."""

from __future__ import annotations

import argparse
import sys

from emotionnet.config.loader import ConfigError
from emotionnet.config.recipes import load_model_config
from emotionnet.exit_codes import ExitCode, exit_codes_help
from emotionnet.model import summary
from emotionnet.model.backbone import PretrainedWeightsError
from emotionnet.model.summary import summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emotionnet-summary",
        description=summary.__doc__,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        help="a recipe name or YAML file: a training recipe, or a flat model YAML (configs/model/)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="[model.]key=value overrides, e.g. depth=4 pretrained=null"
    )
    args = parser.parse_args(argv)
    try:
        print(summarize(load_model_config(args.config, args.overrides)))
    except (ConfigError, PretrainedWeightsError) as exc:
        print(f"emotionnet-summary: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
