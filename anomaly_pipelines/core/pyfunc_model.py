"""The models-from-code entry point of the pyfunc flavour (``core.serving``).

MLflow copies this file into every logged model and runs it when the model is loaded, so the
logged model holds code by reference to the installed package, not a cloudpickled object.
"""

from mlflow.models import set_model

from anomaly_pipelines.core.serving import DetectorsModel

set_model(DetectorsModel())
