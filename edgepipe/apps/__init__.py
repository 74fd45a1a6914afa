"""The live camera demo: sources, output decoding, drawing, displays, the threaded loop."""
