"""Codecs turn inbound bytes into parsed messages, with explicit per-channel settings."""
