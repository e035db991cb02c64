/* SIMD decoder of `latentstore.rans` (bitstream v2; the format: rans_v2.py's docstring, defined by
 * rans_reference.py). Bit-identical to the numba decoder (rans_kernels_cpu.decode_range), including
 * the (error code, lane) it reports for a damaged payload. Python wrapper: rans_simd.py. No format
 * change: the existing lanes are decoded as they are.
 *
 * Why it looks the way it does:
 * - A format lane ("chain") of a sample owns one SIMD lane for the whole sample. A sample has only
 *   K = 4/8/16 lanes, so the chains of consecutive samples with the same K form a run (up to MAXCH
 *   chains), cut into blocks of CAP = 64 chains: 4 AVX-512 registers (8 AVX2 ones) whose
 *   independent dependency chains hide each other's latency. Column groups are the outer loop: every
 *   chain of the run decodes group j0 (format order: j0 = 0, K, 2K, ...) before any decodes the
 *   next, so the tables of the group's channel stay cached across the batch. Lanes idle only in the
 *   last, partial group (masked) and in the last block.
 * - Three step kernels, picked per column group:
 *   scan   (AVX-512BW, L <= 7, the group's lanes in one or two channels; the shipped codecs): no table
 *          gather at all. sym = #{s >= 1 : cum[ctx][s] <= slot}, each cum[ctx][s] a register permute
 *          by the lane's context; freq and cum[sym] a permute at ctx * 8 + sym.
 *   gather (AVX-512F or AVX2, any L and channel mix): one 32-bit entry per (channel, context, slot),
 *          freq << 16 | sym << 12 | (slot - cum[sym]), one gather a step:
 *              e = T[row + (x & 4095)]; x = (e >> 16) * (x >> 12) + (e & 4095); row = chan + (e & 0xF000).
 *          Measured: that gather misses L1 (7 rows x 16 KB per channel) and was most of the time,
 *          which is why the scan kernel exists.
 *   scalar (any CPU): the same step, one lane at a time.
 *   Every quantity fits in 32 bits, for damaged bytes too: freq <= 4096, x >> 12 < 2**20 and the bias
 *   (slot - cum[sym]) < freq, so x < 2**32; a word is shifted in only when x < 2**16.
 * - Renormalisation words: see the comment above the SIMD kernels (two words per lane per gather).
 * - Symbols go to a small tile tmp[y][slot] (one store per vector and row), then out to the (C, h, w)
 *   image a run of neighbouring columns at a time (16/8/4 bytes per row).
 * - Runtime dispatch (cpuid, at import and per call): the ISA code comes from Python. Functions carry
 *   target attributes, so the module builds with plain -O3 (no -march) and runs on any x86-64.
 * - The GIL is released while decoding: loader threads decode in parallel.
 * Nothing is raised inside the decoder: errors go to err[i] = (code, lane) as in numba.
 * Shared with the v3 decoder (_rans3_simd.c), in _rans_common.h: the lane index parser, the
 * end-of-lane check, the ISA codes and their cpuid check, and the Python glue around decode_range. */
#define MODULE_NAME "_rans_simd"
#define AVX512_SUPPORTED() __builtin_cpu_supports("avx512f") /* the gather kernel; scan: has_avx512bw */
#include "_rans_common.h"

#define CAP 64  /* chains per block: 4 AVX-512 registers */
#define YT 32   /* rows per tile */
#define MASK 4095u
#ifndef SCAN_NV
#define SCAN_NV 4 /* registers per scan kernel call */
#endif

static int has_avx512bw; /* set at import: the scan kernel needs AVX512BW's vpermt2w */

typedef struct { /* a block of CAP chains of a run: chain g = b * K + k is slot g % CAP of block g / CAP */
    uint32_t x[CAP];    /* state */
    int32_t p2[CAP];    /* offset of the lane's next word, minus 2 */
    int32_t e2[CAP];    /* offset of the lane's end, minus 2 */
    int32_t row[CAP];   /* (table row << 12) of the next symbol: channel base + context */
    int32_t tb[CAP];    /* (channel's first row << 12) in this column group */
    int32_t act[CAP];   /* -1 if the chain has a column in this group (scan: and in the channel decoded) */
    int32_t k[CAP];     /* lane index within its sample */
    int64_t base[CAP];  /* offset of the chain's sample in out */
    int64_t ob[CAP];    /* offset of the column's top in out */
} block_t;

