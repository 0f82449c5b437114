"""Bundle a run's best model as the project's default model (models/emotionnet-fer2013/).

    python scripts/bundle_model.py outputs/fer2013_cpu/<run> [--out models/emotionnet-fer2013]

Writes fp16 safetensors + emotionnet.json (model config, preprocessing, class names) and a MODEL_CARD.md
with how the run was trained and its validation (PublicTest) figures from the run's own records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from emotionnet.export import load_export, save_export

REPO_ROOT = Path(__file__).resolve().parents[1]


def model_card(run_dir: Path, metadata: dict, config: dict, wall_minutes: float) -> str:
    per_class = {k.split("accuracy_")[1]: v for k, v in metadata.items() if "/accuracy_" in k}
    rows = "\n".join(f"| {name} | {acc:.3f} |" for name, acc in per_class.items())
    return f"""# EmotionNet, FER2013 (CPU-budget model)

Facial emotion recognition on 48x48 grayscale faces; classes: angry, disgust, fear, happy, sad,
surprise, neutral. Weights: `model.safetensors` (fp16); `emotionnet.json` holds the model config,
the preprocessing (resize to {config["model"]["input_size"]} px, scale to [0, 1], normalize) and the class names.

## Training
- Run `{run_dir.name}`, config `{config.get("_source", "configs/train/fer2013_cpu.yaml")}` (resolved config below).
- Data: FER2013 Training split (28,709 faces), trained from scratch (no ImageNet weights).
- Selected on PublicTest (validation) accuracy; PrivateTest was never used.
- Training wall time: {wall_minutes:.0f} minutes on a shared 2-core CPU.

## PublicTest (validation, 3,589 faces), best checkpoint (step {metadata.get("step")})
- accuracy {metadata["validation/accuracy"]:.4f}, macro-F1 {metadata["validation/macro_f1"]:.4f}

| class | accuracy (recall) |
| --- | --- |
{rows}

## Resolved training config
```yaml
{yaml.safe_dump(config, sort_keys=False)}```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "emotionnet-fer2013")
    args = parser.parse_args(argv)
    model, description = load_export(args.run_dir / "best")
    save_export(args.out, model.state_dict(), description.model, description.preprocessing,
                description.metadata, dtype=torch.float16)  # fmt: skip
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    wall_minutes = (records[-1]["time"] - records[0]["time"]) / 60 if records else 0.0
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    (args.out / "MODEL_CARD.md").write_text(
        model_card(args.run_dir, description.metadata, config, wall_minutes)
    )
    print(f"bundled {args.run_dir / 'best'} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
