"""Layers with explicit forward and backward, in the habits of mainstream libraries."""
from .activation import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d, ReLU
from .container import Residual, Sequential
from .layers import Conv2d, Linear
from .loss import CrossEntropyLoss
from .module import Module, Parameter
from .norm import BatchNorm2d, GroupNorm, InstanceNorm2d
from . import quant

__all__ = ["Module", "Parameter", "Linear", "Conv2d", "BatchNorm2d", "GroupNorm", "InstanceNorm2d",
           "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "Sequential", "Residual",
           "CrossEntropyLoss", "quant"]