typedef struct { /* one channel's tables for the scan kernel (L <= 7); built by rans_simd.py */
    uint32_t cumv[6][16]; /* cumv[s - 1][ctx] = cum[ctx][s], 4096 where s >= L (never <= a slot) */
    uint16_t fr[64];      /* fr[ctx * 8 + sym] = freq[ctx][sym] */
    uint16_t lo[64];      /* lo[ctx * 8 + sym] = cum[ctx][sym] */
    uint32_t fl[64];      /* fl[ctx * 8 + sym] = freq[ctx][sym] << 16 | cum[ctx][sym] (AVX2: one L1 gather) */
} chan_t;

typedef struct {
    const uint8_t *data;
    const uint32_t *tab;
    const chan_t *chans; /* NULL: no scan kernel (L > 7) */
    uint8_t *out;
    int64_t L, C, h, w;
} dec_t;

/* ------------------------------------------------------------------------------ step kernels */
static void steps_scalar(block_t *J, int s0, int ns, int ny, const uint32_t *tab, const uint8_t *data,
                         uint8_t *tmp) {
    for (int y = 0; y < ny; y++) {
        uint8_t *t = tmp + (size_t)y * CAP;
        for (int s = s0; s < s0 + ns; s++) {
            if (!J->act[s]) continue;
            uint32_t x = J->x[s];
            uint32_t e = tab[(uint32_t)J->row[s] + (x & MASK)];
            x = (e >> 16) * (x >> 12) + (e & MASK);
            J->row[s] = J->tb[s] + (int32_t)(e & 0xF000u);
            t[s] = (uint8_t)((e >> 12) & 15u);
            if (x < 65536u && J->p2[s] < J->e2[s]) {
                const uint8_t *q = data + J->p2[s] + 2;
                x = (x << 16) | (uint32_t)q[0] | ((uint32_t)q[1] << 8);
                J->p2[s] += 2;
            }
            J->x[s] = x;
        }
    }
}

#ifdef HAVE_X86
/* Renormalisation words, in every SIMD kernel: each lane's next TWO words (one dword gather at the
 * lane's read offset, base data + 2 since p2 = offset - 2) are loaded every second step, enough for
 * two steps as a lane reads at most one word a step; a lane that reads takes the low half and shifts
 * the high half down. One gather per two steps instead of one per step: gathers are what costs
 * (a masked gather costs about the same with few lanes set). With one word left the dword reads two
 * bytes past the lane, never past the (padded) data; those bytes are never used. */

/* The gather step: one table gather per step (any L, any mix of channels in a vector). */
static inline __attribute__((always_inline, target("avx512f")))
void steps512_body(block_t *J, int s0, int ny, const uint32_t *tab, const uint8_t *data, uint8_t *tmp, const int nv) {
    __m512i x[4], p[4], e[4], row[4], tb[4], nw[4];
    __mmask16 act[4];
    const __m512i m12 = _mm512_set1_epi32(MASK), mctx = _mm512_set1_epi32(0xF000), m4 = _mm512_set1_epi32(15);
    const __m512i m16 = _mm512_set1_epi32(0xFFFF), low = _mm512_set1_epi32(65536), two = _mm512_set1_epi32(2);
    const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 16 * v;
        x[v] = _mm512_loadu_si512(J->x + s);
        p[v] = _mm512_loadu_si512(J->p2 + s);
        e[v] = _mm512_loadu_si512(J->e2 + s);
        row[v] = _mm512_loadu_si512(J->row + s);
        tb[v] = _mm512_loadu_si512(J->tb + s);
        act[v] = _mm512_cmpneq_epi32_mask(_mm512_loadu_si512(J->act + s), zero);
        nw[v] = zero;
    }
    for (int y = 0; y < ny; y++) {
        uint8_t *t = tmp + (size_t)y * CAP + s0;
        if (!(y & 1))
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                nw[v] = _mm512_mask_i32gather_epi32(zero, _mm512_mask_cmplt_epi32_mask(act[v], p[v], e[v]), p[v],
                                                    data + 2, 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512i idx = _mm512_add_epi32(row[v], _mm512_and_si512(x[v], m12));
            __m512i en = _mm512_mask_i32gather_epi32(zero, act[v], idx, tab, 4);
            __m512i xn = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_srli_epi32(en, 16), _mm512_srli_epi32(x[v], 12)),
                                          _mm512_and_si512(en, m12));
            row[v] = _mm512_mask_add_epi32(row[v], act[v], tb[v], _mm512_and_si512(en, mctx));
            _mm_storeu_si128((__m128i *)(t + 16 * v), _mm512_cvtepi32_epi8(_mm512_and_si512(_mm512_srli_epi32(en, 12), m4)));
            __mmask16 k = _mm512_mask_cmplt_epu32_mask(act[v], xn, low);
            k = _mm512_mask_cmplt_epi32_mask(k, p[v], e[v]);
            xn = _mm512_mask_or_epi32(xn, k, _mm512_slli_epi32(xn, 16), _mm512_and_si512(nw[v], m16));
            nw[v] = _mm512_mask_srli_epi32(nw[v], k, nw[v], 16);
            p[v] = _mm512_mask_add_epi32(p[v], k, p[v], two);
            x[v] = _mm512_mask_mov_epi32(x[v], act[v], xn);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 16 * v;
        _mm512_storeu_si512(J->x + s, x[v]);
        _mm512_storeu_si512(J->p2 + s, p[v]);
        _mm512_storeu_si512(J->row + s, row[v]);
    }
}

