"""Image classifiers: a backbone and a classification head, trained by ``detkit classify``. Built
through the ``detkit.classifiers`` entry points (e.g. ``image_classifier``); importing this package
imports no classifier."""
