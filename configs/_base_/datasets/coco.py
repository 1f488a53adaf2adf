# COCO 2017 detection. Class names and ids come from the annotation file.
data_root = "data/coco"
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
