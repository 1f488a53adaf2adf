# The raccoon data set (200 real photos, Pascal VOC layout) read in place from ../shared next to the
# repository. The path is found from this file, so commands work from any directory.
from pathlib import Path

data_root = str(Path(__file__).resolve().parents[4] / "shared" / "datasets" / "raccoon")

data = dict(
    classes=["raccoon"],
    train=dict(type="voc", root=data_root, split="train", transforms=dict(size=448, preset="yolov1")),
    val=dict(type="voc", root="${data.train.root}", split="val", transforms=dict(size=448)),
)
