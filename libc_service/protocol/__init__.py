"""The protocol without I/O: the typed requests and replies, the vocabulary, the wire codecs, one channel's call state."""
