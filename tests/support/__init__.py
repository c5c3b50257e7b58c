"""Helpers the test modules share (servers, receivers, fakes, polling); fixtures stay in conftest.py."""
