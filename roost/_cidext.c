/*
 * roost._cidext: the CID type of roost.cid, in C.
 *
 * This is an optional speed-up. roost/cid.py holds the reference
 * implementation (a pure-Python class with the same behaviour) and imports
 * this module when it is built and ROOST_PURE_PYTHON is not set. Everything
 * here must behave exactly like the Python class: same validation, same
 * CidError messages for binary input, same hashing, equality and ordering.
 *
 * An object holds the binary CID as an exact ``bytes`` object and a lazily
 * cached ``str`` (``b`` + lower-case unpadded base32). SHA-256 for
 * ``for_cbor_bytes``/``for_raw``/``matches`` is done here (with the x86 SHA
 * extensions when the CPU has them) for small blocks, where calling hashlib
 * costs more than the hashing; large blocks and non-bytes inputs go through
 * hashlib (OpenSSL, releases the GIL, and gives hashlib's own errors).
 *
 * It also holds three fast paths for verifying firehose commits, which a
 * relay does thousands of times a second: decoding and encoding MST nodes
 * (roost.mst) and reading the CAR slice of a commit (roost.repo). Each takes
 * only the common, well-formed input and answers None for anything else, so
 * the Python code it stands in for still decides every unusual case.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CIDEXT_X86_SHA 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------ */
/* module state (single-phase init: plain statics)                           */

static PyObject *CidError;         /* roost.errors.CidError */
static Py_ssize_t max_cid_bytes;   /* roost.limits.MAX_CID_BYTES */
static PyObject *hashlib_sha256;   /* hashlib.sha256 */
static PyObject *cbor_encode;      /* roost.cbor.encode, imported on first use */
static PyObject *str_digest;       /* interned "digest" */
static PyObject *str_from_str;     /* interned "from_str" */
static int have_sha_ni;

/*
 * Which SHA-256 to use for an exact bytes block. Measured as for_cbor_bytes
 * calls per second on a 2-core x86-64 VM with SHA extensions:
 *
 *     block bytes      36     150     500    2000   16384
 *     hashlib        1.8M    1.7M    0.8M    0.42M   84k
 *     portable here  2.7M    1.0M    0.35M   0.11M    9k
 *     SHA-ext here   4.8M    3.2M    1.8M    0.66M   79k
 *
 * So the SHA-extensions code is used up to OWN_SHA256_MAX; the portable code
 * only for one-block inputs (it is ~4x slower per byte than OpenSSL). Past
 * OWN_SHA256_MAX hashlib is used anyway: about the same speed, and it
 * releases the GIL while hashing.
 */
#define OWN_SHA256_MAX 8192
#define PORTABLE_SHA256_MAX 55 /* one compression block */

/* testing hook (_set_sha256_mode): 0 auto, 1 portable, 2 SHA extensions, 3 hashlib */
static int sha_mode;

static const uint8_t PREFIX_DAG_CBOR[4] = {0x01, 0x71, 0x12, 0x20};
static const uint8_t PREFIX_RAW[4] = {0x01, 0x55, 0x12, 0x20};

/* ------------------------------------------------------------------------ */
/* SHA-256 (FIPS 180-4)                                                      */

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t SHA256_H0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

typedef void (*sha256_blocks_fn)(uint32_t state[8], const uint8_t *data, size_t nblocks);

static inline uint32_t
rotr32(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static inline uint32_t
load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void
store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Portable compression function: any CPU. */
static void
sha256_blocks_portable(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    uint32_t w[64];
    while (nblocks--) {
        for (int t = 0; t < 16; t++) {
            w[t] = load_be32(data + 4 * t);
        }
        for (int t = 16; t < 64; t++) {
            uint32_t s0 = rotr32(w[t - 15], 7) ^ rotr32(w[t - 15], 18) ^ (w[t - 15] >> 3);
            uint32_t s1 = rotr32(w[t - 2], 17) ^ rotr32(w[t - 2], 19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16] + s0 + w[t - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int t = 0; t < 64; t++) {
            uint32_t big1 = rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25);
            uint32_t choose = (e & f) ^ (~e & g);
            uint32_t t1 = h + big1 + choose + SHA256_K[t] + w[t];
            uint32_t big0 = rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22);
            uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = big0 + majority;
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        state[0] += a;
        state[1] += b;
        state[2] += c;
        state[3] += d;
        state[4] += e;
        state[5] += f;
        state[6] += g;
        state[7] += h;
        data += 64;
    }
}

#ifdef CIDEXT_X86_SHA
/*
 * Compression with the SHA extensions (SHA256RNDS2/MSG1/MSG2).
 *
 * SHA256RNDS2 keeps the working variables in two registers, "ABEF" (lanes
 * 3..0 = A, B, E, F) and "CDGH" (C, D, G, H), and does two rounds using the
 * two low lanes of the message+constant operand. After two rounds the new
 * C, D, G, H are the old A, B, E, F, so the two registers swap roles.
 */
__attribute__((target("sha,sse4.1"))) static void
sha256_blocks_shani(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abcd = _mm_loadu_si128((const __m128i *)&state[0]); /* lanes: a b c d */
    __m128i efgh = _mm_loadu_si128((const __m128i *)&state[4]); /* lanes: e f g h */
    __m128i badc = _mm_shuffle_epi32(abcd, 0xB1);               /* b a d c */
    __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1B);               /* h g f e */
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);              /* f e b a */
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xF0);           /* h g d c */

    while (nblocks--) {
        const __m128i abef_in = abef, cdgh_in = cdgh;
        __m128i w[4];
        for (int i = 0; i < 16; i++) {
            __m128i group;
            if (i < 4) {
                group = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), bswap);
            }
            else {
                /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time */
                __m128i part = _mm_sha256msg1_epu32(w[i & 3], w[(i + 1) & 3]);
                part = _mm_add_epi32(part, _mm_alignr_epi8(w[(i + 3) & 3], w[(i + 2) & 3], 4));
                group = _mm_sha256msg2_epu32(part, w[(i + 3) & 3]);
            }
            w[i & 3] = group;
            __m128i wk = _mm_add_epi32(group, _mm_loadu_si128((const __m128i *)&SHA256_K[4 * i]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
        data += 64;
    }

    __m128i abfe = _mm_shuffle_epi32(abef, 0x1B);     /* a b e f */
    __m128i ghcd = _mm_shuffle_epi32(cdgh, 0xB1);     /* g h c d */
    abcd = _mm_blend_epi16(abfe, ghcd, 0xF0);         /* a b c d */
    efgh = _mm_alignr_epi8(ghcd, abfe, 8);            /* e f g h */
    _mm_storeu_si128((__m128i *)&state[0], abcd);
    _mm_storeu_si128((__m128i *)&state[4], efgh);
}

static int
cpu_has_sha_ni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return 0;
    }
    if (!(c & (1u << 19)) || !(c & (1u << 9))) { /* SSE4.1, SSSE3 */
        return 0;
    }
    if (__get_cpuid_max(0, NULL) < 7) {
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1; /* SHA */
}
#endif

