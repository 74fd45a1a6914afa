"""What runs on the device (agent, worker, runners: numpy only, no torch) and how the host
reaches it (client, registry of devices, deploy, profile, per-op tables, bootstrap)."""
