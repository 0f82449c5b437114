"""The MLflow model of an EmotionNet export: a pyfunc over the safetensors export, nothing pickled.

An export directory (`best/`, `final/`: model.safetensors + emotionnet.json) is logged as the model's
`export` artifact (with its model.onnx, exported at log time when the onnx extra is installed, for
`--runtime onnx` and for deployments without PyTorch), and the model's code is this package's
`EmotionNetPyfunc`, logged as "models from code" (`mlflow_model_code.py`): neither logging nor loading
serializes a Python object, so loading a `runs:/` or `models:/` URI never unpickles what the registry
holds. `emotionnet-eval`/`-predict` do not even run the logged code: they download the artifact and read
it with the export loader.

Input: uint8 face crops, shape (N, 48, 48) (FER2013 grayscale, as `emotionnet-prep` stores them); the
model applies its own preprocessing (the export's emotionnet.json). Output: a DataFrame of class
probabilities, one row per face, one column per class name.

Serving (`mlflow models serve -m URI --env-manager local`) needs the emotionnet package installed in
the serving environment: the logged code imports it.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from emotionnet.inference.ensemble import Ensemble, load_model, pick_device

EXPORT_ARTIFACT = "export"  # the artifact key (and folder) of the export inside the MLflow model


class EmotionNetPyfunc(mlflow.pyfunc.PythonModel):
    """uint8 faces (N, 48, 48) -> class probabilities (N, K) as a DataFrame with class-name columns."""

    def load_context(self, context) -> None:
        self.ensemble = Ensemble([load_model(context.artifacts[EXPORT_ARTIFACT], pick_device())])

    # np.ndarray: a hint MLflow derives no signature from (the logged signature is explicit).
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        faces = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8))
        probabilities = self.ensemble.predict_proba(faces).numpy()
        return pd.DataFrame(probabilities, columns=list(self.ensemble.class_names))
