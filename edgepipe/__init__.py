"""edgepipe: take PyTorch vision models to edge devices and measure them there."""

__version__ = "0.1.0"