/* One-shot SHA-256 of a buffer. mode: 0 auto, 1 portable, 2 SHA extensions. */
static void
sha256_digest(const uint8_t *data, size_t len, uint8_t out[32], int mode)
{
    sha256_blocks_fn blocks = sha256_blocks_portable;
#ifdef CIDEXT_X86_SHA
    if (mode == 2 || (mode == 0 && have_sha_ni)) {
        blocks = sha256_blocks_shani;
    }
#endif
    uint32_t state[8];
    memcpy(state, SHA256_H0, sizeof(state));
    size_t full = len / 64;
    if (full) {
        blocks(state, data, full);
    }
    size_t rest = len - full * 64;
    uint8_t tail[128];
    memset(tail, 0, sizeof(tail));
    if (rest) {
        memcpy(tail, data + full * 64, rest);
    }
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    blocks(state, tail, tail_len / 64);
    for (int i = 0; i < 8; i++) {
        store_be32(out + 4 * i, state[i]);
    }
}

/*
 * SHA-256 digest of ``block`` into out[32]. Exact bytes up to OWN_SHA256_MAX
 * are hashed here; anything else goes through hashlib.sha256, so other
 * buffer types and wrong types behave exactly as in the Python class.
 */
static int
digest_of(PyObject *block, uint8_t out[32])
{
    if (PyBytes_CheckExact(block)) {
        Py_ssize_t n = PyBytes_GET_SIZE(block);
        int mode = sha_mode;
        if (mode == 0 && n <= OWN_SHA256_MAX && (have_sha_ni || n <= PORTABLE_SHA256_MAX)) {
            mode = have_sha_ni ? 2 : 1;
        }
        if (mode == 1 || mode == 2) {
            sha256_digest((const uint8_t *)PyBytes_AS_STRING(block), (size_t)n, out, mode);
            return 0;
        }
    }
    PyObject *hasher = PyObject_CallOneArg(hashlib_sha256, block);
    if (hasher == NULL) {
        return -1;
    }
    PyObject *digest = PyObject_CallMethodNoArgs(hasher, str_digest);
    Py_DECREF(hasher);
    if (digest == NULL) {
        return -1;
    }
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != 32) {
        Py_DECREF(digest);
        PyErr_SetString(PyExc_SystemError, "hashlib.sha256 returned an unexpected digest");
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(digest), 32);
    Py_DECREF(digest);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* binary validation (mirrors roost.cid._read_varint / _check_binary)        */

/* Unsigned LEB128 at *pos, minimal form only, at most 9 bytes. */
static int
read_varint(const uint8_t *p, Py_ssize_t n, Py_ssize_t *pos, uint64_t *out)
{
    uint64_t value = 0;
    unsigned shift = 0;
    Py_ssize_t i = *pos;
    for (;;) {
        if (i >= n) {
            PyErr_SetString(CidError, "CID ends inside a varint");
            return -1;
        }
        uint8_t byte = p[i++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            if (byte == 0 && shift) {
                PyErr_SetString(CidError, "CID varint is not minimally encoded");
                return -1;
            }
            *pos = i;
            *out = value;
            return 0;
        }
        shift += 7;
        if (shift > 56) {
            PyErr_SetString(CidError, "CID varint is too long");
            return -1;
        }
    }
}

static inline int
is_blessed(const uint8_t *p, Py_ssize_t n)
{
    return n == 36 && p[0] == 0x01 && (p[1] == 0x71 || p[1] == 0x55) && p[2] == 0x12 && p[3] == 0x20;
}

static int
check_binary(const uint8_t *p, Py_ssize_t n)
{
    if (is_blessed(p, n)) {
        return 0;
    }
    if (n > max_cid_bytes) {
        PyErr_Format(CidError, "CID is %zd bytes, more than %zd", n, max_cid_bytes);
        return -1;
    }
    if (n >= 2 && p[0] == 0x12 && p[1] == 0x20) {
        PyErr_SetString(CidError, "CIDv0 is not allowed");
        return -1;
    }
    Py_ssize_t pos = 0;
    uint64_t version, codec, hash_code, digest_len;
    if (read_varint(p, n, &pos, &version) < 0) {
        return -1;
    }
    if (version != 1) {
        PyErr_Format(CidError, "CID version %llu is not supported (only CIDv1)",
                     (unsigned long long)version);
        return -1;
    }
    if (read_varint(p, n, &pos, &codec) < 0 || read_varint(p, n, &pos, &hash_code) < 0 ||
        read_varint(p, n, &pos, &digest_len) < 0) {
        return -1;
    }
    if ((uint64_t)(n - pos) != digest_len) {
        PyErr_Format(CidError, "CID multihash declares %llu digest bytes but has %zd",
                     (unsigned long long)digest_len, n - pos);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* base32 (RFC 4648 alphabet, lower case, no padding)                        */

static const char B32_ALPHABET[32] = "abcdefghijklmnopqrstuvwxyz234567";

/* 0..31 for a-z, 2-7; 0xFE for A-Z and '=' (a "character" error, as the
 * Python version reports them before anything else); 0xFF otherwise. */
static uint8_t B32_DECODE[128];

static void
init_b32_table(void)
{
    memset(B32_DECODE, 0xFF, sizeof(B32_DECODE));
    for (int i = 0; i < 32; i++) {
        B32_DECODE[(uint8_t)B32_ALPHABET[i]] = (uint8_t)i;
    }
    for (int c = 'A'; c <= 'Z'; c++) {
        B32_DECODE[c] = 0xFE;
    }
    B32_DECODE['='] = 0xFE;
}

/* "b" + base32 of the bytes, as a compact ASCII str. */
static PyObject *
b32_format(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t chars = (n / 5) * 8 + ((n % 5) * 8 + 4) / 5;
    PyObject *out = PyUnicode_New(1 + chars, 127);
    if (out == NULL) {
        return NULL;
    }
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(out);
    *o++ = 'b';
    Py_ssize_t i = 0;
    for (; i + 5 <= n; i += 5) {
        uint64_t v = ((uint64_t)p[i] << 32) | ((uint64_t)p[i + 1] << 24) | ((uint64_t)p[i + 2] << 16) |
                     ((uint64_t)p[i + 3] << 8) | (uint64_t)p[i + 4];
        o[0] = B32_ALPHABET[(v >> 35) & 31];
        o[1] = B32_ALPHABET[(v >> 30) & 31];
        o[2] = B32_ALPHABET[(v >> 25) & 31];
        o[3] = B32_ALPHABET[(v >> 20) & 31];
        o[4] = B32_ALPHABET[(v >> 15) & 31];
        o[5] = B32_ALPHABET[(v >> 10) & 31];
        o[6] = B32_ALPHABET[(v >> 5) & 31];
        o[7] = B32_ALPHABET[v & 31];
        o += 8;
    }
    if (i < n) {
        uint64_t v = 0;
        Py_ssize_t rest = n - i;
        for (Py_ssize_t j = 0; j < 5; j++) {
            v = (v << 8) | (j < rest ? p[i + j] : 0);
        }
        Py_ssize_t tail_chars = (rest * 8 + 4) / 5;
        for (Py_ssize_t j = 0; j < tail_chars; j++) {
            o[j] = B32_ALPHABET[(v >> (35 - 5 * j)) & 31];
        }
    }
    return out;
}

/*
 * Parse a CID string into a new bytes object holding the binary CID, which
 * is checked with check_binary. The checks and their order follow the
 * Python version: multibase prefix, characters, length, canonical trailing
 * bits, then the binary rules.
 */
static PyObject *
b32_parse(PyObject *text)
{
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) {
        return NULL;
    }
#endif
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    if (len < 1 || PyUnicode_READ_CHAR(text, 0) != 'b') {
        PyErr_SetString(CidError, "bad CID string: only base32 ('b') multibase is supported");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(CidError, "bad CID string: invalid base32 character");
        return NULL;
    }
    const uint8_t *s = PyUnicode_1BYTE_DATA(text) + 1;
    Py_ssize_t m = len - 1;
    uint8_t bad = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        uint8_t v = B32_DECODE[s[i] & 0x7F];
        if (v >= 0xFE) {
            bad = v;
            if (v == 0xFE) {
                break;
            }
        }
    }
    if (bad == 0xFE) {
        PyErr_SetString(CidError, "bad CID string: invalid base32 character");
        return NULL;
    }
    Py_ssize_t rem = m % 8;
    if (bad || rem == 1 || rem == 3 || rem == 6) {
        PyErr_SetString(CidError, "bad CID string: invalid base32");
        return NULL;
    }
    unsigned spare_bits = (unsigned)((rem * 5) % 8); /* low bits of the last char left over */
    if (spare_bits && (B32_DECODE[s[m - 1]] & ((1u << spare_bits) - 1))) {
        PyErr_SetString(CidError, "bad CID string: non-canonical base32");
        return NULL;
    }
    Py_ssize_t n = (m / 8) * 5 + (rem * 5) / 8;
    if (n > max_cid_bytes) {
        PyErr_Format(CidError, "CID is %zd bytes, more than %zd", n, max_cid_bytes);
        return NULL;
    }
    PyObject *raw = PyBytes_FromStringAndSize(NULL, n);
    if (raw == NULL) {
        return NULL;
    }
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t i = 0;
    for (; i + 8 <= m; i += 8) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) {
            v = (v << 5) | B32_DECODE[s[i + j]];
        }
        o[0] = (uint8_t)(v >> 32);
        o[1] = (uint8_t)(v >> 24);
        o[2] = (uint8_t)(v >> 16);
        o[3] = (uint8_t)(v >> 8);
        o[4] = (uint8_t)v;
        o += 5;
    }
    if (i < m) {
        uint64_t v = 0;
        for (Py_ssize_t j = 0; j < 8; j++) {
            v = (v << 5) | (i + j < m ? B32_DECODE[s[i + j]] : 0);
        }
        Py_ssize_t tail_bytes = (rem * 5) / 8;
        for (Py_ssize_t j = 0; j < tail_bytes; j++) {
            o[j] = (uint8_t)(v >> (32 - 8 * j));
        }
    }
    if (check_binary((const uint8_t *)PyBytes_AS_STRING(raw), n) < 0) {
        Py_DECREF(raw);
        return NULL;
    }
    return raw;
}

