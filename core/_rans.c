/* splitserve.core._rans: the inner loops of splitserve.core.codec in C.
 *
 * The same coder as the pure-Python one, bit for bit: rANS on an unbounded integer state, held here as
 * little-endian 32-bit limbs. codec.py prepares every table lookup with numpy and calls one function per
 * stream (encode_chunks, decode_chunks: every chunk and its length prefix in one call); it falls back to
 * its own Python loops, which write and read the same bytes, where this module was not built.
 *
 *   encode (symbols in reverse):  x <- (x // f) * 2**shift + cdf + x % f      (start x = 1)
 *   decode (symbols in order):    slot = x % 2**shift; s = bin of slot; x <- f * (x >> shift) + slot - cdf
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define RAW_BITS 16
#define RAW_HALF (1 << (RAW_BITS - 1))

typedef struct {
    uint32_t *limb; /* little-endian; limb[n - 1] != 0 unless n == 1 */
    Py_ssize_t n, cap;
} Big;

static int big_reserve(Big *x, Py_ssize_t n) {
    if (n <= x->cap) return 0;
    Py_ssize_t cap = x->cap ? x->cap : 8;
    while (cap < n) cap *= 2;
    uint32_t *limb = PyMem_Realloc(x->limb, (size_t)cap * sizeof(uint32_t));
    if (!limb) {
        PyErr_NoMemory();
        return -1;
    }
    x->limb = limb;
    x->cap = cap;
    return 0;
}

static void big_trim(Big *x) {
    while (x->n > 1 && x->limb[x->n - 1] == 0) x->n--;
}

/* x <- x * 2**bits + low, with 0 < bits < 32 and low < 2**bits. */
static int big_shl_add(Big *x, unsigned bits, uint32_t low) {
    if (big_reserve(x, x->n + 1) < 0) return -1;
    uint32_t carry = low;
    for (Py_ssize_t i = 0; i < x->n; i++) {
        uint32_t v = x->limb[i];
        x->limb[i] = (v << bits) | carry;
        carry = v >> (32 - bits);
    }
    x->limb[x->n++] = carry;
    big_trim(x);
    return 0;
}

/* x <- x // d, returns x % d (d > 0). */
static uint32_t big_divmod_small(Big *x, uint32_t d) {
    uint64_t rem = 0;
    for (Py_ssize_t i = x->n - 1; i >= 0; i--) {
        uint64_t cur = (rem << 32) | x->limb[i];
        x->limb[i] = (uint32_t)(cur / d);
        rem = cur % d;
    }
    big_trim(x);
    return (uint32_t)rem;
}

/* x <- x >> bits (0 < bits < 32), returns the bits shifted out. */
static uint32_t big_shr(Big *x, unsigned bits) {
    uint32_t out = x->limb[0] & ((1u << bits) - 1);
    for (Py_ssize_t i = 0; i < x->n; i++) {
        uint32_t hi = i + 1 < x->n ? x->limb[i + 1] : 0;
        x->limb[i] = (x->limb[i] >> bits) | (hi << (32 - bits));
    }
    big_trim(x);
    return out;
}

/* x <- x * m + add (m, add < 2**32). */
static int big_mul_add(Big *x, uint32_t m, uint32_t add) {
    if (big_reserve(x, x->n + 1) < 0) return -1;
    uint64_t carry = add;
    for (Py_ssize_t i = 0; i < x->n; i++) {
        uint64_t cur = (uint64_t)x->limb[i] * m + carry;
        x->limb[i] = (uint32_t)cur;
        carry = cur >> 32;
    }
    x->limb[x->n++] = (uint32_t)carry;
    big_trim(x);
    return 0;
}

static int check_buffer(Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t count, const char *name) {
    if (b->len != itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, itemsize * count, b->len);
        return -1;
    }
    return 0;
}

