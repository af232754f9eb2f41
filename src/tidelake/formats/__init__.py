"""Record encodings on the log, converted to and from Arrow in bulk."""

from tidelake.formats.json import decode_json, encode_json

__all__ = ["decode_json", "encode_json"]
