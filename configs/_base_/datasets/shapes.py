# The built-in synthetic data set: `detkit data make-shapes data/shapes` (make demo does it).
data = dict(
    classes=None,  # None = the generator's classes
    train=dict(type="shapes", root="data/shapes", split="train", transforms=dict(size=224, preset="yolov1")),
    val=dict(type="shapes", root="${data.train.root}", split="val", transforms=dict(size=224)),
)