/* Encode symbols [start, stop) into x (x = 1 first): 0, or -1 with an exception set. */
static int encode_range(Big *x, const int64_t *freqs, const int64_t *cdfs, const uint8_t *escaped, const int64_t *raw,
                        Py_ssize_t start, Py_ssize_t stop, unsigned shift) {
    x->limb[0] = 1;
    x->n = 1;
    for (Py_ssize_t i = stop - 1; i >= start; i--) {
        int64_t f = freqs[i], cdf = cdfs[i];
        if (f <= 0 || cdf < 0 || f + cdf > ((int64_t)1 << shift)) {
            PyErr_SetString(PyExc_ValueError, "frequency table entry out of range");
            return -1;
        }
        if (escaped[i] && big_shl_add(x, RAW_BITS, (uint32_t)(raw[i] & 0xFFFF)) < 0) return -1;
        uint32_t r = big_divmod_small(x, (uint32_t)f);
        if (big_shl_add(x, shift, (uint32_t)cdf + r) < 0) return -1;
    }
    return 0;
}

/* Bytes of x, little-endian, without leading zero bytes (at least one). */
static Py_ssize_t big_nbytes(const Big *x) {
    Py_ssize_t nbytes = 4 * x->n;
    while (nbytes > 1 && ((x->limb[(nbytes - 1) / 4] >> (8 * ((nbytes - 1) % 4))) & 0xFF) == 0) nbytes--;
    return nbytes;
}

static void big_store(const Big *x, uint8_t *out, Py_ssize_t nbytes) {
    for (Py_ssize_t i = 0; i < nbytes; i++) out[i] = (uint8_t)(x->limb[i / 4] >> (8 * (i % 4)));
}

/* encode_chunks(freqs, cdfs, escaped, raw, shift, chunk_len) -> bytes
 * The whole stream: every chunk of chunk_len symbols coded on its own, each but the last preceded by
 * its length in bytes as LEB128 (codec.encode_symbols). */
static PyObject *encode_chunks(PyObject *self, PyObject *args) {
    Py_buffer fb, cb, eb, rb;
    unsigned int shift;
    Py_ssize_t chunk_len;
    if (!PyArg_ParseTuple(args, "y*y*y*y*In", &fb, &cb, &eb, &rb, &shift, &chunk_len)) return NULL;
    PyObject *result = NULL;
    Big x = {NULL, 0, 0};
    uint8_t *buf = NULL;
    Py_ssize_t n = eb.len, used = 0, cap = 0;
    if (shift == 0 || shift >= 32 || chunk_len <= 0) {
        PyErr_SetString(PyExc_ValueError, "shift must be in 1..31 and chunk_len positive");
        goto done;
    }
    if (check_buffer(&fb, 8, n, "freqs") < 0 || check_buffer(&cb, 8, n, "cdfs") < 0 ||
        check_buffer(&rb, 8, n, "raw") < 0 || big_reserve(&x, 8) < 0)
        goto done;
    for (Py_ssize_t start = 0; start < n; start += chunk_len) {
        Py_ssize_t stop = start + chunk_len < n ? start + chunk_len : n;
        if (encode_range(&x, fb.buf, cb.buf, eb.buf, rb.buf, start, stop, shift) < 0) goto done;
        Py_ssize_t nbytes = big_nbytes(&x);
        if (used + nbytes + 10 > cap) {
            Py_ssize_t want = 2 * (used + nbytes + 10);
            uint8_t *grown = PyMem_Realloc(buf, (size_t)want);
            if (!grown) {
                PyErr_NoMemory();
                goto done;
            }
            buf = grown;
            cap = want;
        }
        if (stop < n) {
            for (Py_ssize_t v = nbytes; ; v >>= 7) {
                buf[used++] = (uint8_t)((v & 0x7F) | (v >= 0x80 ? 0x80 : 0));
                if (v < 0x80) break;
            }
        }
        big_store(&x, buf + used, nbytes);
        used += nbytes;
    }
    result = PyBytes_FromStringAndSize((const char *)buf, used);
done:
    PyMem_Free(buf);
    PyMem_Free(x.limb);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&rb);
    return result;
}

/* Decode count symbols of flat positions [start, start + count) from the bytes of one chunk into out:
 * 1 if the state came back to 1, 0 if not, -1 with an exception set. */
