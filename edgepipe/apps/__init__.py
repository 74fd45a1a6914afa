"""The live camera demo: sources, drawing, displays, the threaded loop (the output decoder it
shares with the device's evaluation jobs is :mod:`edgepipe.decode`)."""
