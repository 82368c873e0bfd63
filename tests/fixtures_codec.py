"""Session fixtures for codecs (owned by the data/codec work)."""

from __future__ import annotations