static int decode_range(Big *x, const uint8_t *data, Py_ssize_t len, int32_t *out, Py_ssize_t start, Py_ssize_t count,
                        Py_ssize_t hw, Py_ssize_t width, const int64_t *cdfs, const int64_t *orders,
                        const int64_t *lengths, const int64_t *offsets, unsigned shift) {
    if (big_reserve(x, len / 4 + 2) < 0) return -1;
    memset(x->limb, 0, (size_t)x->cap * sizeof(uint32_t));
    for (Py_ssize_t i = 0; i < len; i++) x->limb[i / 4] |= (uint32_t)data[i] << (8 * (i % 4));
    x->n = len ? (len + 3) / 4 : 1;
    big_trim(x);
    const uint32_t total = 1u << shift;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t ch = (start + k) / hw, tlen = (Py_ssize_t)lengths[ch];
        if (tlen < 2 || tlen > width) {
            PyErr_SetString(PyExc_ValueError, "table length out of range");
            return -1;
        }
        const int64_t *cdf = cdfs + ch * width, *order = orders + ch * width;
        uint32_t slot = big_shr(x, shift);
        Py_ssize_t lo = 0; /* last s with cdf[s] <= slot, scanned from the most likely bin */
        while (lo + 1 < tlen && (uint32_t)cdf[lo + 1] <= slot) lo++;
        uint32_t f = (lo + 1 < tlen ? (uint32_t)cdf[lo + 1] : total) - (uint32_t)cdf[lo];
        if (big_mul_add(x, f, slot - (uint32_t)cdf[lo]) < 0) return -1;
        if (order[lo] == tlen - 1) {
            out[k] = (int32_t)big_shr(x, RAW_BITS) - RAW_HALF;
        } else {
            out[k] = (int32_t)(order[lo] + offsets[ch]);
        }
    }
    return x->n == 1 && x->limb[0] == 1;
}

static int check_tables(Py_buffer *cb, Py_buffer *rb, Py_buffer *lb, Py_buffer *fb, Py_ssize_t *channels,
                        Py_ssize_t *width) {
    *channels = lb->len / 8;
    *width = *channels ? cb->len / 8 / *channels : 0;
    if (*channels == 0 || *width == 0) {
        PyErr_SetString(PyExc_ValueError, "invalid decode tables");
        return -1;
    }
    if (check_buffer(cb, 8, *channels * *width, "cdfs") < 0 || check_buffer(rb, 8, *channels * *width, "orders") < 0 ||
        check_buffer(fb, 8, *channels, "offsets") < 0)
        return -1;
    return 0;
}

/* The tables and the output of a decode: tables well formed, out a whole number of int32 symbols that the
 * channels cover (hw symbols per channel). 0, or -1 with an exception set. */
static int check_decode(Py_buffer *cb, Py_buffer *rb, Py_buffer *lb, Py_buffer *fb, Py_buffer *ob, Py_ssize_t hw,
                        Py_ssize_t *channels, Py_ssize_t *width, Py_ssize_t *n) {
    *n = ob->len / 4;
    if (check_tables(cb, rb, lb, fb, channels, width) < 0 || check_buffer(ob, 4, *n, "out") < 0) return -1;
    if ((*n + hw - 1) / hw > *channels) {
        PyErr_SetString(PyExc_ValueError, "symbols beyond the last channel");
        return -1;
    }
    return 0;
}

/* decode_chunks(data, out, hw, cdfs, orders, lengths, offsets, shift, chunk_len, max_chunk_bits) -> int
 * The whole stream of codec.encode_symbols into out (all len(out) symbols). Returns 0, or what is wrong:
 * 1 a chunk length truncated or overlong, 2 a chunk truncated or not canonical, 3 a chunk longer than
 * max_chunk_bits per symbol allow, 4 the state did not return to 1, 5 trailing bytes. */
