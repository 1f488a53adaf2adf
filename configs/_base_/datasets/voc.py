# Pascal VOC 2007+2012 trainval for training, VOC2007 test for evaluation.
# Point data_root at the folder holding VOC2007/ and VOC2012/ (each with Annotations/, JPEGImages/, ImageSets/).
data_root = "data/VOCdevkit"
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
