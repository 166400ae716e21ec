"""Velocity file sync: the platform library shared by flows, the API and the gateway."""