/* ------------------------------------------------------------------------ */
/* the CID type                                                              */

typedef struct {
    PyObject_HEAD
    PyObject *raw;  /* exact bytes, a valid binary CID */
    PyObject *text; /* cached str form, or NULL */
} CidObject;

static PyTypeObject CidType;

#define CID_CheckExact(op) (Py_TYPE(op) == &CidType)
#define CID_Check(op) PyObject_TypeCheck(op, &CidType)

/* A new CID of type ``type`` taking new references to raw and text (text may
 * be NULL). No validation. Steals nothing. */
static PyObject *
cid_alloc(PyTypeObject *type, PyObject *raw, PyObject *text)
{
    CidObject *self;
    if (type == &CidType) {
        self = PyObject_New(CidObject, &CidType);
    }
    else {
        self = (CidObject *)type->tp_alloc(type, 0);
    }
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(raw);
    self->raw = raw;
    Py_XINCREF(text);
    self->text = text;
    return (PyObject *)self;
}

/* A CID of ``type`` from a validated 4-byte prefix + 32-byte digest. */
static PyObject *
cid_from_prefix_digest(PyTypeObject *type, const uint8_t prefix[4], const uint8_t digest[32])
{
    PyObject *raw = PyBytes_FromStringAndSize(NULL, 36);
    if (raw == NULL) {
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(raw), prefix, 4);
    memcpy(PyBytes_AS_STRING(raw) + 4, digest, 32);
    PyObject *cid = cid_alloc(type, raw, NULL);
    Py_DECREF(raw);
    return cid;
}

static PyObject *
type_name_of(PyObject *obj)
{
    return PyType_GetName(Py_TYPE(obj));
}

/* Python: CID.__init__(self, data) -- bytes, bytearray or memoryview. */
static PyObject *
cid_new_from_data(PyTypeObject *type, PyObject *data)
{
    PyObject *raw;
    if (PyBytes_CheckExact(data)) {
        Py_INCREF(data);
        raw = data;
    }
    else if (PyByteArray_Check(data) || PyMemoryView_Check(data)) {
        raw = PyObject_CallOneArg((PyObject *)&PyBytes_Type, data);
        if (raw == NULL) {
            return NULL;
        }
    }
    else {
        PyObject *name = type_name_of(data);
        if (name != NULL) {
            PyErr_Format(CidError, "CID bytes must be bytes, not %U", name);
            Py_DECREF(name);
        }
        return NULL;
    }
    if (check_binary((const uint8_t *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw)) < 0) {
        Py_DECREF(raw);
        return NULL;
    }
    PyObject *cid = cid_alloc(type, raw, NULL);
    Py_DECREF(raw);
    return cid;
}

/* One argument, positional or by keyword ``name``. Borrowed result. */
static PyObject *
one_arg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *func, const char *name)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs == 1 && nkw == 0) {
        return args[0];
    }
    if (nargs == 0 && nkw == 1) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, 0);
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, name) == 0) {
            return args[0];
        }
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", func, key);
        return NULL;
    }
    if (nargs + nkw == 0) {
        PyErr_Format(PyExc_TypeError, "%s() missing 1 required argument: '%s'", func, name);
        return NULL;
    }
    PyErr_Format(PyExc_TypeError, "%s() takes exactly one argument (%zd given)", func, nargs + nkw);
    return NULL;
}

static PyObject *
cid_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", NULL};
    PyObject *data;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:CID", kwlist, &data)) {
        return NULL;
    }
    return cid_new_from_data(type, data);
}

/* Calling the exact type: skips tuple packing and tp_init. */
static PyObject *
cid_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((PyTypeObject *)type != &CidType) {
        /* a subclass (tp_vectorcall is not inherited, but be safe): full protocol */
        Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        PyObject *tuple = PyTuple_New(nargs);
        PyObject *dict = nkw ? PyDict_New() : NULL;
        PyObject *out = NULL;
        if (tuple == NULL || (nkw && dict == NULL)) {
            goto done;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            Py_INCREF(args[i]);
            PyTuple_SET_ITEM(tuple, i, args[i]);
        }
        for (Py_ssize_t i = 0; i < nkw; i++) {
            if (PyDict_SetItem(dict, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                goto done;
            }
        }
        out = PyType_Type.tp_call(type, tuple, dict);
    done:
        Py_XDECREF(tuple);
        Py_XDECREF(dict);
        return out;
    }
    PyObject *data = one_arg(args, nargs, kwnames, "CID", "data");
    if (data == NULL) {
        return NULL;
    }
    return cid_new_from_data(&CidType, data);
}

