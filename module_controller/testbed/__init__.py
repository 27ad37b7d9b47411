"""A local Kubernetes control plane and MQTT broker, built and run without Docker."""
