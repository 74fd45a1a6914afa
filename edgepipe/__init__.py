"""edgepipe: take PyTorch vision models to edge devices and measure them there.

Imports run downward, floor by floor; a stage talks to another through public functions and
plain data (dataclasses, JSON manifests):

- the ground, shared by all and light enough for a device: :mod:`.errors`, :mod:`.schemas`,
  :mod:`.manifest`, :mod:`.images`, :mod:`.preprocess`, :mod:`.decode` (numpy, Pillow, no
  torch), and :mod:`.plotting`, :mod:`.report_parts` for the host's figures and reports;
- :mod:`.device`: what runs on the device (the agent, its jobs, the runtimes' runners; no torch);
- :mod:`.host` (reaching a device's agent or runners) and :mod:`.models` (the networks);
- :mod:`.converters`: PyTorch to ExecuTorch, LiteRT and Core ML, with manifests and parity;
- :mod:`.latency_tables`, then :mod:`.search` and :mod:`.evaluation`;
- at the top, what a person runs: :mod:`.pipeline` (``edgepipe run``), :mod:`.apps` (the demo),
  :mod:`.ui` and :mod:`.cli`.
"""

__version__ = "0.1.0"
