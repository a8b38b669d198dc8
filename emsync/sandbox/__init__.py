"""A local, faithful-in-shape Meta Graph API and Google Ads REST API for tests, the demo and the benchmark."""

from .server import Sandbox

__all__ = ["Sandbox"]
