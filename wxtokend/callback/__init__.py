"""Callbacks from WeChat: the message crypto, the events inside, and where they arrive."""
