"""The README's results and benchmark tables are what the tools render from the committed records.

``docs/results/*.json`` (written by tools/collect_results.py from run directories) and
``docs/benchmarks/*.json`` (written by ``tools/bench.py SUITE --record``) are the sources; a table
edited by hand, or a record changed without re-rendering, fails here.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tool(name):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "tools"))


@pytest.fixture(scope="module")
def tools():
    return load_tool("collect_results"), load_tool("bench"), load_tool("readme_sections")


def test_readme_results_tables_are_rendered_from_docs_results(tools):
    collect, _, sections = tools
    summaries = sections.load_records(collect.RESULTS)
    # every row of both tables (detectors, `detkit classify` runs) has its summary file
    assert set(summaries) == {name for name, *_ in collect.RECIPES + collect.CLASSIFY_RECIPES}
    assert sections.read_section("results") == collect.render_table(summaries) + "\n"
    assert sections.read_section("classification") == collect.render_classify_table(summaries) + "\n"
    assert collect.main(["--check"]) == 0


def test_readme_benchmark_table_is_rendered_from_docs_benchmarks(tools):
    _, bench, sections = tools
    records = sections.load_records(bench.RECORDS)
    assert records and all(r["suite"] in bench.SUITES and r["rows"] for r in records.values())
    assert sections.read_section("benchmarks") == bench.render_table(records) + "\n"
    own = bench.render_sections(records)
    assert "export-bench" in own  # the Deploy section's table
    for name, body in own.items():
        assert sections.read_section(name) == body + "\n", name
    assert bench.main(["readme", "--check"]) == 0


def test_a_changed_record_or_hand_edit_is_detected_and_rewritten(tools, tmp_path):
    collect, _, sections = tools
    readme = tmp_path / "README.md"
    shutil.copyfile(REPO / "README.md", readme)
    summaries = sections.load_records(collect.RESULTS)
    summaries["yolov1_shapes"]["metrics"]["voc07_ap50"] = 0.5
    table = collect.render_table(summaries)
    assert "| 0.500 |" in table
    assert not sections.update_section("results", table, check=True, readme=readme)
    assert not sections.update_section("results", table, readme=readme)  # rewrites the section
    assert sections.update_section("results", table, check=True, readme=readme)
    assert sections.read_section("benchmarks", readme) == sections.read_section("benchmarks")  # untouched
    text = readme.read_text()
    assert text.count("<!-- results:start") == 1 and "| 0.500 |" in text
    with pytest.raises(ValueError, match="no '<!-- missing:start -->'"):
        sections.read_section("missing", readme)


def test_collect_writes_a_summary_per_finished_run_and_keeps_the_others(tools, tmp_path, monkeypatch):
    collect, _, sections = tools
    work = tmp_path / "work_dirs" / "run_a"
    work.mkdir(parents=True)
    (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"type": "train", "epoch": 1, "img_per_s": 12.0},
        {"type": "epoch", "epoch": 1, "voc07_ap50": 0.71, "voc_ap50": 0.72, "coco_ap": 0.3, "coco_ap50": 0.7,
         "coco_ap75": 0.25}]) + "\n")
    (work / "train.log").write_text("x training finished: 1 epoch(s) in 00:01:05\n")
    results = tmp_path / "docs" / "results"
    sections.write_record(results / "run_b.json", {"metrics": {"voc07_ap50": 0.4}, "source": "epoch 3",
                                                    "epochs": 3, "time": "9 s", "img_per_s": None})
    monkeypatch.setattr(collect, "REPO", tmp_path)
    monkeypatch.setattr(collect, "RESULTS", results)
    monkeypatch.setattr(collect, "RECIPES", [("run_a", "work_dirs/run_a", "`cmd a`", "data a"),
                                             ("run_b", "work_dirs/run_b", "`cmd b`", "data b"),
                                             ("run_c", "work_dirs/run_c", "`cmd c`", "data c")])
    monkeypatch.setattr(collect, "CLASSIFY_RECIPES", [])
    assert collect.collect(copy_plots=False) == ["work_dirs/run_b", "work_dirs/run_c"]
    summary = json.loads((results / "run_a.json").read_text())
    assert summary["metrics"]["voc07_ap50"] == 0.71 and summary["time"] == "1 min 5 s"
    assert "from work_dirs/run_a" in summary["collected"]
    rows = collect.render_table(sections.load_records(results)).splitlines()[2:]
    assert rows == [
        "| `run_a` | `cmd a` | data a | 0.710 | 0.720 | 0.300 | 0.700 | 0.250 | 1 epochs in 1 min 5 s | 12.0 | epoch 1 |",
        "| `run_b` | `cmd b` | data b | 0.400 | - | - | - | - | 3 epochs in 9 s | - | epoch 3 |",
        "| `run_c` | `cmd c` | data c | not measured | | | | | | | |",
    ]


def test_collect_reads_a_classifier_run_and_its_confusion_matrix(tools, tmp_path, monkeypatch):
    collect, _, sections = tools
    work = tmp_path / "work_dirs" / "cls"
    (work / "plots").mkdir(parents=True)
    (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"type": "train", "epoch": 1, "img_per_s": 50.0},
        {"type": "epoch", "epoch": 1, "top1": 0.5, "top5": 0.9}]) + "\n")
    (work / "train.log").write_text("training finished: 1 epoch(s) in 00:00:07\n")
    # detkit classify eval --metrics-out of the best checkpoint wins over the last epoch record
    (work / "eval_metrics.json").write_text(json.dumps({"top1": 0.625, "top5": 1.0, "mean_class_accuracy": 0.6}))
    for name in ("plots/accuracy.png", "plots/confusion.png", "eval_confusion.png"):
        (work / name).write_bytes(name.encode())
    monkeypatch.setattr(collect, "REPO", tmp_path)
    monkeypatch.setattr(collect, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(collect, "RECIPES", [])
    monkeypatch.setattr(collect, "CLASSIFY_RECIPES", [("cls", "work_dirs/cls", "`c`", "d")])
    assert collect.collect(copy_plots=True) == []
    rows = collect.render_classify_table(sections.load_records(tmp_path / "results")).splitlines()
    assert rows[2] == "| `cls` | `c` | d | 0.625 | 1.000 | 0.600 | 1 epochs in 7 s | 50.0 | eval_metrics.json |"
    assert (tmp_path / "docs/images/cls_confusion.png").read_bytes() == b"eval_confusion.png"
    assert (tmp_path / "docs/images/cls_accuracy.png").read_bytes() == b"plots/accuracy.png"


def test_bench_record_option_and_table_rendering(tools):
    _, bench, _ = tools
    assert bench._pop_record(["--quick", "--record", "--no-grid"]) == ("", ["--quick", "--no-grid"])
    assert bench._pop_record(["--record=nms_1thread", "--threads", "1"]) == ("nms_1thread", ["--threads", "1"])
    assert bench._pop_record(["--quick"]) == (None, ["--quick"])
    table = bench.render_table({
        "zzz": {"suite": "nms", "command": "python tools/bench.py nms --record", "date": "2026-01-02",
                "cpus": 2, "load_average": 0.46, "rows": [["a", "1.5× faster"], ["b", "2×"]]},
        "aaa": {"suite": "rcnn", "command": "python tools/bench.py rcnn --record", "date": "2026-01-03",
                "note": "quiet machine", "rows": [["c", "3×"]]},
    }).splitlines()
    assert table[2:] == [
        "| nms | a | 1.5× faster | `python tools/bench.py nms --record`, 2026-01-02, load average 0.5 on 2 CPUs |",
        "| nms | b | 2× | `python tools/bench.py nms --record`, 2026-01-02, load average 0.5 on 2 CPUs |",
        "| rcnn | c | 3× | `python tools/bench.py rcnn --record`, 2026-01-03 (quiet machine) |",
    ]
