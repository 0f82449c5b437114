"""The code MLflow logs with an EmotionNet model ("models from code", see pyfunc_model.py).

MLflow copies this file into the model and runs it to load the model; it is not imported otherwise.
"""

from mlflow.models import set_model

from emotionnet.tracking.pyfunc_model import EmotionNetPyfunc

set_model(EmotionNetPyfunc())
