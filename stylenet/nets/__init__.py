"""Networks: the image transformation network, the super-resolution network and the frozen VGG
loss network."""

from stylenet.nets.sr import SuperResolutionNet
from stylenet.nets.transformer import TransformerNet
from stylenet.nets.vgg import VGGFeatures

__all__ = ["SuperResolutionNet", "TransformerNet", "VGGFeatures"]
