"""Size, count and depth limits, in one place.

Values come from the atproto specifications (hard limits) or the reference
implementation's defaults where the specification leaves them open.
"""

from __future__ import annotations

# -- data model -------------------------------------------------------------

#: A record, DAG-CBOR encoded (validation guide: 1 MiB).
MAX_RECORD_BYTES = 1_048_576
#: A record, JSON encoded (validation guide: 2 MiB).
MAX_RECORD_JSON_BYTES = 2_097_152
#: Any single block we decode from untrusted input (MST node, commit, record).
MAX_BLOCK_BYTES = 2_000_000
#: Nesting depth of containers in a data-model value (validation guide).
MAX_DATA_DEPTH = 32
#: Elements of one array or map (validation guide: 128 * 1024).
MAX_CONTAINER_LEN = 131_072
#: Length of a map key in UTF-8 bytes.
MAX_MAP_KEY_BYTES = 8_192
#: Binary length of a CID we accept at all (blessed ones are 36 bytes).
MAX_CID_BYTES = 100

# -- syntax -----------------------------------------------------------------

MAX_DID_LENGTH = 2_048
MAX_HANDLE_LENGTH = 253
MAX_NSID_LENGTH = 317
MAX_RECORD_KEY_LENGTH = 512
MAX_AT_URI_LENGTH = 8_192
MAX_URI_LENGTH = 8_192
MAX_DATETIME_LENGTH = 64
MAX_LANGUAGE_LENGTH = 128

# -- JWT --------------------------------------------------------------------

#: Largest token we look at (header.payload.signature, ASCII).
MAX_JWT_BYTES = 8_192
#: Clock skew tolerated on ``iat``/``exp`` checks, seconds.
JWT_CLOCK_SKEW_SECONDS = 30

# -- CAR / blocks -----------------------------------------------------------

#: Largest CAR header we read (DAG-CBOR ``{roots, version}``; one root: 57 bytes).
MAX_CAR_HEADER_BYTES = 65_536
#: Largest block in one CAR section, CID not counted (records are at most 1 MiB).
MAX_CAR_BLOCK_BYTES = MAX_BLOCK_BYTES
