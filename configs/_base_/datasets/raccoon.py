# The raccoon data set (200 real photos, Pascal VOC layout). Fetch it once with
#   detkit data get raccoon
# which fills <data folder>/raccoon: $DETKIT_DATA/raccoon, else data/raccoon in this clone
# (detkit.data.paths.data_home). Elsewhere: --set data.train.root=/path/to/raccoon.
from detkit.data.paths import data_home

data_root = str(data_home() / "raccoon")

data = dict(
    classes=["raccoon"],
    train=dict(type="voc", root=data_root, split="train", transforms=dict(size=448, preset="yolov1")),
    val=dict(type="voc", root="${data.train.root}", split="val", transforms=dict(size=448)),
)
