"""Tenant records packed small for the registry: zstd with a dictionary of sample records.

A `tenants` record is ~1.2 KB of JSON (the signed envelope around the sealed document),
and 100,000 of them held as they came would be 120 MB of a component's memory. Records
repeat most of their text: the envelope and document keys, the plan catalogs, the key ids.
A raw-content dictionary made of the first records read captures that, whatever the
document holds (fields added later are sampled like the rest), and zstd at level 1
packs a record to ~250 bytes in ~5 us and unpacks it in ~10 us. What cannot shrink is
the random part: ciphertexts, the wrapped data key, the signature.

Packing is deterministic for one `RecordPacker`, so two packed values are equal exactly
when the records are. zstd contexts are not thread-safe: a thread that packs or unpacks
concurrently with another uses its own `RecordPacker.clone()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import zstandard

__all__ = ["RecordPacker"]

_LEVEL = 1
_SAMPLES = 8
_MAX_RECORD = 16 * 2**20  # a record larger than a Kafka message cannot come from the topic


class RecordPacker:
    """Packs and unpacks record values; the dictionary is fixed at construction."""

    def __init__(self, samples: Sequence[bytes] = ()) -> None:
        self._samples = b"".join(s for s in samples[:_SAMPLES] if s)
        if self._samples:
            dictionary = zstandard.ZstdCompressionDict(
                self._samples, dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            dictionary.precompute_compress(level=_LEVEL)
            self._compress = zstandard.ZstdCompressor(
                level=_LEVEL,
                dict_data=dictionary,
                write_checksum=False,
                write_content_size=True,
                write_dict_id=False,
            )
            self._decompress = zstandard.ZstdDecompressor(dict_data=dictionary)
        else:
            self._compress = zstandard.ZstdCompressor(level=_LEVEL, write_content_size=True)
            self._decompress = zstandard.ZstdDecompressor()

    def clone(self) -> RecordPacker:
        """The same dictionary in new contexts, for another thread."""
        return RecordPacker([self._samples]) if self._samples else RecordPacker()

    def pack(self, value: bytes) -> bytes:
        # Copied: zstandard returns its output in a buffer of the worst-case size (~1.1 x
        # the input), which would stay allocated behind each packed record.
        return bytes(memoryview(self._compress.compress(value)))

    def unpack(self, packed: bytes) -> bytes:
        return self._decompress.decompress(packed, max_output_size=_MAX_RECORD)
