"""Repeat infringement: weight fingerprints and the re-upload screen."""