static inline __attribute__((always_inline, target("avx2")))
void steps256_body(block_t *J, int s0, int ny, const uint32_t *tab, const uint8_t *data, uint8_t *tmp, const int nv) {
    __m256i x[4], p[4], e[4], row[4], tb[4], act[4], nw[4];
    const __m256i m12 = _mm256_set1_epi32(MASK), mctx = _mm256_set1_epi32(0xF000), m4 = _mm256_set1_epi32(15);
    const __m256i m16 = _mm256_set1_epi32(0xFFFF), zero = _mm256_setzero_si256();
    /* byte 0 of each dword -> bytes 0..3 of each 128-bit half, then dwords 0 and 4 -> the low 64 bits */
    const __m256i pack = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i lo2 = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 8 * v;
        x[v] = _mm256_loadu_si256((const __m256i *)(J->x + s));
        p[v] = _mm256_loadu_si256((const __m256i *)(J->p2 + s));
        e[v] = _mm256_loadu_si256((const __m256i *)(J->e2 + s));
        row[v] = _mm256_loadu_si256((const __m256i *)(J->row + s));
        tb[v] = _mm256_loadu_si256((const __m256i *)(J->tb + s));
        act[v] = _mm256_loadu_si256((const __m256i *)(J->act + s));
        nw[v] = zero;
    }
    for (int y = 0; y < ny; y++) {
        uint8_t *t = tmp + (size_t)y * CAP + s0;
        if (!(y & 1))
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                nw[v] = _mm256_mask_i32gather_epi32(zero, (const int *)(data + 2), p[v],
                                                    _mm256_and_si256(act[v], _mm256_cmpgt_epi32(e[v], p[v])), 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m256i idx = _mm256_add_epi32(row[v], _mm256_and_si256(x[v], m12));
            __m256i en = _mm256_mask_i32gather_epi32(zero, (const int *)tab, idx, act[v], 4);
            __m256i xn = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(en, 16), _mm256_srli_epi32(x[v], 12)),
                                          _mm256_and_si256(en, m12));
            row[v] = _mm256_blendv_epi8(row[v], _mm256_add_epi32(tb[v], _mm256_and_si256(en, mctx)), act[v]);
            __m256i sym = _mm256_permutevar8x32_epi32(
                _mm256_shuffle_epi8(_mm256_and_si256(_mm256_srli_epi32(en, 12), m4), pack), lo2);
            _mm_storel_epi64((__m128i *)(t + 8 * v), _mm256_castsi256_si128(sym));
            __m256i k = _mm256_and_si256(act[v], _mm256_cmpeq_epi32(_mm256_srli_epi32(xn, 16), zero));
            k = _mm256_and_si256(k, _mm256_cmpgt_epi32(e[v], p[v]));
            xn = _mm256_blendv_epi8(xn, _mm256_or_si256(_mm256_slli_epi32(xn, 16), _mm256_and_si256(nw[v], m16)), k);
            nw[v] = _mm256_blendv_epi8(nw[v], _mm256_srli_epi32(nw[v], 16), k);
            x[v] = _mm256_blendv_epi8(x[v], xn, act[v]);
            p[v] = _mm256_sub_epi32(p[v], _mm256_add_epi32(k, k));
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 8 * v;
        _mm256_storeu_si256((__m256i *)(J->x + s), x[v]);
        _mm256_storeu_si256((__m256i *)(J->p2 + s), p[v]);
        _mm256_storeu_si256((__m256i *)(J->row + s), row[v]);
    }
}

