"""Compatibility name: the foundation's dispatcher is now :class:`uploader.outbox.Outbox`.

``Dispatcher(backend, state_path, clock=...)`` keeps working; new code imports from
:mod:`uploader.outbox`.
"""

from __future__ import annotations

from uploader.outbox import Outbox, QueuedIntent, intent_from_json, intent_to_json

Dispatcher = Outbox

__all__ = ["Dispatcher", "QueuedIntent", "intent_from_json", "intent_to_json"]
