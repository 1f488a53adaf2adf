"""Figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no GUI, thread-safe).

Modules: ``figure`` (new figures, atomic PNG writes), ``training`` (loss / mAP / lr curves from
metrics.jsonl, redrawn every epoch), ``evaluation`` (PR and F1 curves, confusion matrices, the
per-class table and report, validation mosaics: ``detkit eval --plots`` and the end of training),
``data`` (box statistics of a split: ``detkit check-data --plots`` and the end of training).
The numbers behind them are computed elsewhere (:mod:`detkit.evaluation.analysis`,
:mod:`detkit.data.stats`), so they can be tested without drawing.
"""