static void
cid_dealloc(CidObject *self)
{
    Py_XDECREF(self->raw);
    Py_XDECREF(self->text);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
cid_str(CidObject *self)
{
    if (self->text == NULL) {
        self->text = b32_format((const uint8_t *)PyBytes_AS_STRING(self->raw), PyBytes_GET_SIZE(self->raw));
        if (self->text == NULL) {
            return NULL;
        }
    }
    Py_INCREF(self->text);
    return self->text;
}

static PyObject *
cid_repr(CidObject *self)
{
    PyObject *text = cid_str(self);
    if (text == NULL) {
        return NULL;
    }
    PyObject *out = PyUnicode_FromFormat("CID(%R)", text);
    Py_DECREF(text);
    return out;
}

static Py_hash_t
cid_hash(CidObject *self)
{
    return PyObject_Hash(self->raw);
}

static PyObject *
cid_richcompare(PyObject *a, PyObject *b, int op)
{
    if (op == Py_EQ || op == Py_NE) {
        /* like the Python class: equal only to an object of exactly type CID */
        if (!CID_CheckExact(b) || !CID_Check(a)) {
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    else if (!CID_Check(a) || !CID_Check(b)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *x = ((CidObject *)a)->raw, *y = ((CidObject *)b)->raw;
    Py_ssize_t nx = PyBytes_GET_SIZE(x), ny = PyBytes_GET_SIZE(y);
    int c = memcmp(PyBytes_AS_STRING(x), PyBytes_AS_STRING(y), (size_t)(nx < ny ? nx : ny));
    if (c == 0) {
        c = nx < ny ? -1 : nx > ny ? 1 : 0;
    }
    Py_RETURN_RICHCOMPARE(c, 0, op);
}

static int
cid_setattro(PyObject *self, PyObject *name, PyObject *value)
{
    PyErr_SetString(PyExc_AttributeError, "CID is immutable");
    return -1;
}

/* -- constructors (class methods) -- */

static PyObject *
cid_from_bytes(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = one_arg(args, nargs, kwnames, "from_bytes", "data");
    if (data == NULL) {
        return NULL;
    }
    if ((PyTypeObject *)cls == &CidType) {
        return cid_new_from_data(&CidType, data);
    }
    return PyObject_CallOneArg(cls, data);
}

static PyObject *
cid_from_str_impl(PyObject *cls, PyObject *text)
{
    if (!PyUnicode_CheckExact(text)) {
        PyObject *name = type_name_of(text);
        if (name != NULL) {
            PyErr_Format(CidError, "CID string must be str, not %U", name);
            Py_DECREF(name);
        }
        return NULL;
    }
    PyObject *raw = b32_parse(text);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *cid;
    if ((PyTypeObject *)cls == &CidType) {
        cid = cid_alloc(&CidType, raw, text);
    }
    else {
        cid = PyObject_CallOneArg(cls, raw);
        if (cid != NULL && CID_Check(cid) && ((CidObject *)cid)->text == NULL) {
            Py_INCREF(text);
            ((CidObject *)cid)->text = text;
        }
    }
    Py_DECREF(raw);
    return cid;
}

static PyObject *
cid_from_str(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *text = one_arg(args, nargs, kwnames, "from_str", "text");
    if (text == NULL) {
        return NULL;
    }
    return cid_from_str_impl(cls, text);
}

static PyObject *
cid_parse(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = one_arg(args, nargs, kwnames, "parse", "value");
    if (value == NULL) {
        return NULL;
    }
    if (CID_Check(value)) {
        Py_INCREF(value);
        return value;
    }
    if (PyUnicode_Check(value)) {
        if ((PyTypeObject *)cls == &CidType) {
            return cid_from_str_impl(cls, value);
        }
        return PyObject_CallMethodOneArg(cls, str_from_str, value);
    }
    if (PyBytes_Check(value) || PyByteArray_Check(value) || PyMemoryView_Check(value)) {
        PyObject *raw;
        if (PyBytes_CheckExact(value)) {
            Py_INCREF(value);
            raw = value;
        }
        else {
            raw = PyObject_CallOneArg((PyObject *)&PyBytes_Type, value);
            if (raw == NULL) {
                return NULL;
            }
        }
        PyObject *cid;
        if ((PyTypeObject *)cls == &CidType) {
            cid = cid_new_from_data(&CidType, raw);
        }
        else {
            cid = PyObject_CallOneArg(cls, raw);
        }
        Py_DECREF(raw);
        return cid;
    }
    PyObject *name = type_name_of(value);
    if (name != NULL) {
        PyErr_Format(CidError, "cannot make a CID from %U", name);
        Py_DECREF(name);
    }
    return NULL;
}

static PyObject *
hashed_cid(PyObject *cls, PyObject *block, const uint8_t prefix[4])
{
    uint8_t digest[32];
    if (digest_of(block, digest) < 0) {
        return NULL;
    }
    return cid_from_prefix_digest((PyTypeObject *)cls, prefix, digest);
}

static PyObject *
cid_for_cbor_bytes(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block = one_arg(args, nargs, kwnames, "for_cbor_bytes", "block");
    if (block == NULL) {
        return NULL;
    }
    return hashed_cid(cls, block, PREFIX_DAG_CBOR);
}

static PyObject *
cid_for_raw(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = one_arg(args, nargs, kwnames, "for_raw", "data");
    if (data == NULL) {
        return NULL;
    }
    return hashed_cid(cls, data, PREFIX_RAW);
}

static PyObject *
cid_for_cbor(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = one_arg(args, nargs, kwnames, "for_cbor", "value");
    if (value == NULL) {
        return NULL;
    }
    if (cbor_encode == NULL) {
        PyObject *mod = PyImport_ImportModule("roost.cbor");
        if (mod == NULL) {
            return NULL;
        }
        cbor_encode = PyObject_GetAttrString(mod, "encode");
        Py_DECREF(mod);
        if (cbor_encode == NULL) {
            return NULL;
        }
    }
    PyObject *block = PyObject_CallOneArg(cbor_encode, value);
    if (block == NULL) {
        return NULL;
    }
    PyObject *cid = hashed_cid(cls, block, PREFIX_DAG_CBOR);
    Py_DECREF(block);
    return cid;
}

/* -- instance methods -- */

static PyObject *
cid_bytes_method(CidObject *self, PyObject *unused)
{
    Py_INCREF(self->raw);
    return self->raw;
}

static PyObject *
cid_encode(CidObject *self, PyObject *unused)
{
    return cid_str(self);
}

static PyObject *
cid_matches(CidObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *block = one_arg(args, nargs, kwnames, "matches", "block");
    if (block == NULL) {
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(self->raw);
    if (PyBytes_GET_SIZE(self->raw) != 36 || p[2] != 0x12 || p[3] != 0x20) {
        Py_RETURN_FALSE;
    }
    uint8_t digest[32];
    if (digest_of(block, digest) < 0) {
        return NULL;
    }
    return PyBool_FromLong(memcmp(digest, p + 4, 32) == 0);
}

static PyObject *
cid_reduce(CidObject *self, PyObject *unused)
{
    return Py_BuildValue("(O(O))", (PyObject *)&CidType, self->raw);
}

static PyObject *
cid_copy(PyObject *self, PyObject *unused)
{
    Py_INCREF(self);
    return self;
}

static PyObject *
cid_deepcopy(PyObject *self, PyObject *memo)
{
    Py_INCREF(self);
    return self;
}

/* -- properties -- */

static PyObject *
cid_get_bytes(CidObject *self, void *closure)
{
    Py_INCREF(self->raw);
    return self->raw;
}

static PyObject *
cid_get_str_cache(CidObject *self, void *closure)
{
    PyObject *text = self->text ? self->text : Py_None;
    Py_INCREF(text);
    return text;
}

static PyObject *
cid_get_version(CidObject *self, void *closure)
{
    return PyLong_FromLong(1);
}

/* field 0: codec, 1: hash code, 2: digest length (and *pos at the digest) */
static int
cid_field(CidObject *self, int field, uint64_t *value, Py_ssize_t *pos_out)
{
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(self->raw);
    Py_ssize_t n = PyBytes_GET_SIZE(self->raw);
    Py_ssize_t pos = 1;
    for (int i = 0; i <= field; i++) {
        if (read_varint(p, n, &pos, value) < 0) {
            return -1;
        }
    }
    if (pos_out) {
        *pos_out = pos;
    }
    return 0;
}

static PyObject *
cid_get_codec(CidObject *self, void *closure)
{
    uint64_t v;
    if (cid_field(self, 0, &v, NULL) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
cid_get_hash_code(CidObject *self, void *closure)
{
    uint64_t v;
    if (cid_field(self, 1, &v, NULL) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
cid_get_digest(CidObject *self, void *closure)
{
    uint64_t length;
    Py_ssize_t pos;
    if (cid_field(self, 2, &length, &pos) < 0) {
        return NULL;
    }
    Py_ssize_t avail = PyBytes_GET_SIZE(self->raw) - pos;
    Py_ssize_t take = length < (uint64_t)avail ? (Py_ssize_t)length : avail;
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->raw) + pos, take);
}

static PyObject *
cid_get_is_blessed(CidObject *self, void *closure)
{
    return PyBool_FromLong(is_blessed((const uint8_t *)PyBytes_AS_STRING(self->raw), PyBytes_GET_SIZE(self->raw)));
}

static PyObject *
cid_get_is_dag_cbor(CidObject *self, void *closure)
{
    return PyBool_FromLong(PyBytes_GET_SIZE(self->raw) == 36 &&
                           memcmp(PyBytes_AS_STRING(self->raw), PREFIX_DAG_CBOR, 4) == 0);
}

static PyObject *
cid_get_is_raw(CidObject *self, void *closure)
{
    return PyBool_FromLong(PyBytes_GET_SIZE(self->raw) == 36 &&
                           memcmp(PyBytes_AS_STRING(self->raw), PREFIX_RAW, 4) == 0);
}

static PyGetSetDef cid_getset[] = {
    {"bytes", (getter)cid_get_bytes, NULL, "The binary CID.", NULL},
    {"version", (getter)cid_get_version, NULL, "The CID version (always 1).", NULL},
    {"codec", (getter)cid_get_codec, NULL, "Multicodec of the content (0x71 dag-cbor, 0x55 raw, ...).", NULL},
    {"hash_code", (getter)cid_get_hash_code, NULL, "Multihash function code (0x12 for SHA-256).", NULL},
    {"digest", (getter)cid_get_digest, NULL, "The hash digest bytes.", NULL},
    {"is_blessed", (getter)cid_get_is_blessed, NULL,
     "True for the two forms atproto generates (v1, sha-256, dag-cbor or raw).", NULL},
    {"is_dag_cbor", (getter)cid_get_is_dag_cbor, NULL,
     "True for a blessed dag-cbor CID (records, MST nodes, commits).", NULL},
    {"is_raw", (getter)cid_get_is_raw, NULL, "True for a blessed raw CID (blobs).", NULL},
    {"_bytes", (getter)cid_get_bytes, NULL, NULL, NULL},
    {"_str", (getter)cid_get_str_cache, NULL, NULL, NULL},
    {NULL},
};

#define CLASS_METHOD(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL | METH_KEYWORDS | METH_CLASS, doc}

static PyMethodDef cid_methods[] = {
    CLASS_METHOD("from_bytes", cid_from_bytes, "A CID from its binary form (36 bytes for the blessed form)."),
    CLASS_METHOD("from_str", cid_from_str, "A CID from its multibase string; only base32 (``b...``) is accepted."),
    CLASS_METHOD("parse", cid_parse, "A CID from a string, binary bytes, or a CID (returned as is)."),
    CLASS_METHOD("for_cbor_bytes", cid_for_cbor_bytes, "The dag-cbor CID of already encoded bytes."),
    CLASS_METHOD("for_cbor", cid_for_cbor, "The dag-cbor CID of a data-model value (encoded strictly first)."),
    CLASS_METHOD("for_raw", cid_for_raw, "The raw-codec CID of blob bytes."),
    {"matches", (PyCFunction)(void (*)(void))cid_matches, METH_FASTCALL | METH_KEYWORDS,
     "True if ``block`` hashes to this CID (SHA-256 CIDs only)."},
    {"encode", (PyCFunction)cid_encode, METH_NOARGS, "The base32 string form (same as ``str()``)."},
    {"__bytes__", (PyCFunction)cid_bytes_method, METH_NOARGS, NULL},
    {"__reduce__", (PyCFunction)cid_reduce, METH_NOARGS, NULL},
    {"__copy__", (PyCFunction)cid_copy, METH_NOARGS, NULL},
    {"__deepcopy__", (PyCFunction)cid_deepcopy, METH_O, NULL},
    {NULL},
};

PyDoc_STRVAR(cid_doc,
             "CID(data)\n--\n\n"
             "An immutable CID. Build with ``parse``, ``from_bytes``, ``for_cbor`` or ``for_raw``.\n\n"
             "Equality and hashing use the binary form; ordering is bytewise over it.");

static PyTypeObject CidType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "roost.cid.CID",
    .tp_basicsize = sizeof(CidObject),
    .tp_dealloc = (destructor)cid_dealloc,
    .tp_repr = (reprfunc)cid_repr,
    .tp_hash = (hashfunc)cid_hash,
    .tp_str = (reprfunc)cid_str,
    .tp_setattro = cid_setattro,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = cid_doc,
    .tp_richcompare = cid_richcompare,
    .tp_methods = cid_methods,
    .tp_getset = cid_getset,
    .tp_new = cid_tp_new,
    .tp_free = PyObject_Free,
    .tp_vectorcall = cid_vectorcall,
};

/* ------------------------------------------------------------------------ */
/* module functions                                                          */

/* The DAG-CBOR decoder's cid_ctor: tag-42 payloads (without the 0x00). */
static PyObject *
cidext_cid_from_link(PyObject *module, PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        return cid_new_from_data(&CidType, data);
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (!is_blessed(p, n) && check_binary(p, n) < 0) {
        return NULL;
    }
    return cid_alloc(&CidType, data, NULL);
}

/* Testing hook: SHA-256 of bytes with a chosen compression function. */
static PyObject *
cidext_sha256(PyObject *module, PyObject *args)
{
    Py_buffer view;
    int mode = 0;
    if (!PyArg_ParseTuple(args, "y*|i:_sha256", &view, &mode)) {
        return NULL;
    }
    if (mode < 0 || mode > 2 || (mode == 2 && !have_sha_ni)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "unavailable SHA-256 implementation");
        return NULL;
    }
    uint8_t out[32];
    sha256_digest((const uint8_t *)view.buf, (size_t)view.len, out, mode);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

/* Testing hook: choose the SHA-256 used for bytes blocks (0 restores auto). */
static PyObject *
cidext_set_sha256_mode(PyObject *module, PyObject *arg)
{
    long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (mode < 0 || mode > 3 || (mode == 2 && !have_sha_ni)) {
        PyErr_SetString(PyExc_ValueError, "unavailable SHA-256 implementation");
        return NULL;
    }
    int old = sha_mode;
    sha_mode = (int)mode;
    return PyLong_FromLong(old);
}

/* ------------------------------------------------------------------------ */
/* MST node fast paths (used by roost.mst)                                   */

/*
 * mst_decode(block) decodes an MST node that is in the exact canonical
 * DAG-CBOR form with every MST rule met: {"e": [{"k", "p", "t", "v"}...],
 * "l"}, minimal lengths, keys strictly increasing and of one height, maximal
 * prefixes, UTF-8 keys, links in the 36-byte SHA-256 form (dag-cbor for
 * subtrees), no subtree at layer 0. It returns (layer, keys, vals, subs)
 * with the tuples roost.mst.Node holds (layer -1 for a keyless node: its
 * parent decides), or None for anything else: the Python decoder then takes
 * over and gives the exact result or error. So this path never accepts what
 * the Python one refuses.
 *
 * mst_encode(keys, vals, subs) is the inverse for a node whose subtrees are
 * CIDs or None: the same bytes as roost.cbor.encode of the node's map. It
 * returns None for arguments of other types.
 */

#define MST_KEY_MAX 1024 /* longer keys take the Python path */

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Py_ssize_t i;
} CborReader;

/* A head of major type ``major`` in its shortest form; -1 if not. */
static int
cbor_read_head(CborReader *r, int major, uint64_t *out)
{
    if (r->i >= r->n || (r->p[r->i] >> 5) != major) {
        return -1;
    }
    uint8_t info = r->p[r->i] & 31;
    r->i++;
    if (info < 24) {
        *out = info;
        return 0;
    }
    int size = info == 24 ? 1 : info == 25 ? 2 : info == 26 ? 4 : info == 27 ? 8 : 0;
    if (size == 0 || r->n - r->i < size) {
        return -1;
    }
    uint64_t v = 0;
    for (int k = 0; k < size; k++) {
        v = (v << 8) | r->p[r->i + k];
    }
    r->i += size;
    uint64_t least = size == 1 ? 24 : size == 2 ? 0x100 : size == 4 ? 0x10000 : 0x100000000ULL;
    if (v < least) {
        return -1;
    }
    *out = v;
    return 0;
}

/* The one-character text key ``c``; -1 if something else is there. */
static inline int
cbor_expect_key(CborReader *r, char c)
{
    if (r->n - r->i < 2 || r->p[r->i] != 0x61 || r->p[r->i + 1] != (uint8_t)c) {
        return -1;
    }
    r->i += 2;
    return 0;
}

/* A link in the 36-byte form (dag-cbor only if ``subtree``) as a new CID,
 * Py_None (new reference) for null if ``nullable``; NULL with no error set
 * if the bytes are in another form. */
static PyObject *
cbor_read_link(CborReader *r, int nullable, int subtree)
{
    if (r->i >= r->n) {
        return NULL;
    }
    const uint8_t *p = r->p + r->i;
    if (p[0] == 0xf6) {
        if (!nullable) {
            return NULL;
        }
        r->i++;
        Py_RETURN_NONE;
    }
    if (r->n - r->i < 5 + 36 || p[0] != 0xd8 || p[1] != 0x2a || p[2] != 0x58 || p[3] != 0x25 ||
        p[4] != 0x00 || !is_blessed(p + 5, 36) || (subtree && p[6] != 0x71)) {
        return NULL;
    }
    r->i += 5 + 36;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p + 5, 36);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *cid = cid_alloc(&CidType, raw, NULL);
    Py_DECREF(raw);
    return cid;
}

static int
key_height_of(const uint8_t *key, Py_ssize_t n)
{
    uint8_t digest[32];
    sha256_digest(key, (size_t)n, digest, 0);
    int zeros = 0;
    for (int k = 0; k < 32; k++) {
        if (digest[k] == 0) {
            zeros += 8;
            continue;
        }
        uint8_t b = digest[k];
        while (!(b & 0x80)) {
            zeros++;
            b <<= 1;
        }
        break;
    }
    return zeros / 2;
}

static PyObject *
cidext_mst_decode(PyObject *module, PyObject *block)
{
    if (!PyBytes_CheckExact(block)) {
        Py_RETURN_NONE;
    }
    CborReader r = {(const uint8_t *)PyBytes_AS_STRING(block), PyBytes_GET_SIZE(block), 0};
    uint64_t count;
    if (r.n < 1 || r.p[0] != 0xa2) {
        Py_RETURN_NONE;
    }
    r.i = 1;
    if (cbor_expect_key(&r, 'e') < 0 || cbor_read_head(&r, 4, &count) < 0 ||
        count > (uint64_t)(r.n - r.i)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t entries = (Py_ssize_t)count;
    PyObject *keys = PyTuple_New(entries);
    PyObject *vals = PyTuple_New(entries);
    PyObject *subs = PyTuple_New(entries + 1);
    PyObject *result = NULL;
    if (keys == NULL || vals == NULL || subs == NULL) {
        goto done;
    }
    uint8_t prev[MST_KEY_MAX];
    Py_ssize_t prev_len = 0;
    int layer = -1;
    int any_sub = 0;
    for (Py_ssize_t e = 0; e < entries; e++) {
        uint64_t klen, p;
        if (r.i >= r.n || r.p[r.i] != 0xa4) {
            goto fallback;
        }
        r.i++;
        if (cbor_expect_key(&r, 'k') < 0 || cbor_read_head(&r, 2, &klen) < 0 ||
            klen > (uint64_t)(r.n - r.i)) {
            goto fallback;
        }
        const uint8_t *suffix = r.p + r.i;
        r.i += (Py_ssize_t)klen;
        if (cbor_expect_key(&r, 'p') < 0 || cbor_read_head(&r, 0, &p) < 0 ||
            p > (uint64_t)prev_len || (e == 0 && p != 0)) {
            goto fallback;
        }
        Py_ssize_t full_len = (Py_ssize_t)p + (Py_ssize_t)klen;
        if (full_len > MST_KEY_MAX) {
            goto fallback;
        }
        if (e > 0) {
            /* the prefix is maximal, and the key is greater than the previous one */
            if ((Py_ssize_t)p < prev_len && klen && suffix[0] == prev[p]) {
                goto fallback;
            }
            if ((Py_ssize_t)p == prev_len) {
                if (klen == 0) {
                    goto fallback; /* equal keys */
                }
            }
            else if (klen == 0 || suffix[0] < prev[p]) {
                goto fallback;
            }
        }
        memcpy(prev + p, suffix, (size_t)klen);
        prev_len = full_len;
        int height = key_height_of(prev, prev_len);
        if (layer < 0) {
            layer = height;
        }
        else if (height != layer) {
            goto fallback;
        }
        PyObject *key = PyUnicode_DecodeUTF8((const char *)prev, prev_len, "strict");
        if (key == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                goto done;
            }
            PyErr_Clear();
            goto fallback;
        }
        PyTuple_SET_ITEM(keys, e, key);
        if (cbor_expect_key(&r, 't') < 0) {
            goto fallback;
        }
        PyObject *t = cbor_read_link(&r, 1, 1);
        if (t == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto fallback;
        }
        any_sub |= t != Py_None;
        PyTuple_SET_ITEM(subs, e + 1, t);
        if (cbor_expect_key(&r, 'v') < 0) {
            goto fallback;
        }
        PyObject *v = cbor_read_link(&r, 0, 0);
        if (v == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto fallback;
        }
        PyTuple_SET_ITEM(vals, e, v);
    }
    if (cbor_expect_key(&r, 'l') < 0) {
        goto fallback;
    }
    PyObject *left = cbor_read_link(&r, 1, 1);
    if (left == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto fallback;
    }
    any_sub |= left != Py_None;
    PyTuple_SET_ITEM(subs, 0, left);
    if (r.i != r.n || (layer == 0 && any_sub)) {
        goto fallback;
    }
    result = Py_BuildValue("(iOOO)", layer, keys, vals, subs);
    goto done;
fallback:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(keys);
    Py_XDECREF(vals);
    Py_XDECREF(subs);
    return result;
}

/* Append a CBOR head; returns the new end. */
static inline uint8_t *
cbor_put_head(uint8_t *o, int major, uint64_t v)
{
    uint8_t m = (uint8_t)(major << 5);
    if (v < 24) {
        *o++ = m | (uint8_t)v;
    }
    else if (v < 0x100) {
        *o++ = m | 24;
        *o++ = (uint8_t)v;
    }
    else if (v < 0x10000) {
        *o++ = m | 25;
        *o++ = (uint8_t)(v >> 8);
        *o++ = (uint8_t)v;
    }
    else if (v < 0x100000000ULL) {
        *o++ = m | 26;
        for (int k = 3; k >= 0; k--) {
            *o++ = (uint8_t)(v >> (8 * k));
        }
    }
    else {
        *o++ = m | 27;
        for (int k = 7; k >= 0; k--) {
            *o++ = (uint8_t)(v >> (8 * k));
        }
    }
    return o;
}

static inline uint8_t *
cbor_put_link(uint8_t *o, PyObject *cid)
{
    if (cid == Py_None) {
        *o++ = 0xf6;
        return o;
    }
    PyObject *raw = ((CidObject *)cid)->raw;
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    *o++ = 0xd8;
    *o++ = 0x2a;
    o = cbor_put_head(o, 2, (uint64_t)n + 1);
    *o++ = 0x00;
    memcpy(o, PyBytes_AS_STRING(raw), (size_t)n);
    return o + n;
}

static PyObject *
cidext_mst_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_CheckExact(args[0]) || !PyTuple_CheckExact(args[1]) ||
        !PyTuple_CheckExact(args[2])) {
        Py_RETURN_NONE;
    }
    PyObject *keys = args[0], *vals = args[1], *subs = args[2];
    Py_ssize_t entries = PyTuple_GET_SIZE(keys);
    if (PyTuple_GET_SIZE(vals) != entries || PyTuple_GET_SIZE(subs) != entries + 1) {
        Py_RETURN_NONE;
    }
    /* types first, and an upper bound of the size: 9-byte heads, 3 more per link */
    size_t size = 1 + 2 + 9 + 2;
    for (Py_ssize_t e = 0; e <= entries; e++) {
        PyObject *sub = PyTuple_GET_ITEM(subs, e);
        if (sub != Py_None) {
            if (!CID_CheckExact(sub)) {
                Py_RETURN_NONE;
            }
            size += (size_t)PyBytes_GET_SIZE(((CidObject *)sub)->raw);
        }
        size += 2 + 9 + 1; /* a link's tag, bytes head and 0x00 (or null) */
        if (e == entries) {
            break;
        }
        PyObject *key = PyTuple_GET_ITEM(keys, e);
        PyObject *val = PyTuple_GET_ITEM(vals, e);
        if (!PyUnicode_CheckExact(key) || !CID_CheckExact(val)) {
            Py_RETURN_NONE;
        }
        Py_ssize_t klen;
        if (PyUnicode_AsUTF8AndSize(key, &klen) == NULL) {
            return NULL;
        }
        /* map head, "k" + head + key, "p" + head, "t", "v" + tag + head + 0x00 + CID */
        size += 1 + 2 + 9 + (size_t)klen + 2 + 9 + 2 + 2 + 2 + 9 + 1 +
                (size_t)PyBytes_GET_SIZE(((CidObject *)val)->raw);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out == NULL) {
        return NULL;
    }
    uint8_t *start = (uint8_t *)PyBytes_AS_STRING(out);
    uint8_t *o = start;
    *o++ = 0xa2;
    *o++ = 0x61;
    *o++ = 'e';
    o = cbor_put_head(o, 4, (uint64_t)entries);
    const char *prev = NULL;
    Py_ssize_t prev_len = 0;
    for (Py_ssize_t e = 0; e < entries; e++) {
        Py_ssize_t klen;
        const char *key = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(keys, e), &klen);
        Py_ssize_t p = 0;
        if (prev != NULL) {
            Py_ssize_t limit = klen < prev_len ? klen : prev_len;
            while (p < limit && key[p] == prev[p]) {
                p++;
            }
        }
        *o++ = 0xa4;
        *o++ = 0x61;
        *o++ = 'k';
        o = cbor_put_head(o, 2, (uint64_t)(klen - p));
        memcpy(o, key + p, (size_t)(klen - p));
        o += klen - p;
        *o++ = 0x61;
        *o++ = 'p';
        o = cbor_put_head(o, 0, (uint64_t)p);
        *o++ = 0x61;
        *o++ = 't';
        o = cbor_put_link(o, PyTuple_GET_ITEM(subs, e + 1));
        *o++ = 0x61;
        *o++ = 'v';
        o = cbor_put_link(o, PyTuple_GET_ITEM(vals, e));
        prev = key;
        prev_len = klen;
    }
    *o++ = 0x61;
    *o++ = 'l';
    o = cbor_put_link(o, PyTuple_GET_ITEM(subs, 0));
    if (_PyBytes_Resize(&out, o - start) < 0) {
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* CAR fast path (used by roost.repo for firehose commit slices)             */

/*
 * car_blocks(data, max_block) reads a CAR v1 held in bytes whose header is
 * the canonical {"roots": [one CID], "version": 1} and whose sections all
 * have minimal varint lengths and 36-byte SHA-256 CIDs (dag-cbor or raw)
 * matching their blocks, each block at most max_block bytes. It returns
 * (root CID, {CID: block}) (a repeated CID keeps its last block, as a
 * block store fed in file order does), or None for anything else: the
 * general reader (roost.car.CarReader) then gives the exact result or error.
 */

static const uint8_t CAR_HEADER_ROOTS[] = {0xa2, 0x65, 'r', 'o', 'o', 't', 's', 0x81,
                                           0xd8, 0x2a, 0x58, 0x25, 0x00};
static const uint8_t CAR_HEADER_VERSION[] = {0x67, 'v', 'e', 'r', 's', 'i', 'o', 'n', 0x01};
#define CAR_HEADER_LEN (13 + 36 + 9)

/* A minimal unsigned LEB128 of at most 4 bytes at *pos; -1 if not. */
static int
car_varint(const uint8_t *p, Py_ssize_t n, Py_ssize_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    Py_ssize_t i = *pos;
    for (int k = 0; k < 4; k++, i++) {
        if (i >= n) {
            return -1;
        }
        v |= (uint64_t)(p[i] & 0x7f) << (7 * k);
        if (!(p[i] & 0x80)) {
            if (k > 0 && p[i] == 0) {
                return -1; /* not minimal */
            }
            *pos = i + 1;
            *out = v;
            return 0;
        }
    }
    return -1;
}

static PyObject *
cidext_car_blocks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    long long max_block = PyLong_AsLongLong(args[1]);
    if (max_block == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = 0;
    uint64_t len;
    if (car_varint(p, n, &pos, &len) < 0 || len != CAR_HEADER_LEN || n - pos < CAR_HEADER_LEN) {
        Py_RETURN_NONE;
    }
    const uint8_t *h = p + pos;
    if (memcmp(h, CAR_HEADER_ROOTS, sizeof(CAR_HEADER_ROOTS)) != 0 || !is_blessed(h + 13, 36) ||
        memcmp(h + 13 + 36, CAR_HEADER_VERSION, sizeof(CAR_HEADER_VERSION)) != 0) {
        Py_RETURN_NONE;
    }
    pos += CAR_HEADER_LEN;
    PyObject *blocks = PyDict_New();
    if (blocks == NULL) {
        return NULL;
    }
    while (pos < n) {
        if (car_varint(p, n, &pos, &len) < 0 || len < 36 || len > (uint64_t)(n - pos) ||
            (long long)(len - 36) > max_block || !is_blessed(p + pos, 36)) {
            goto fallback;
        }
        const uint8_t *cid_raw = p + pos;
        const uint8_t *data = cid_raw + 36;
        Py_ssize_t size = (Py_ssize_t)len - 36;
        uint8_t digest[32];
        sha256_digest(data, (size_t)size, digest, 0);
        if (memcmp(digest, cid_raw + 4, 32) != 0) {
            goto fallback;
        }
        PyObject *raw = PyBytes_FromStringAndSize((const char *)cid_raw, 36);
        if (raw == NULL) {
            goto error;
        }
        PyObject *cid = cid_alloc(&CidType, raw, NULL);
        Py_DECREF(raw);
        if (cid == NULL) {
            goto error;
        }
        PyObject *block = PyBytes_FromStringAndSize((const char *)data, size);
        if (block == NULL) {
            Py_DECREF(cid);
            goto error;
        }
        int failed = PyDict_SetItem(blocks, cid, block);
        Py_DECREF(cid);
        Py_DECREF(block);
        if (failed < 0) {
            goto error;
        }
        pos += (Py_ssize_t)len;
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)h + 13, 36);
    if (raw == NULL) {
        goto error;
    }
    PyObject *root = cid_alloc(&CidType, raw, NULL);
    Py_DECREF(raw);
    if (root == NULL) {
        goto error;
    }
    PyObject *result = PyTuple_Pack(2, root, blocks);
    Py_DECREF(root);
    Py_DECREF(blocks);
    return result;
fallback:
    Py_DECREF(blocks);
    Py_RETURN_NONE;
error:
    Py_DECREF(blocks);
    return NULL;
}

static PyMethodDef cidext_functions[] = {
    {"car_blocks", (PyCFunction)(void (*)(void))cidext_car_blocks, METH_FASTCALL,
     "A CAR in bytes with one root and verified 36-byte-CID sections, as (root, {CID: "
     "block}); None for anything else (roost.car reads it then)."},
    {"mst_decode", (PyCFunction)cidext_mst_decode, METH_O,
     "An MST node block in canonical form meeting every MST rule, as (layer, keys, vals, "
     "subs); None for anything else (roost.mst decodes it then)."},
    {"mst_encode", (PyCFunction)(void (*)(void))cidext_mst_encode, METH_FASTCALL,
     "The block of an MST node from its keys, values and subtree CIDs (or None); None "
     "for arguments of other types."},
    {"_set_sha256_mode", (PyCFunction)cidext_set_sha256_mode, METH_O,
     "Testing hook: SHA-256 for bytes blocks: 0 auto, 1 portable C, 2 CPU SHA extensions, "
     "3 hashlib. Returns the previous mode."},
    {"cid_from_link", (PyCFunction)cidext_cid_from_link, METH_O,
     "CID constructor used by the DAG-CBOR decoder for tag-42 payloads."},
    {"_sha256", (PyCFunction)cidext_sha256, METH_VARARGS,
     "SHA-256 digest; mode 0 auto, 1 portable C, 2 CPU SHA extensions (testing hook)."},
    {NULL},
};

static struct PyModuleDef cidext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "roost._cidext",
    .m_doc = "C implementation of roost.cid.CID, and MST node and CAR fast paths (optional; "
             "see roost/cid.py).",
    .m_size = -1,
    .m_methods = cidext_functions,
};

static PyObject *
import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    return attr;
}