#define STEPS(ISA, W, NV) \
    __attribute__((target(ISA), noinline)) static void steps##W##_##NV(block_t *J, int s0, int ny, \
        const uint32_t *tab, const uint8_t *data, uint8_t *tmp) { steps##W##_body(J, s0, ny, tab, data, tmp, NV); }
STEPS("avx512f", 512, 1) STEPS("avx512f", 512, 2) STEPS("avx512f", 512, 3) STEPS("avx512f", 512, 4)
STEPS("avx2", 256, 1) STEPS("avx2", 256, 2) STEPS("avx2", 256, 3) STEPS("avx2", 256, 4)

typedef void (*steps_fn)(block_t *, int, int, const uint32_t *, const uint8_t *, uint8_t *);
static const steps_fn STEPS512[4] = {steps512_1, steps512_2, steps512_3, steps512_4};
static const steps_fn STEPS256[4] = {steps256_1, steps256_2, steps256_3, steps256_4};

/* The gather-free step for one channel's lanes when L <= 7 (AVX-512BW): the table gather misses the
 * L1 cache (7 rows x 16 KB per channel) and is most of the gather kernel's time. Here
 * sym = #{s >= 1 : cum[ctx][s] <= slot}, each cum[ctx][s] a register permute by the lane's context
 * (vpermd over 16 contexts), then freq[ctx][sym] and cum[ctx][sym] by a two-register permute of
 * 16-bit entries at ctx * 8 + sym (vpermt2w over 64). act selects the lanes of the channel: a column
 * group over two channels runs the block once per channel (`partial`: masked symbol stores). */
static inline __attribute__((always_inline, target("avx512f,avx512bw")))
void scan512_body(block_t *J, int s0, int ny, const chan_t *ch, const uint8_t *data, uint8_t *tmp, int partial,
                  const int nv, const int ns) {
    __m512i x[4], ctx[4], tb[4], p[4], e[4], nw[4], cv[6];
    __mmask16 act[4];
    const __m512i m12 = _mm512_set1_epi32(MASK), m16 = _mm512_set1_epi32(0xFFFF), one = _mm512_set1_epi32(1);
    const __m512i low = _mm512_set1_epi32(65536), two = _mm512_set1_epi32(2), zero = _mm512_setzero_si512();
    const __m512i F0 = _mm512_loadu_si512(ch->fr), F1 = _mm512_loadu_si512(ch->fr + 32);
    const __m512i C0 = _mm512_loadu_si512(ch->lo), C1 = _mm512_loadu_si512(ch->lo + 32);
#pragma GCC unroll 6
    for (int s = 0; s < ns; s++) cv[s] = _mm512_loadu_si512(ch->cumv[s]);
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 16 * v;
        x[v] = _mm512_loadu_si512(J->x + s);
        p[v] = _mm512_loadu_si512(J->p2 + s);
        e[v] = _mm512_loadu_si512(J->e2 + s);
        tb[v] = _mm512_loadu_si512(J->tb + s);
        ctx[v] = _mm512_srli_epi32(_mm512_sub_epi32(_mm512_loadu_si512(J->row + s), tb[v]), 12);
        act[v] = _mm512_cmpneq_epi32_mask(_mm512_loadu_si512(J->act + s), zero);
        nw[v] = zero;
    }
    for (int y = 0; y < ny; y++) {
        uint8_t *t = tmp + (size_t)y * CAP + s0;
        if (!(y & 1))
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                nw[v] = _mm512_mask_i32gather_epi32(zero, _mm512_mask_cmplt_epi32_mask(act[v], p[v], e[v]), p[v],
                                                    data + 2, 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m512i slot = _mm512_and_si512(x[v], m12), sym = zero;
#pragma GCC unroll 6
            for (int s = 0; s < ns; s++)
                sym = _mm512_mask_add_epi32(sym, _mm512_cmple_epu32_mask(_mm512_permutexvar_epi32(ctx[v], cv[s]), slot),
                                            sym, one);
            __m512i i2 = _mm512_add_epi32(_mm512_slli_epi32(ctx[v], 3), sym);
            __m512i f = _mm512_and_si512(_mm512_permutex2var_epi16(F0, i2, F1), m16);
            __m512i lo = _mm512_and_si512(_mm512_permutex2var_epi16(C0, i2, C1), m16);
            __m512i xn = _mm512_sub_epi32(_mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srli_epi32(x[v], 12)), slot), lo);
            ctx[v] = _mm512_mask_mov_epi32(ctx[v], act[v], sym);
            if (partial)
                _mm512_mask_cvtepi32_storeu_epi8(t + 16 * v, act[v], sym);
            else
                _mm_storeu_si128((__m128i *)(t + 16 * v), _mm512_cvtepi32_epi8(sym));
            __mmask16 k = _mm512_mask_cmplt_epu32_mask(act[v], xn, low);
            k = _mm512_mask_cmplt_epi32_mask(k, p[v], e[v]);
            xn = _mm512_mask_or_epi32(xn, k, _mm512_slli_epi32(xn, 16), _mm512_and_si512(nw[v], m16));
            nw[v] = _mm512_mask_srli_epi32(nw[v], k, nw[v], 16);
            p[v] = _mm512_mask_add_epi32(p[v], k, p[v], two);
            x[v] = _mm512_mask_mov_epi32(x[v], act[v], xn);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 16 * v;
        _mm512_storeu_si512(J->x + s, x[v]);
        _mm512_storeu_si512(J->p2 + s, p[v]);
        _mm512_storeu_si512(J->row + s, _mm512_add_epi32(tb[v], _mm512_slli_epi32(ctx[v], 12)));
    }
}

