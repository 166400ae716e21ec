"""The editor-and-preview page (`/play`): what a person sees, served by `velocity serve`."""

from orchestrator.play.routes import play_router

__all__ = ["play_router"]
