"""The metrics as a readable table: per-class counts, recall and APs (or precision, for a classifier),
then the summary numbers.

Printed by ``detkit eval`` and logged after every evaluation during training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from detkit.evaluation.names import SUMMARY_KEYS

__all__ = ["format_table"]

# (metrics key, column title) of the per-class AP columns, in display order
_PER_CLASS_COLUMNS = (
    ("per_class_voc07", "AP50 voc07"),
    ("per_class_voc", "AP50 voc"),
    ("per_class_coco50", "AP50 coco"),
    ("per_class_coco", "AP coco"),
    ("per_class_precision", "precision"),  # classification (gts: images of the class, dets: predicted as it)
)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.4f}"


def format_table(metrics: Mapping) -> str:
    """A per-class table (GT / detection counts, recall, every per-class AP present) and a summary.

    APs are fractions (0..1). ``nan`` marks an AP that is undefined (COCO: no ground truth).
    """
    columns = [(key, title) for key, title in _PER_CLASS_COLUMNS if isinstance(metrics.get(key), Mapping)]
    if not columns and isinstance(metrics.get("per_class"), Mapping):
        columns = [("per_class", "AP50")]
    stats = metrics.get("per_class_stats") if isinstance(metrics.get("per_class_stats"), Mapping) else {}
    names: list[str] = []
    for key, _ in columns:
        names += [n for n in metrics[key] if n not in names]
    names += [n for n in stats if n not in names]

    lines = []
    if names:
        header = ["class"] + (["gts", "dets", "recall"] if stats else []) + [t for _, t in columns]
        rows = []
        for name in names:
            row = [name]
            if stats:
                s = stats.get(name, {})
                row += [_fmt(s.get("num_gt")), _fmt(s.get("num_det")), _fmt(s.get("recall"))]
            row += [_fmt(metrics[key].get(name)) for key, _ in columns]
            rows.append(row)
        mean_row = ["mean"] + ([""] * 3 if stats else [])
        for key, _ in columns:
            values = [float(v) for v in metrics[key].values() if not (isinstance(v, float) and math.isnan(v))]
            mean_row.append(_fmt(float(np.mean(values)) if values else float("nan")))
        rows.append(mean_row)
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

        def render(row):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

        lines.append(render(header))
        lines.append("-" * len(lines[0]))
        lines += [render(r) for r in rows[:-1]]
        lines.append("-" * len(lines[0]))
        lines.append(render(rows[-1]))
        lines.append("")

    scalars = [k for k in SUMMARY_KEYS if k in metrics]  # others are appended as found
    scalars += [k for k, v in metrics.items() if k not in scalars and not isinstance(v, Mapping)
                and isinstance(v, (int, float, np.number))]
    if scalars:
        width = max(len(k) for k in scalars)
        lines += [f"{k.ljust(width)}  {_fmt(metrics[k])}" for k in scalars]
    return "\n".join(lines)
