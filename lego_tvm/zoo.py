"""``lego_tvm.zoo``, the public name of the bundled models (defined in ``nn/zoo.py``) and of
the folding helpers (``nn/fold.py``)."""
from .nn.fold import fold_lego_to_batch_folded, fold_lego_to_dense
from .nn.zoo import (MODELS, LegoBottleneck, LegoResNet50, LegoVGG16, get_model, lego_resnet50,
                     lego_vgg16)

__all__ = ["MODELS", "LegoBottleneck", "LegoResNet50", "LegoVGG16", "fold_lego_to_batch_folded",
           "fold_lego_to_dense", "get_model", "lego_resnet50", "lego_vgg16"]