#define SCAN(NV, NS) \
    __attribute__((target("avx512f,avx512bw"), noinline)) static void scan512_##NV##_##NS(block_t *J, int s0, int ny, \
        const chan_t *ch, const uint8_t *data, uint8_t *tmp, int partial) { \
        scan512_body(J, s0, ny, ch, data, tmp, partial, NV, NS); }
#define SCAN_NS(NS) SCAN(1, NS) SCAN(2, NS) SCAN(3, NS) SCAN(4, NS)
SCAN_NS(1) SCAN_NS(2) SCAN_NS(3) SCAN_NS(4) SCAN_NS(5) SCAN_NS(6)
typedef void (*scan_fn)(block_t *, int, int, const chan_t *, const uint8_t *, uint8_t *, int);
#define SCAN_ROW(NS) {scan512_1_##NS, scan512_2_##NS, scan512_3_##NS, scan512_4_##NS}
static const scan_fn SCAN512[6][4] = {SCAN_ROW(1), SCAN_ROW(2), SCAN_ROW(3), SCAN_ROW(4), SCAN_ROW(5), SCAN_ROW(6)};

/* The scan step in AVX2 (8 lanes): the same symbol search by register permutes (vpermd over 8
 * contexts); freq and cum[sym] come from one gather of a 256-byte table (always in L1). */
static inline __attribute__((always_inline, target("avx2")))
void scan256_body(block_t *J, int s0, int ny, const chan_t *ch, const uint8_t *data, uint8_t *tmp, int partial,
                  const int nv, const int ns) {
    __m256i x[4], ctx[4], p[4], e[4], nw[4], act[4], cv[6];
    const __m256i m12 = _mm256_set1_epi32(MASK), m16 = _mm256_set1_epi32(0xFFFF), zero = _mm256_setzero_si256();
    const __m256i nsv = _mm256_set1_epi32(ns);
    const __m256i pack = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i lo2 = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
#pragma GCC unroll 6
    for (int s = 0; s < ns; s++) cv[s] = _mm256_loadu_si256((const __m256i *)ch->cumv[s]);
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 8 * v;
        x[v] = _mm256_loadu_si256((const __m256i *)(J->x + s));
        p[v] = _mm256_loadu_si256((const __m256i *)(J->p2 + s));
        e[v] = _mm256_loadu_si256((const __m256i *)(J->e2 + s));
        ctx[v] = _mm256_srli_epi32(_mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(J->row + s)),
                                                    _mm256_loadu_si256((const __m256i *)(J->tb + s))), 12);
        act[v] = _mm256_loadu_si256((const __m256i *)(J->act + s));
        nw[v] = zero;
    }
    for (int y = 0; y < ny; y++) {
        uint8_t *t = tmp + (size_t)y * CAP + s0;
        if (!(y & 1))
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                nw[v] = _mm256_mask_i32gather_epi32(zero, (const int *)(data + 2), p[v],
                                                    _mm256_and_si256(act[v], _mm256_cmpgt_epi32(e[v], p[v])), 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m256i slot = _mm256_and_si256(x[v], m12), sym = nsv;
#pragma GCC unroll 6
            for (int s = 0; s < ns; s++) /* minus one for every cum[ctx][s] above the slot */
                sym = _mm256_add_epi32(sym, _mm256_cmpgt_epi32(_mm256_permutevar8x32_epi32(cv[s], ctx[v]), slot));
            __m256i fl = _mm256_mask_i32gather_epi32(zero, (const int *)ch->fl,
                                                     _mm256_add_epi32(_mm256_slli_epi32(ctx[v], 3), sym), act[v], 4);
            __m256i xn = _mm256_sub_epi32(_mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(fl, 16),
                                                                              _mm256_srli_epi32(x[v], 12)), slot),
                                          _mm256_and_si256(fl, m16));
            ctx[v] = _mm256_blendv_epi8(ctx[v], sym, act[v]);
            __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(sym, pack), lo2));
            if (partial) { /* keep the bytes of the other channel's lanes */
                __m128i keep = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(act[v], pack), lo2));
                b = _mm_blendv_epi8(_mm_loadl_epi64((const __m128i *)(t + 8 * v)), b, keep);
            }
            _mm_storel_epi64((__m128i *)(t + 8 * v), b);
            __m256i k = _mm256_and_si256(act[v], _mm256_cmpeq_epi32(_mm256_srli_epi32(xn, 16), zero));
            k = _mm256_and_si256(k, _mm256_cmpgt_epi32(e[v], p[v]));
            xn = _mm256_blendv_epi8(xn, _mm256_or_si256(_mm256_slli_epi32(xn, 16), _mm256_and_si256(nw[v], m16)), k);
            nw[v] = _mm256_blendv_epi8(nw[v], _mm256_srli_epi32(nw[v], 16), k);
            x[v] = _mm256_blendv_epi8(x[v], xn, act[v]);
            p[v] = _mm256_sub_epi32(p[v], _mm256_add_epi32(k, k));
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        int s = s0 + 8 * v;
        _mm256_storeu_si256((__m256i *)(J->x + s), x[v]);
        _mm256_storeu_si256((__m256i *)(J->p2 + s), p[v]);
        _mm256_storeu_si256((__m256i *)(J->row + s), _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(J->tb + s)),
                                                                      _mm256_slli_epi32(ctx[v], 12)));
    }
}

