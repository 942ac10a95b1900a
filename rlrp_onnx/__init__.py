"""rlrp-onnx: compile ONNX image classifiers into R-LRP explainer models run by ONNX Runtime."""

from .compiler import compile_model
from .errors import RlrpError
from .explainer import Explainer, Explanations
from .loading import load_model, save_model
from .methods import Options

__all__ = ["compile_model", "Explainer", "Explanations", "Options", "RlrpError", "load_model", "save_model"]
__version__ = "0.1.0"
