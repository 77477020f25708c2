"""Networks: the image transformation network and the frozen VGG loss network."""

from stylenet.nets.transformer import TransformerNet
from stylenet.nets.vgg import VGGFeatures

__all__ = ["TransformerNet", "VGGFeatures"]
