"""What runs on the device: the agent, its job worker, the runtimes' runners, the data folder
(numpy only, no torch). How the host reaches it lives in :mod:`edgepipe.host`."""

DEFAULT_PORT = 8765  # the agent's port unless told otherwise (`agent serve --port`)
