# The raccoon data set (200 real photos, Pascal VOC layout) read in place from ../shared.
data = dict(
    classes=["raccoon"],
    train=dict(type="voc", root="../shared/datasets/raccoon", split="train",
               transforms=dict(size=448, preset="yolov1")),
    val=dict(type="voc", root="${data.train.root}", split="val", transforms=dict(size=448)),
)
