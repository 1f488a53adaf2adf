"""tools/kfold_table.py: the README's k-fold ablation tables are rendered from the committed
``detkit kfold`` summaries in docs/results/kfold/, never typed in."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from detkit.engine.kfold import summarize_folds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("kfold_table", REPO / "tools" / "kfold_table.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_readme_tables_are_rendered_from_the_committed_summaries(tool):
    records = tool.load_records(tool.RECORDS) if tool.RECORDS.is_dir() else {}
    listed = {name for names in tool.TABLES.values() for name in names}
    assert set(records) <= listed, "a committed summary no table shows"
    assert listed <= set(records), "a table row without its committed summary"
    for table in tool.TABLES:
        assert tool.read_section(f"kfold-{table}") == tool.render_table(table, records) + "\n"
    assert tool.main(["--check"]) == 0


def test_a_row_shows_mean_and_std_of_its_folds(tool, tmp_path, monkeypatch):
    results = [{"fold": k, "metrics": {"coco_ap": v, "voc07_ap50": 0.9}, "diagnostics": {"iou_median": 0.8},
                "train_seconds": 600.0} for k, v in enumerate([0.40, 0.46, 0.43])]
    summary = summarize_folds(results, folds=5, seed=0, num_images=200, command="detkit kfold x.py")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(tool, "RECORDS", tmp_path / "records")
    monkeypatch.setitem(tool.TABLES, "yolov1", ["a", "missing"])
    tool.add("a", run, "EMA")
    record = json.loads((tmp_path / "records" / "a.json").read_text())
    assert record["label"] == "EMA" and record["command"] == "detkit kfold x.py"
    table = tool.render_table("yolov1", tool.load_records(tmp_path / "records"))
    row = table.splitlines()[2]
    # mean 0.43, sample std 0.03; three of five folds; 10 minutes per fold
    assert row.startswith("| `a` | EMA | 3/5 | 0.900 ± 0.000 | 0.430 ± 0.030 | - | - | - | 0.80 ± 0.00 | - | 10 |")
    assert table.splitlines()[3].startswith("| `missing` | not measured |")

    readme = tmp_path / "README.md"
    shutil.copyfile(REPO / "README.md", readme)
    assert not tool.update_section("kfold-yolov1", table, check=True, readme=readme)
    tool.update_section("kfold-yolov1", table, readme=readme)
    assert tool.read_section("kfold-yolov1", readme) == table + "\n"
