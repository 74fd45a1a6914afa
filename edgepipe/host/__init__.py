"""How the host reaches a device's agent: the HTTP client, the registry of devices and their
transports (URL, ssh tunnel, adb forward), bootstrap over ssh, an agent started on this
machine, deploy and profile, and the per-operator tables made from what a device returns."""
