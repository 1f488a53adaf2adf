"""Running a trained detector: :class:`~detkit.inference.predictor.Predictor` (Python),
:mod:`~detkit.inference.run` (``detkit infer``), :mod:`~detkit.inference.sources` (what it reads) and
:class:`~detkit.inference.results.Result` (what it returns). Importing this package imports no torch."""

# Detections scoring below this are not returned by Predictor nor drawn/saved by `detkit infer`
# (ultralytics' predict default). Evaluation keeps the config's low postprocessor threshold instead,
# which mAP needs. One constant for both, so the CLI and Python agree.
DEFAULT_CONF = 0.25
