"""`RunEvaluator`: a training run's models scored on its dataset splits, across its processes.

Validation of the live model at every epoch's end, and the run's end: the snapshot ensemble on
validation (and test) and `best/` on the test split, each export loaded as `emotionnet-eval` loads it.
Every process scores its share of the batches; each sample is counted once (`gather_for_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import torch
from accelerate import Accelerator
from torch import nn

from data_prep.schema import CLASS_NAMES
from emotionnet.data.preprocessing import Preprocessing
from emotionnet.data.transforms import TTAMode
from emotionnet.evaluation.evaluate import score
from emotionnet.evaluation.result import EvalResult
from emotionnet.inference.ensemble import Ensemble, load_model, tta_probabilities
from emotionnet.run_layout import RunLayout

# (name, split, result): where an evaluation's metrics and report files go (the trainer's `report`).
Report = Callable[[str, str, EvalResult], None]


class RunEvaluator:
    def __init__(
        self,
        accelerator: Accelerator,
        splits: dict[str, datasets.Dataset],
        preprocessing: Preprocessing,
        make_loader: Callable[[datasets.Dataset], torch.utils.data.DataLoader],
        prepared: dict[str, torch.utils.data.DataLoader],
    ):
        self.accelerator = accelerator
        self.splits = splits
        self.preprocessing = preprocessing
        self.make_loader = make_loader
        self.loaders = dict(prepared)  # split -> prepared loader, made on first use

    @torch.no_grad()
    # A compiled model runs its eager code here: eval mode, no grad, the evaluation batch and a short last
    # batch would each be new graphs (and, with CUDA graphs, new recordings) at every validation.
    @torch.compiler.set_stance("force_eager")
    def model(self, model: nn.Module, split: str, tta: TTAMode = "none") -> EvalResult:
        """The live model (left in the mode it was in), uncompiled; inputs in its parameters' dtype
        (DeepSpeed's)."""
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype

        def predict_proba(faces: torch.Tensor) -> torch.Tensor:
            return tta_probabilities(model, self.preprocessing(faces).to(dtype), tta, self.preprocessing)

        try:
            return self._score(predict_proba, split)
        finally:
            model.train(was_training)

    def ensemble(self, ensemble: Ensemble, split: str, tta: TTAMode = "none") -> EvalResult:
        return self._score(lambda faces: ensemble.predict_proba(faces, tta), split)

    def exports(self, layout: RunLayout, tta: TTAMode, report: Report) -> EvalResult | None:
        """The run's end: the snapshot ensemble on validation and test, then `best/` on the test split
        (returned; None when the data has no test split)."""
        device = self.accelerator.device
        snapshots = layout.snapshot_dirs()
        if snapshots:
            ensemble = Ensemble([load_model(str(path), device) for path in snapshots])
            for split in ("validation", "test"):
                if split in self.splits:
                    report(f"snapshots_{split}", split, self.ensemble(ensemble, split, tta))
        if "test" not in self.splits:
            return None
        result = self.ensemble(Ensemble([load_model(str(layout.best), device)]), "test", tta)
        report("test", "test", result)
        return result

    def _score(self, predict_proba: Callable[[torch.Tensor], torch.Tensor], split: str) -> EvalResult:
        if split not in self.loaders:
            self.loaders[split] = self.accelerator.prepare_data_loader(self.make_loader(self.splits[split]))
        loader = self.loaders[split]
        batches = ((b["pixel_values"], b["labels"], b["row_id"]) for b in loader)
        with self.accelerator.autocast():
            return score(
                batches,
                predict_proba,
                len(CLASS_NAMES),
                gather=self.accelerator.gather_for_metrics,
                total=len(loader),
                progress=self.accelerator.is_main_process,
            )