static PyObject *decode_chunks(PyObject *self, PyObject *args) {
    Py_buffer db, ob, cb, rb, lb, fb;
    Py_ssize_t hw, channels, width, chunk_len, max_bits;
    unsigned int shift;
    if (!PyArg_ParseTuple(args, "y*w*ny*y*y*y*Inn", &db, &ob, &hw, &cb, &rb, &lb, &fb, &shift, &chunk_len, &max_bits))
        return NULL;
    PyObject *result = NULL;
    Big x = {NULL, 0, 0};
    Py_ssize_t n = ob.len / 4, pos = 0, status = 0;
    const uint8_t *data = db.buf;
    if (shift == 0 || shift >= 32 || hw <= 0 || chunk_len <= 0 || max_bits <= 0) {
        PyErr_SetString(PyExc_ValueError, "invalid decode arguments");
        goto done;
    }
    if (check_decode(&cb, &rb, &lb, &fb, &ob, hw, &channels, &width, &n) < 0) goto done;
    for (Py_ssize_t start = 0; start < n && status == 0; start += chunk_len) {
        Py_ssize_t stop = start + chunk_len < n ? start + chunk_len : n, length = 0;
        if (stop < n) {
            unsigned bits = 0;
            for (;;) {
                if (pos >= db.len || bits >= 35) {
                    status = 1;
                    break;
                }
                uint8_t b = data[pos++];
                length |= (Py_ssize_t)(b & 0x7F) << bits;
                bits += 7;
                if (!(b & 0x80)) break;
            }
            if (status) break;
        } else {
            length = db.len - pos;
        }
        if (length <= 0 || length > db.len - pos || data[pos + length - 1] == 0) {
            status = 2;
            break;
        }
        if (8 * (length - 1) > (stop - start) * max_bits) {
            status = 3;
            break;
        }
        int ok = decode_range(&x, data + pos, length, (int32_t *)ob.buf + start, start, stop - start, hw, width,
                              cb.buf, rb.buf, lb.buf, fb.buf, shift);
        if (ok < 0) goto done;
        if (!ok) status = 4;
        pos += length;
    }
    if (status == 0 && pos != db.len) status = 5;
    result = PyLong_FromSsize_t(status);
done:
    PyMem_Free(x.limb);
    PyBuffer_Release(&db);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&fb);
    return result;
}

/* ---- codec version 3: a 32-bit state renormalized a byte at a time (one stream, no chunks) ----
 *
 *   encode (symbols in reverse, x = L first):  while x >= (L >> shift << 8) * f: emit x & 255, x >>= 8
 *                                              x <- (x // f) * 2**shift + cdf + x % f
 *   decode (symbols in order, x = first 4 bytes): slot = x % 2**shift; s = bin of slot;
 *                                              x <- f * (x >> shift) + slot - cdf; while x < L: x <- x * 256 + next
 * An escaped value is coded right after its escape bin as a symbol of frequency 1 out of 2**16. The state
 * stays in [L, 256 L) = [2**23, 2**31); the decoder must end at x == L having read every byte. */
#define L32 (1u << 23)

static void put_symbol32(uint32_t *x, uint8_t **out, uint32_t f, uint32_t cdf, unsigned shift) {
    uint32_t x_max = ((L32 >> shift) << 8) * f;
    while (*x >= x_max) {
        *--*out = (uint8_t)(*x & 0xFF);
        *x >>= 8;
    }
    *x = ((*x / f) << shift) + (*x % f) + cdf;
}

/* encode_stream32(freqs, cdfs, escaped, raw, shift) -> bytes (codec version 3). */
static PyObject *encode_stream32(PyObject *self, PyObject *args) {
    Py_buffer fb, cb, eb, rb;
    unsigned int shift;
    if (!PyArg_ParseTuple(args, "y*y*y*y*I", &fb, &cb, &eb, &rb, &shift)) return NULL;
    PyObject *result = NULL;
    uint8_t *buf = NULL;
    Py_ssize_t n = eb.len;
    if (shift == 0 || shift > 16) {
        PyErr_SetString(PyExc_ValueError, "shift must be in 1..16");
        goto done;
    }
    if (check_buffer(&fb, 8, n, "freqs") < 0 || check_buffer(&cb, 8, n, "cdfs") < 0 || check_buffer(&rb, 8, n, "raw") < 0)
        goto done;
    /* at most 4 bytes per symbol (its bits plus a raw value) and the 4-byte state */
    Py_ssize_t cap = 4 * n + 8;
    buf = PyMem_Malloc((size_t)cap);
    if (!buf) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *freqs = fb.buf, *cdfs = cb.buf, *raw = rb.buf;
    const uint8_t *escaped = eb.buf;
    uint8_t *end = buf + cap, *out = end;
    uint32_t x = L32;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        int64_t f = freqs[i], cdf = cdfs[i];
        if (f <= 0 || cdf < 0 || f + cdf > ((int64_t)1 << shift)) {
            PyErr_SetString(PyExc_ValueError, "frequency table entry out of range");
            goto done;
        }
        if (escaped[i]) put_symbol32(&x, &out, 1, (uint32_t)(raw[i] & 0xFFFF), RAW_BITS);
        put_symbol32(&x, &out, (uint32_t)f, (uint32_t)cdf, shift);
    }
    for (int k = 0; k < 4; k++) {
        *--out = (uint8_t)(x & 0xFF);
        x >>= 8;
    }
    result = PyBytes_FromStringAndSize((const char *)out, end - out);
