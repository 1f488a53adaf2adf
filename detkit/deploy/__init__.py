"""Taking a trained model out of detkit, and running what comes back.

* :mod:`~detkit.deploy.loading`: a detector from its checkpoint alone (the stored config and class
  names), the short error when a given config does not fit, the stripped deployment checkpoint.
* :mod:`~detkit.deploy.graphs`: the detectors as exportable graphs (YOLOv1 whole with NMS; R-CNN's
  region scoring with the proposals as an input).
* :mod:`~detkit.deploy.export`: ``detkit export`` to ONNX, TorchScript or a stripped ``.pth``.
* :mod:`~detkit.deploy.metadata`: the contract an exported file carries (class names, input size,
  resize rule, normalisation, thresholds).
* :mod:`~detkit.deploy.backends`: :func:`~detkit.deploy.backends.load_model` for every model file
  (checkpoint, ONNX Runtime, TorchScript) behind the detector contract, used by ``Predictor``,
  ``detkit infer`` and ``detkit eval``.
"""