PyMODINIT_FUNC
PyInit__cidext(void)
{
    init_b32_table();
#ifdef CIDEXT_X86_SHA
    have_sha_ni = cpu_has_sha_ni();
#endif
    if (CidError == NULL) {
        CidError = import_attr("roost.errors", "CidError");
        if (CidError == NULL) {
            return NULL;
        }
    }
    PyObject *limit = import_attr("roost.limits", "MAX_CID_BYTES");
    if (limit == NULL) {
        return NULL;
    }
    max_cid_bytes = PyLong_AsSsize_t(limit);
    Py_DECREF(limit);
    if (max_cid_bytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (hashlib_sha256 == NULL) {
        hashlib_sha256 = import_attr("hashlib", "sha256");
        if (hashlib_sha256 == NULL) {
            return NULL;
        }
    }
    if (str_digest == NULL && (str_digest = PyUnicode_InternFromString("digest")) == NULL) {
        return NULL;
    }
    if (str_from_str == NULL && (str_from_str = PyUnicode_InternFromString("from_str")) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&CidType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&cidext_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&CidType);
    if (PyModule_AddObject(m, "CID", (PyObject *)&CidType) < 0) {
        Py_DECREF(&CidType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "HAVE_SHA_NI", have_sha_ni) < 0 ||
        PyModule_AddIntConstant(m, "OWN_SHA256_MAX", OWN_SHA256_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
