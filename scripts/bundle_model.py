"""Bundle a run's best model as the project's default model (models/emotionnet-fer2013/).

    python scripts/bundle_model.py outputs/fer2013_cpu/<run> --data dataset/fer2013 \
        --command "emotionnet-launch ..." --hardware "a 2-core CPU"

Writes fp16 safetensors + emotionnet.json (model config, preprocessing, class names), a MODEL_CARD.md
(opening with the YAML metadata model hubs read; how to load the model; how the run was trained:
command, hardware, resolved config, wall time; the bundled fp16 weights' own PublicTest (validation
split) figures without TTA, with flip and with ten-crop TTA, per class) and the ten-crop confusion
matrix it shows. The bundle is built in a sibling temp dir and moved into place only
when complete, so a failed evaluation leaves the previous bundle as it was.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from data_prep.files import replace_directory
from emotionnet.cli import eval as eval_cli
from emotionnet.inference.export import load_export, save_export

REPO_ROOT = Path(__file__).resolve().parents[1]
TTA_MODES = ("none", "flip", "tencrop")
CONFUSION_PNG = "confusion_publictest_tencrop.png"
LICENSE = "mit"  # the project's (setup.cfg)


def evaluate_bundle(bundle: Path, data: Path, confusion_png: Path) -> dict[str, dict]:
    """emotionnet-eval's summary of the bundle on the validation split, per TTA mode."""
    summaries = {}
    for tta in TTA_MODES:
        args = [str(bundle), str(data), "--split", "validation", "--tta", tta, "--no-progress",
                "--confusion-png", str(confusion_png)]  # fmt: skip
        summaries[tta], _, _ = eval_cli.run(eval_cli.build_parser().parse_args(args))
    return summaries  # the PNG is left from the last mode: ten-crop


def front_matter(name: str, figures: dict[str, dict]) -> str:
    """The YAML block model hubs read at the top of a card: library, licence, task, data set, and the
    PublicTest figures per TTA mode (`figures`: emotionnet-eval summaries by TTA mode)."""
    metrics = []
    for tta, summary in figures.items():
        metrics += [
            {"type": "accuracy", "value": round(summary["accuracy"], 4), "name": f"accuracy, {tta} TTA",
             "args": {"tta": tta}},
            {"type": "f1", "value": round(summary["macro_f1"], 4), "name": f"macro-F1, {tta} TTA",
             "args": {"average": "macro", "tta": tta}},
        ]  # fmt: skip
    metadata = {
        "library_name": "emotionnet",
        "license": LICENSE,
        "pipeline_tag": "image-classification",
        "tags": ["facial-expression-recognition", "emotion-recognition", "fer2013", "pytorch", "safetensors"],
        "datasets": ["fer2013"],
        "metrics": ["accuracy", "f1"],
        "model-index": [{
            "name": name,
            "results": [{
                "task": {"type": "image-classification", "name": "Facial expression recognition"},
                "dataset": {"type": "fer2013", "name": "FER2013", "split": "PublicTest"},
                "metrics": metrics,
            }],
        }],
    }  # fmt: skip
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n"


USAGE = """## Use
```python
from emotionnet import EmotionNet
from emotionnet.inference.export import read_description

model = EmotionNet.from_pretrained("{path}")  # eval mode, float32
description = read_description("{path}")  # its preprocessing and class names
logits = model(description.preprocessing(faces))  # faces: uint8 (N, 48, 48) grayscale crops
```
From the command line: `emotionnet-predict photo.jpg` finds and classifies the faces in a photo;
`emotionnet-export {path} --format onnx` writes `model.onnx` for ONNX Runtime.
"""


def model_card(
    run_dir: Path, config: dict, command: str, hardware: str, wall_minutes: float, figures: dict, bundle: str
) -> str:
    by_tta = "\n".join(f"| {tta} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} |" for tta, s in figures.items())
    per_class = "\n".join(
        f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
        for name, c in figures["tencrop"]["per_class"].items()
    )
    card = f"""# EmotionNet, FER2013: trained from scratch on {hardware}

Facial emotion recognition on 48x48 grayscale faces; classes: angry, disgust, fear, happy, sad,
surprise, neutral. Weights: `model.safetensors` (fp16); `emotionnet.json` holds the model config,
the preprocessing (resize to {config["model"]["input_size"]} px, scale to [0, 1], normalize) and the class names.

{USAGE.format(path=f"models/{bundle}")}
## Training
- Run `{run_dir.name}`: `{command}`
- Data: FER2013 Training split (28,709 faces), trained from scratch (no ImageNet weights).
- Selected on PublicTest (validation) accuracy; PrivateTest was never used.
- Training wall time: {wall_minutes:.0f} minutes on {hardware} (first to last logged step, validation included).

## PublicTest (3,589 faces), these fp16 weights
| test-time augmentation | accuracy | macro-F1 |
| --- | --- | --- |
{by_tta}

Per class, ten-crop TTA:

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{per_class}

![PublicTest confusion matrix, ten-crop TTA]({CONFUSION_PNG})

## Resolved training config
```yaml
{yaml.safe_dump(config, sort_keys=False)}```
"""
    return front_matter(bundle, figures) + card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="prepared FER2013 (validation = PublicTest)")
    parser.add_argument("--command", required=True, help="the training command, for the model card")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "emotionnet-fer2013")
    parser.add_argument("--hardware", default="a 2-core CPU", help="what it trained on, for the model card")
    args = parser.parse_args(argv)
    model, description = load_export(args.run_dir / "best")
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    wall_minutes = (records[-1]["time"] - records[0]["time"]) / 60 if records else 0.0
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.bundle.", dir=args.out.parent))
    try:
        staged = save_export(staging / "model", model.state_dict(), description.model,
                             description.preprocessing, description.metadata, dtype=torch.float16)  # fmt: skip
        figures = evaluate_bundle(staged, args.data, staged / CONFUSION_PNG)
        card = model_card(
            args.run_dir, config, args.command, args.hardware, wall_minutes, figures, args.out.name
        )
        (staged / "MODEL_CARD.md").write_text(card)
        replace_directory(staged, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"bundled {args.run_dir / 'best'} -> {args.out}")
    for tta, summary in figures.items():
        print(f"PublicTest, {tta} TTA: accuracy {summary['accuracy']:.4f} macro-F1 {summary['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
