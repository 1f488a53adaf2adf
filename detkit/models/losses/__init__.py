"""Detection losses. Built through the ``detkit.losses`` entry points (e.g. ``yolov1_loss``); importing
this package imports no loss."""
