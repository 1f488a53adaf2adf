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
    # mean 0.43, sample std 0.03; three of five folds, said so; the first row has no difference column
    assert row == ("| `a` | EMA | 3/5 partial (folds 0, 1, 2) | 0.900 ± 0.000 | 0.430 ± 0.030 | - | - | - | "
                   "0.80 ± 0.00 | - |  | 10 |")
    assert table.splitlines()[3].startswith("| `missing` | not measured |")
    assert all(line.count("|") == row.count("|") for line in table.splitlines())

    readme = tmp_path / "README.md"
    shutil.copyfile(REPO / "README.md", readme)
    assert not tool.update_section("kfold-yolov1", table, check=True, readme=readme)
    tool.update_section("kfold-yolov1", table, readme=readme)
    assert tool.read_section("kfold-yolov1", readme) == table + "\n"


def _record(tool, tmp_path, name, coco_ap: dict, folds=5, baseline=None):
    results = [{"fold": k, "metrics": {"coco_ap": v}, "diagnostics": {}, "train_seconds": 60.0}
               for k, v in coco_ap.items()]
    run = tmp_path / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summarize_folds(results, folds=folds, seed=0, num_images=200)))
    tool.add(name, run, name, baseline=baseline)


def test_partial_rows_say_which_folds_and_compare_on_common_folds_only(tool, tmp_path, monkeypatch):
    """A 1- or 2-fold experiment is never shown as a 5-fold mean, and a lever is compared with the
    reference on the folds both have (fold 2 of the reference does not enter the difference)."""
    monkeypatch.setattr(tool, "RECORDS", tmp_path / "records")
    monkeypatch.setitem(tool.TABLES, "yolov1", ["base", "lever", "full", "elsewhere"])
    _record(tool, tmp_path, "base", {0: 0.40, 1: 0.50, 2: 0.10})
    _record(tool, tmp_path, "lever", {0: 0.45})
    _record(tool, tmp_path, "full", {k: 0.4 + 0.01 * k for k in range(5)})
    _record(tool, tmp_path, "elsewhere", {4: 0.5})
    rows = tool.render_table("yolov1", tool.load_records(tmp_path / "records")).splitlines()[2:]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in rows]
    assert [c[2] for c in cells] == ["3/5 partial (folds 0, 1, 2)", "1/5 partial (fold 0)", "5/5",
                                     "1/5 partial (fold 4)"]
    assert cells[1][4] == "0.450"  # one fold: no spread to show
    # paired: lever - base on fold 0 = +0.05; full - base on folds 0, 1, 2 = mean(0, -0.09, 0.32)
    assert [c[-2] for c in cells] == ["", "+0.050 (fold 0)", "+0.077 (folds 0, 1, 2)", "no common fold"]


def test_a_row_with_a_baseline_is_compared_with_that_row(tool, tmp_path, monkeypatch):
    """A lever tried on top of an earlier one (``add --vs``) is differenced against that row, and the
    cell names it; a baseline that has no record is said, not silently replaced by the first row."""
    monkeypatch.setattr(tool, "RECORDS", tmp_path / "records")
    monkeypatch.setitem(tool.TABLES, "yolov1", ["base", "nms", "lever", "orphan"])
    _record(tool, tmp_path, "base", {0: 0.40, 1: 0.50})
    _record(tool, tmp_path, "nms", {0: 0.42, 1: 0.51})
    _record(tool, tmp_path, "lever", {0: 0.46, 1: 0.53}, baseline="nms")
    _record(tool, tmp_path, "orphan", {0: 0.46}, baseline="gone")
    assert tool.main(["add", "cli", str(tmp_path / "lever"), "--label", "x", "--vs", "nms"]) == 0
    assert json.loads((tmp_path / "records" / "cli.json").read_text())["baseline"] == "nms"
    rows = tool.render_table("yolov1", tool.load_records(tmp_path / "records")).splitlines()[2:]
    deltas = [[c.strip() for c in row.split("|")[1:-1]][-2] for row in rows]
    # lever - nms: mean(+0.04, +0.02) = +0.030 (against base it would be +0.045)
    assert deltas == ["", "+0.015 (folds 0, 1)", "vs `nms`: +0.030 (folds 0, 1)", "baseline `gone` not recorded"]


def test_add_fills_the_commit_of_a_summary_written_outside_a_checkout(tool, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "RECORDS", tmp_path / "records")
    run = tmp_path / "run"
    run.mkdir()
    summary = summarize_folds([], folds=5, seed=0, num_images=200)
    (run / "summary.json").write_text(json.dumps({**summary, "git": None}))
    assert json.loads(tool.add("a", run, "a", git="cf10f3c").read_text())["git"] == "cf10f3c"
    (run / "summary.json").write_text(json.dumps({**summary, "git": "75c7db2"}))
    with pytest.raises(SystemExit, match="written by commit 75c7db2, not cf10f3c"):
        tool.add("b", run, "b", git="cf10f3c")
    assert json.loads(tool.add("c", run, "c").read_text())["git"] == "75c7db2"


def test_a_variant_row_takes_that_variants_metrics_from_the_summary(tool, tmp_path, monkeypatch):
    """The classic R-CNN's k-fold summary holds softmax / SVM / SVM + box regression scores of the
    same folds; ``add --variant`` makes one of them a row (without the final model's diagnostics)."""
    monkeypatch.setattr(tool, "RECORDS", tmp_path / "records")
    monkeypatch.setitem(tool.TABLES, "rcnn_classic", ["full", "softmax"])
    results = [{"fold": k, "metrics": {"coco_ap": full}, "diagnostics": {"iou_median": 0.8}, "train_seconds": 60.0,
                "variants": {"softmax": {"coco_ap": soft}, "svm_bbox_reg": {"coco_ap": full}}}
               for k, (full, soft) in enumerate([(0.50, 0.40), (0.56, 0.44)])]
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summarize_folds(results, folds=2, seed=0, num_images=20)))
    tool.add("full", run, "SVMs + box regression")
    assert tool.main(["add", "softmax", str(run), "--label", "softmax", "--variant", "softmax"]) == 0
    soft = json.loads((tmp_path / "records" / "softmax.json").read_text())
    assert soft["variant"] == "softmax" and soft["metrics"]["coco_ap"]["values"] == [0.40, 0.44]
    assert soft["diagnostics"] == {} and "variants" not in soft
    rows = tool.render_table("rcnn_classic", tool.load_records(tmp_path / "records")).splitlines()[2:]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in rows]
    assert cells[0][4] == "0.530 ± 0.042" and cells[1][4] == "0.420 ± 0.028"
    assert cells[1][-2] == "-0.110 (folds 0, 1)" and cells[1][8] == "-"  # no diagnostics for a variant
    with pytest.raises(SystemExit, match="no variant 'svm' \\(it has: softmax, svm_bbox_reg\\)"):
        tool.add("svm", run, "svm", variant="svm")