#define SCAN2(NV, NS) \
    __attribute__((target("avx2"), noinline)) static void scan256_##NV##_##NS(block_t *J, int s0, int ny, \
        const chan_t *ch, const uint8_t *data, uint8_t *tmp, int partial) { \
        scan256_body(J, s0, ny, ch, data, tmp, partial, NV, NS); }
#define SCAN2_NS(NS) SCAN2(1, NS) SCAN2(2, NS) SCAN2(3, NS) SCAN2(4, NS)
SCAN2_NS(1) SCAN2_NS(2) SCAN2_NS(3) SCAN2_NS(4) SCAN2_NS(5) SCAN2_NS(6)
#define SCAN2_ROW(NS) {scan256_1_##NS, scan256_2_##NS, scan256_3_##NS, scan256_4_##NS}
static const scan_fn SCAN256[6][4] = {SCAN2_ROW(1), SCAN2_ROW(2), SCAN2_ROW(3), SCAN2_ROW(4), SCAN2_ROW(5),
                                      SCAN2_ROW(6)};
#endif

/* ------------------------------------------------------------------------------------ runs */
/* Decode a run of nch chains (blocks of CAP, all with the same K) over every column group into d->out.
 * Groups are the outer loop: every chain of the run decodes group j0 before any decodes the next, so
 * the tables of the group's channel (112 KB at L = 6) are reused by the whole batch while cached. */
