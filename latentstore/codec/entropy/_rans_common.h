/* What the SIMD rANS decoders _rans_simd.c (bitstream v2) and _rans3_simd.c (v3) share, in one place:
 * the parts that are the same logic in both, none of them a decoding kernel (those differ: 32-bit lanes
 * and per-slot tables in v2, 64-bit lanes and packed rows with a 2-D context in v3).
 * - the includes, HAVE_X86 and the ISA codes Python passes (rans_simd.ISA_CODES), and isa_supported:
 *   the cpuid check of a code (the AVX-512 features it needs are the including file's);
 * - the lane index at the head of a payload, the same in v2 and v3 (read_lane_index), with the error
 *   codes of rans_kernels_cpu._read_index and rans3_reference, and the end-of-lane check (codes 6, 7);
 * - the Python glue: the checks both decode_range wrappers end with, the padded copy of the payload
 *   bytes, buffer release and the error, `supported` and the method table (RANS_MODULE_DEF, after the
 *   including file's py_decode_range).
 * The including file defines, before the #include: MODULE_NAME (e.g. "_rans_simd", for messages and
 * the module) and AVX512_SUPPORTED() (the cpuid test of its AVX-512 kernels' features). Everything is
 * static: each extension compiles its own copy. */
#ifndef LATENTSTORE_RANS_COMMON_H
#define LATENTSTORE_RANS_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define HAVE_X86 1
#include <immintrin.h>
#endif

#if !defined(MODULE_NAME) || !defined(AVX512_SUPPORTED)
#error "define MODULE_NAME and AVX512_SUPPORTED() before including _rans_common.h"
#endif

enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 }; /* rans_simd.ISA_CODES */

#define MAX_LANES 255 /* K is one byte */
#define PAD 8         /* zero bytes behind the decoders' copy of the payload bytes */

/* ---------------------------------------------------------------------------- the payload */
/* The lane index of the payload data[start:stop]: K (one byte, 1..min(most, 255)), lane 0's word count
 * (an LEB128 varint of at most 5 bytes), each further lane's count as a zigzag varint delta, then the
 * lanes in order, each a 4-byte little-endian state and its 16-bit words, ending the payload exactly.
 * Returns K and fills state[k] and ptr[k], end[k] (offsets in data of lane k's first word and its end);
 * or returns 0 with *code, *lane set: 1 empty, 2 K out of range, 3 varint truncated or over-long (lane),
 * 4 negative count (lane), 5 wrong payload length; the codes and checks, in their order, of
 * rans_kernels_cpu._read_index (v2) and rans3_reference.decode_reference (v3). most: lanes the shape
 * allows (v2: columns C * w; v3: rows C * h). */
static int64_t read_lane_index(const uint8_t *data, int64_t start, int64_t stop, int64_t most, int64_t *ptr,
                               int64_t *end, int64_t *state, int64_t *code, int64_t *lane) {
    *code = 0;
    *lane = 0;
    if (stop <= start) { *code = 1; return 0; }
    int64_t K = data[start];
    if (K < 1 || K > (most < MAX_LANES ? most : MAX_LANES)) { *code = 2; return 0; }
    int64_t pos = start + 1, m = 0, total = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t v = 0;
        int ok = 0;
        for (int b = 0; b < 5; b++) {
            if (pos >= stop) break;
            int64_t byte = data[pos++];
            v |= (byte & 0x7F) << (7 * b);
            if (byte < 0x80) { ok = 1; break; }
        }
        if (!ok) { *code = 3; *lane = k; return 0; }
        m = k == 0 ? v : m + ((v >> 1) ^ -(v & 1));
        if (m < 0) { *code = 4; *lane = k; return 0; }
        end[k] = m; /* the word count, for now */
        total += 4 + 2 * m;
    }
    if (pos + total != stop) { *code = 5; return 0; }
    for (int64_t k = 0; k < K; k++) {
        int64_t nw = end[k];
        state[k] = (int64_t)data[pos] | ((int64_t)data[pos + 1] << 8) | ((int64_t)data[pos + 2] << 16)
                   | ((int64_t)data[pos + 3] << 24);
        ptr[k] = pos + 4;
        end[k] = pos + 4 + 2 * nw;
        pos = end[k];
    }
    return K;
}

/* A decoded lane's code: 6 if it left words unread (its offset p short of its end), else 7 if its final
 * state x is not 0 (where the encoder started), else 0. */
static inline int64_t lane_end_code(int64_t p, int64_t end, uint64_t x) { return p != end ? 6 : x != 0 ? 7 : 0; }

/* err[i] = (code, lane): the (N, 2) int64 array both decoders fill. */
static inline void set_err(int64_t *err, int64_t i, int64_t code, int64_t lane) {
    err[2 * i] = code;
    err[2 * i + 1] = lane;
}

/* ---------------------------------------------------------------------------------- Python */
static int isa_supported(int isa) {
    if (isa == ISA_SCALAR) return 1;
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (isa == ISA_AVX2) return __builtin_cpu_supports("avx2");
    if (isa == ISA_AVX512) return AVX512_SUPPORTED();
#endif
    return 0;
}

static PyObject *py_supported(PyObject *self, PyObject *args) {
    (void)self;
    int isa;
    if (!PyArg_ParseTuple(args, "i", &isa)) return NULL;
    return PyBool_FromLong(isa_supported(isa));
}

/* The checks both decode_range wrappers end with, in this order: the ISA, then samples i0..i1-1's
 * offsets (increasing, within the len bytes of data; off has i1 + 1 entries, checked before). NULL
 * when fine, else the message. */
static const char *check_isa_offsets(int isa, const int64_t *off, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t len) {
    if (!isa_supported(isa)) return "this CPU does not support the requested ISA";
    for (Py_ssize_t i = i0; i < i1; i++)
        if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > len) return "offsets are not increasing within data";
    return NULL;
}

/* A malloc'ed copy of src[0:len) with PAD zero bytes behind (the kernels' wide word loads may read past a
 * lane's end, never past the copy; those bytes are never used), or NULL. */
static uint8_t *padded_copy(const void *src, int64_t len) {
    uint8_t *p = (uint8_t *)malloc((size_t)len + PAD);
    if (p) {
        memcpy(p, src, (size_t)len);
        memset(p + len, 0, PAD);
    }
    return p;
}

/* decode_range's end: release the n buffers it holds, then None, or RuntimeError("<module>.decode_range: bad"). */
static PyObject *decode_return(const char *bad, Py_buffer *const *held, int n) {
    for (int j = 0; j < n; j++) PyBuffer_Release(held[j]);
    if (bad) {
        PyErr_Format(PyExc_RuntimeError, "%s.decode_range: %s", MODULE_NAME, bad);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The module's methods and definition (PyInit_<module> stays in the including file). */
#define RANS_MODULE_DEF(DOC, DECODE_DOC)                                                                    \
    static PyMethodDef methods[] = {                                                                       \
        {"decode_range", py_decode_range, METH_VARARGS, DECODE_DOC},                                       \
        {"supported", py_supported, METH_VARARGS, "supported(isa) -> whether this CPU runs that ISA code"}, \
        {NULL, NULL, 0, NULL}};                                                                             \
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, MODULE_NAME, DOC, -1, methods,              \
                                        NULL, NULL, NULL, NULL};

#endif
