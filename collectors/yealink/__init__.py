"""Yealink drivers: one profile-driven HTTP driver for the A20, A30 and MVC families."""

from collectors.yealink.driver import YealinkHttpCollector

__all__ = ["YealinkHttpCollector"]
