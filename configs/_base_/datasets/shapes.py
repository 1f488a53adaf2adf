# The built-in synthetic data set, in <data folder>/shapes ($DETKIT_DATA/shapes, else data/shapes in
# this clone): `detkit data make-shapes data/shapes` (make demo does it).
from detkit.data.paths import data_home

data = dict(
    classes=None,  # None = the generator's classes
    train=dict(type="shapes", root=str(data_home() / "shapes"), split="train",
               transforms=dict(size=224, preset="yolov1")),
    val=dict(type="shapes", root="${data.train.root}", split="val", transforms=dict(size=224)),
)
