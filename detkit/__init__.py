"""detkit: a plugin-based object detection toolkit on PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__", "Predictor"]


def __getattr__(name):
    # Imported lazily so that `import detkit` (and `detkit --help`) stays fast and imports no torch.
    if name == "Predictor":
        from detkit.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detkit' has no attribute {name!r}")
