"""tools/collect_results.py: the README table is read from what runs wrote, never typed in."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("collect_results", REPO / "tools" / "collect_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(work: Path, finished: bool = True, eval_metrics: dict | None = None):
    work.mkdir(parents=True)
    records = [
        {"type": "train", "epoch": 1, "img_per_s": 10.0},
        {"type": "epoch", "epoch": 1, "voc07_ap50": 0.5, "voc_ap50": 0.55, "coco_ap": 0.2},
        {"type": "train", "epoch": 2, "img_per_s": 20.0},
        {"type": "epoch", "epoch": 2, "voc07_ap50": 0.8, "voc_ap50": 0.85, "coco_ap": 0.4,
         "coco_ap50": 0.84, "coco_ap75": 0.3},
    ]
    (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    log = "11/22 05:00:00 epoch 2/2 done\n"
    if finished:
        log += "11/22 05:12:16 training finished: 2 epoch(s) in 01:02:03\n"
    (work / "train.log").write_text(log)
    if eval_metrics is not None:
        (work / "eval_metrics.json").write_text(json.dumps(eval_metrics))


def test_reads_final_epoch_time_and_mean_speed(tmp_path):
    tool = load_tool()
    write_run(tmp_path / "run")
    run = tool.read_run(tmp_path / "run")
    assert run["metrics"] == {"voc07_ap50": 0.8, "voc_ap50": 0.85, "coco_ap": 0.4, "coco_ap50": 0.84,
                              "coco_ap75": 0.3}
    assert run["source"] == "epoch 2" and run["epochs"] == 2
    assert run["time"] == "62 min 3 s" and run["img_per_s"] == 15.0


def test_eval_metrics_file_wins_and_unfinished_runs_are_skipped(tmp_path):
    tool = load_tool()
    write_run(tmp_path / "evaluated", eval_metrics={"voc07_ap50": 0.93, "coco_ap": 0.66})
    run = tool.read_run(tmp_path / "evaluated")
    assert run["source"] == "eval_metrics.json"
    assert run["metrics"]["voc07_ap50"] == 0.93 and run["metrics"]["voc_ap50"] is None
    write_run(tmp_path / "running", finished=False)
    assert tool.read_run(tmp_path / "running") is None
    assert tool.read_run(tmp_path / "absent") is None


def test_copies_the_evaluated_checkpoints_plots_when_there_are_some(tmp_path):
    tool = load_tool()
    work = tmp_path / "run"
    write_run(work)
    (work / "plots").mkdir()
    for name in ("map", "loss", "pr_curve", "confusion_matrix"):
        (work / "plots" / f"{name}.png").write_bytes(b"final " + name.encode())
    copied = tool.copy_run_plots(work, "demo", tool.DETECTION_PLOTS, tmp_path / "images")
    assert sorted(dst.name for _, dst in copied.values()) == ["demo_confusion_matrix.png", "demo_loss.png",
                                                             "demo_map.png", "demo_pr_curve.png"]
    assert copied["pr_curve"][0] == work / "plots" / "pr_curve.png"
    assert (tmp_path / "images" / "demo_pr_curve.png").read_bytes() == b"final pr_curve"
    (work / "eval_val").mkdir()  # detkit eval --plots of the evaluated checkpoint wins
    (work / "eval_val" / "pr_curve.png").write_bytes(b"evaluated")
    copied = tool.copy_run_plots(work, "demo", tool.DETECTION_PLOTS, tmp_path / "images")
    assert (tmp_path / "images" / "demo_pr_curve.png").read_bytes() == b"evaluated"
    assert copied["pr_curve"][0] == work / "eval_val" / "pr_curve.png"
    assert (tmp_path / "images" / "demo_confusion_matrix.png").read_bytes() == b"final confusion_matrix"
