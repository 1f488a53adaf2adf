"""Detection heads. Built through the ``detkit.heads`` entry points (e.g. ``yolov1``); importing this
package imports no head."""
