"""Simulated Koupleless bases that speak the real wire protocol (MQTT tunnel, Arklet HTTP)."""
