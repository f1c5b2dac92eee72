"""Interoperability: subspaces trained by the method's PyTorch reference code in, ONNX out.

``from_reference(checkpoint, ...)`` converts a checkpoint of the reference
code (github.com/apple/learning-compressible-subspaces) into a csub model;
``to_onnx(model, path, alpha)`` writes the network at one alpha as a standard
ONNX graph (needs the ``onnx`` package: ``pip install csub[onnx]``).
"""
from .onnx_export import to_onnx
from .reference import from_reference, read_checkpoint

__all__ = ["from_reference", "read_checkpoint", "to_onnx"]
