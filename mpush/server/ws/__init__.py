"""
Browser devices over WebSocket: the same protocol in JSON frames, and the
demo page served beside it.
"""