done:
    PyMem_Free(buf);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&eb);
    PyBuffer_Release(&rb);
    return result;
}

/* decode_stream32(data, out, hw, cdfs, orders, lengths, offsets, shift) -> int
 * The inverse of encode_stream32 into out (all len(out) symbols). Returns 0, or what is wrong: 2 truncated
 * or a first state out of range, 4 the state did not return to L, 5 trailing bytes. */
static PyObject *decode_stream32(PyObject *self, PyObject *args) {
    Py_buffer db, ob, cb, rb, lb, fb;
    Py_ssize_t hw, channels, width;
    unsigned int shift;
    if (!PyArg_ParseTuple(args, "y*w*ny*y*y*y*I", &db, &ob, &hw, &cb, &rb, &lb, &fb, &shift)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ob.len / 4, pos = 4, len = db.len, status = 0;
    const uint8_t *data = db.buf;
    if (shift == 0 || shift > 16 || hw <= 0) {
        PyErr_SetString(PyExc_ValueError, "invalid decode arguments");
        goto done;
    }
    if (check_decode(&cb, &rb, &lb, &fb, &ob, hw, &channels, &width, &n) < 0) goto done;
    const int64_t *cdfs = cb.buf, *orders = rb.buf, *lengths = lb.buf, *offsets = fb.buf;
    int32_t *values = ob.buf;
    const uint32_t total = 1u << shift, mask = total - 1;
    uint32_t x = 0;
    if (len < 4) {
        status = 2;
        goto finish;
    }
    x = (uint32_t)data[0] << 24 | (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
    if (x < L32 || x >= (L32 << 8)) {
        status = 2;
        goto finish;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t ch = k / hw, tlen = (Py_ssize_t)lengths[ch];
        if (tlen < 2 || tlen > width) {
            PyErr_SetString(PyExc_ValueError, "table length out of range");
            goto done;
        }
        const int64_t *cdf = cdfs + ch * width, *order = orders + ch * width;
        uint32_t slot = x & mask;
        /* last s with cdf[s] <= slot: bins run by falling frequency, so a scan from the front ends
         * after one or two steps for most symbols (a binary search took twice as long) */
        Py_ssize_t lo = 0;
        while (lo + 1 < tlen && (uint32_t)cdf[lo + 1] <= slot) lo++;
        uint32_t f = (lo + 1 < tlen ? (uint32_t)cdf[lo + 1] : total) - (uint32_t)cdf[lo];
        x = f * (x >> shift) + slot - (uint32_t)cdf[lo];
        while (x < L32) {
            if (pos >= len) {
                status = 2;
                goto finish;
            }
            x = (x << 8) | data[pos++];
        }
        if (order[lo] == tlen - 1) {
            values[k] = (int32_t)(x & 0xFFFF) - RAW_HALF;
            x >>= RAW_BITS;
            while (x < L32) {
                if (pos >= len) {
                    status = 2;
                    goto finish;
                }
                x = (x << 8) | data[pos++];
            }
        } else {
            values[k] = (int32_t)(order[lo] + offsets[ch]);
        }
    }
    if (x != L32) status = 4;
    else if (pos != len) status = 5;
finish:
    result = PyLong_FromSsize_t(status);
done:
    PyBuffer_Release(&db);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&cb);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&lb);
    PyBuffer_Release(&fb);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_chunks", encode_chunks, METH_VARARGS, "Encode a whole stream of chunks; see codec.encode_symbols."},
    {"decode_chunks", decode_chunks, METH_VARARGS, "Decode a whole stream of chunks in place; see codec.decode_symbols."},
    {"encode_stream32", encode_stream32, METH_VARARGS, "Encode a stream with the 32-bit state (codec version 3)."},
    {"decode_stream32", decode_stream32, METH_VARARGS, "Decode a 32-bit-state stream in place (codec version 3)."},
    {NULL, NULL, 0, NULL},
};


static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans", "rANS inner loops in C.", -1, methods};

PyMODINIT_FUNC PyInit__rans(void) { return PyModule_Create(&module); }
