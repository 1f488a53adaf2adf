# COCO 2017 detection. Class names and ids come from the annotation file.
# <data folder>/coco ($DETKIT_DATA/coco, else data/coco in this clone) with annotations/instances_*2017.json,
# train2017/ and val2017/; `detkit data get coco2017-val` fetches the validation half.
from detkit.data.paths import data_home

data_root = str(data_home() / "coco")
image_size = 448

data = dict(
    classes=None,
    train=dict(
        type="coco",
        ann_file=data_root + "/annotations/instances_train2017.json",
        img_dir=data_root + "/train2017",
        transforms=dict(size=image_size, preset="yolov1"),
    ),
    val=dict(
        type="coco",
        ann_file=data_root + "/annotations/instances_val2017.json",
        img_dir=data_root + "/val2017",
        transforms=dict(size=image_size),
    ),
)