static void run_chains(const dec_t *d, block_t *blocks, int64_t nch, int64_t K, int isa) {
    uint8_t tmp[YT * CAP];
    int32_t tbk[256], onk[256];
    int64_t offk[256], ck[256], xk[256];
    const int64_t L = d->L, h = d->h, w = d->w, hw = h * w, ncol = d->C * w;
    const int64_t nblk = (nch + CAP - 1) / CAP;
    for (int64_t k = 0; k < K; k++) {
        ck[k] = k / w;
        xk[k] = k % w;
    }
    for (int64_t j0 = 0; j0 < ncol; j0 += K) {
        for (int64_t k = 0; k < K; k++) { /* lane k's column in this group: channel ck, x xk */
            onk[k] = j0 + k < ncol ? -1 : 0;
            tbk[k] = (int32_t)((ck[k] * (L + 1)) << 12);
            offk[k] = ck[k] * hw + xk[k];
        }
        int64_t cmin = ck[0], cmax = ck[(ncol - j0 < K ? ncol - j0 : K) - 1];
        int scan = ((isa == ISA_AVX512 && has_avx512bw) || isa == ISA_AVX2) && d->chans && L >= 2 && L <= 7
                   && cmax - cmin <= 1;
        for (int64_t bi = 0; bi < nblk; bi++) {
            block_t *J = blocks + bi;
            int runs[CAP][2], nruns = 0, last = 0;
            for (int s = 0; s < CAP; s++) {
                int on = bi * CAP + s < nch && onk[J->k[s]];
                J->act[s] = on ? -1 : 0;
                J->tb[s] = on ? tbk[J->k[s]] : 0;
                J->row[s] = J->tb[s] + (int32_t)(L << 12); /* row 0: context 'none' */
                J->ob[s] = on ? J->base[s] + offk[J->k[s]] : -1;
                if (on) { /* runs of chains whose columns are neighbours in out: one copy per row */
                    if (nruns && J->ob[s] == J->ob[s - 1] + 1 && runs[nruns - 1][0] + runs[nruns - 1][1] == s)
                        runs[nruns - 1][1]++;
                    else {
                        runs[nruns][0] = s;
                        runs[nruns][1] = 1;
                        nruns++;
                    }
                    last = s + 1;
                }
            }
            for (int64_t y0 = 0; y0 < h; y0 += YT) {
                int ny = (int)(h - y0 < YT ? h - y0 : YT);
#ifdef HAVE_X86
                if (scan) { /* once per channel of the group (at most two), gather-free */
                    for (int64_t c = cmin; c <= cmax; c++) {
                        if (cmax > cmin)
                            for (int s = 0; s < last; s++)
                                J->act[s] = bi * CAP + s < nch && onk[J->k[s]] && ck[J->k[s]] == c ? -1 : 0;
                        const int W = isa == ISA_AVX512 ? 16 : 8;
                        const scan_fn *fns = isa == ISA_AVX512 ? SCAN512[L - 2] : SCAN256[L - 2];
                        for (int s0 = 0; s0 < last; s0 += W * SCAN_NV) {
                            int nv = (last - s0 + W - 1) / W;
                            fns[(nv > SCAN_NV ? SCAN_NV : nv) - 1](J, s0, ny, d->chans + c, d->data, tmp, cmax > cmin);
                        }
                    }
                } else if (isa == ISA_AVX512) {
                    int nv = (last + 15) / 16;
                    if (nv) STEPS512[nv - 1](J, 0, ny, d->tab, d->data, tmp);
                } else if (isa == ISA_AVX2) {
                    for (int s0 = 0; s0 < last; s0 += 32) {
                        int nv = (last - s0 + 7) / 8;
                        STEPS256[(nv > 4 ? 4 : nv) - 1](J, s0, ny, d->tab, d->data, tmp);
                    }
                } else
#endif
                    steps_scalar(J, 0, last, ny, d->tab, d->data, tmp);
                for (int r = 0; r < nruns; r++) {
                    int s = runs[r][0], len = runs[r][1];
                    uint8_t *o = d->out + J->ob[s] + y0 * w;
                    const uint8_t *t = tmp + s;
                    if (len == 16)
                        for (int y = 0; y < ny; y++) memcpy(o + y * w, t + y * CAP, 16);
                    else if (len == 8)
                        for (int y = 0; y < ny; y++) memcpy(o + y * w, t + y * CAP, 8);
                    else if (len == 4)
                        for (int y = 0; y < ny; y++) memcpy(o + y * w, t + y * CAP, 4);
                    else
                        for (int y = 0; y < ny; y++) memcpy(o + y * w, t + y * CAP, (size_t)len);
                }
            }
        }
        for (int64_t k = 0; k < K; k++) { /* the lane's next column: K further on */
            xk[k] += K;
            ck[k] += xk[k] / w;
            xk[k] %= w;
        }
    }
}

/* Lanes 0..K-1 of one sample into chains at..at+K-1 of the run. */
static void put_lanes(block_t *blocks, int64_t at, int64_t K, int64_t base, const int64_t *ptr, const int64_t *end,
                      const int64_t *state) {
    for (int64_t k = 0; k < K; k++) {
        block_t *J = blocks + (at + k) / CAP;
        int s = (int)((at + k) % CAP);
        J->x[s] = (uint32_t)state[k];
        J->p2[s] = (int32_t)(ptr[k] - 2);
        J->e2[s] = (int32_t)(end[k] - 2);
        J->k[s] = (int32_t)k;
        J->base[s] = base;
    }
}

#define MAXCH 2048 /* chains per run: 128 samples at K = 16 */

/* Images i0..i1-1 of the packed batch (numba's decode_range, same results): consecutive valid images
 * with the same K form a run (a damaged or different image starts the next). */
