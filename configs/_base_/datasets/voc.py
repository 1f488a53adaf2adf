# Pascal VOC 2007+2012 trainval for training, VOC2007 test for evaluation.
# `detkit data get voc2007` and `detkit data get voc2012` fill <data folder>/VOCdevkit/VOC2007 and VOC2012
# ($DETKIT_DATA, else data/ in this clone); elsewhere point data_root at the folder holding VOC2007/ and
# VOC2012/ (each with Annotations/, JPEGImages/, ImageSets/).
from detkit.data.paths import data_home

data_root = str(data_home() / "VOCdevkit")
image_size = 448

data = dict(
    classes=None,  # None = the 20 VOC classes
    train=dict(
        type="voc",
        root=[data_root + "/VOC2007", data_root + "/VOC2012"],
        split=["trainval", "trainval"],
        transforms=dict(size=image_size, preset="yolov1"),
    ),
    val=dict(
        type="voc",
        root=data_root + "/VOC2007",
        split="test",
        transforms=dict(size=image_size),
    ),
)
