"""Shared machinery for the local vendor emulators (Twilio, HubSpot, ...)."""

from connectors.emulator.base import EmulatorApp, Fault, Hosted, serve_foreground, serve_in_thread

__all__ = ["EmulatorApp", "Fault", "Hosted", "serve_foreground", "serve_in_thread"]