static int decode_range(const dec_t *d, const int64_t *offsets, int64_t *err, int64_t i0, int64_t i1, int isa) {
    int64_t ptr[MAX_LANES], end[MAX_LANES], state[MAX_LANES];
    /* chains in a run, at most */
    int64_t most = (i1 - i0) * MAX_LANES < MAXCH + MAX_LANES ? (i1 - i0) * MAX_LANES : MAXCH + MAX_LANES;
    block_t *blocks = (block_t *)malloc((size_t)((most + CAP - 1) / CAP + 1) * sizeof(block_t));
    if (!blocks) return -1;
    const int64_t n = d->C * d->h * d->w, ncol = d->C * d->w;
    int64_t i = i0;
    while (i < i1) {
        int64_t code, lane;
        int64_t K = read_lane_index(d->data, offsets[i], offsets[i + 1], ncol, ptr, end, state, &code, &lane);
        if (code) {
            set_err(err, i, code, lane);
            i++;
            continue;
        }
        int64_t B = 1;
        put_lanes(blocks, 0, K, i * n, ptr, end, state);
        while ((B + 1) * K <= MAXCH && i + B < i1) {
            int64_t K2 = read_lane_index(d->data, offsets[i + B], offsets[i + B + 1], ncol, ptr, end, state, &code,
                                         &lane);
            if (code || K2 != K) break;
            put_lanes(blocks, B * K, K, (i + B) * n, ptr, end, state);
            B++;
        }
        int64_t nch = B * K;
        for (int64_t g = nch; g < (nch + CAP - 1) / CAP * CAP; g++) { /* idle slots: state 0, no words */
            blocks[g / CAP].x[g % CAP] = 0;
            blocks[g / CAP].p2[g % CAP] = blocks[g / CAP].e2[g % CAP] = 0;
            blocks[g / CAP].k[g % CAP] = 0;
        }
        run_chains(d, blocks, nch, K, isa);
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; k < K; k++) {
                const block_t *J = blocks + (b * K + k) / CAP;
                int s = (int)((b * K + k) % CAP);
                int64_t code = lane_end_code(J->p2[s], J->e2[s], J->x[s]);
                if (code) {
                    set_err(err, i + b, code, k);
                    break;
                }
            }
        i += B;
    }
    free(blocks);
    return 0;
}

/* ---------------------------------------------------------------------------------- Python */
static PyObject *py_decode_range(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, offsets, tab, chans, out, err;
    Py_ssize_t L, C, h, w, i0, i1;
    int isa;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnnnw*w*nni", &data, &offsets, &tab, &chans, &L, &C, &h, &w, &out, &err, &i0, &i1,
                          &isa))
        return NULL;
    const char *bad = NULL;
    const int64_t *off = (const int64_t *)offsets.buf;
    int64_t n = (int64_t)C * h * w;
    if (L < 1 || L > 16 || C < 1 || h < 1 || w < 1) bad = "bad shape or alphabet (L must be 1..16)";
    else if (i0 < 0 || i1 < i0 || offsets.len < (i1 + 1) * 8) bad = "offsets too short for i0..i1";
    else if (tab.len < (Py_ssize_t)(C * (L + 1) * 4096 * 4) || C * (L + 1) * 4096 >= INT32_MAX)
        bad = "table has the wrong size";
    else if (chans.len && (chans.len != (Py_ssize_t)(C * sizeof(chan_t)) || L > 7))
        bad = "channel tables have the wrong size";
    else if (out.len < i1 * n) bad = "out is too small";
    else if (err.len < i1 * 16) bad = "err is too small";
    else if (data.len >= INT32_MAX - 16) bad = "data is too large (2 GB) for 32-bit lane offsets";
    else bad = check_isa_offsets(isa, off, i0, i1, data.len);
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS
        /* a copy with PAD zero bytes behind: the kernels' two-word reads may pass a lane's end by 2 bytes */
        uint8_t *padded = padded_copy(data.buf, data.len);
        if (padded) {
            dec_t d = {padded, (const uint32_t *)tab.buf, chans.len ? (const chan_t *)chans.buf : NULL,
                       (uint8_t *)out.buf, L, C, h, w};
            if (decode_range(&d, off, (int64_t *)err.buf, i0, i1, isa)) bad = "out of memory";
            free(padded);
        } else
            bad = "out of memory";
        Py_END_ALLOW_THREADS
    }
    Py_buffer *held[] = {&data, &offsets, &tab, &chans, &out, &err};
    return decode_return(bad, held, (int)(sizeof held / sizeof *held));
}

RANS_MODULE_DEF("SIMD rANS v2 decoder",
                "decode_range(data, offsets, tab, chans, L, C, h, w, out, err, i0, i1, isa): images i0..i1-1 of a "
                "packed batch into out (flat uint8), err (N, 2) int64 = (code, lane); isa 0 scalar, 1 avx2, "
                "2 avx512. GIL released.")

PyMODINIT_FUNC PyInit__rans_simd(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    has_avx512bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#endif
    return PyModule_Create(&module);
}
