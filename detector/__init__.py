"""detector: two-stage object detectors (Faster/Mask R-CNN, R-FCN, deformable ConvNets)."""

__version__ = "0.1.0"

from detector import ops  # noqa: E402,F401  # pyright: ignore[reportUnusedImport]  (loads the compiled op library)


def __getattr__(name: str) -> object:  # lazy: `import detector` stays cheap
    if name == "Predictor":
        from detector.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
