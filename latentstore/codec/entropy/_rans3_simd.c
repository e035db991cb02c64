/* SIMD decoder of `latentstore.rans3` (bitstream v3; the format: rans_v3.py's docstring, defined by
 * rans3_reference.py). Bit-identical to decode_reference and to the numba decoder
 * (rans3_kernels_cpu.decode_range), including the (error code, lane) it reports for a damaged payload.
 * Python wrapper: rans3_simd.py. Same build and dispatch scheme as _rans_simd.c (the v2 decoder); shared
 * with it, in _rans_common.h: the lane index parser (v3's lane index is v2's), the end-of-lane check, the
 * ISA codes and their cpuid check, and the Python glue around decode_range.
 *
 * Why it looks the way it does:
 * - A format lane ("chain": rows [r0, r0 + nr) of one sample, each row left to right) owns one 64-bit
 *   SIMD lane from its first symbol to its last. All chains of a block step through the same column
 *   x at the same time (every sample has the same w), so a chain's above / above-right neighbours are
 *   entries x and x + 1 of the row it decoded one row earlier, and its left neighbour is the symbol it
 *   decoded one step earlier. The chains of consecutive samples are concatenated and cut into blocks
 *   of NL = 8 * NV512 (AVX-512) or 4 * NV256 (AVX2) chains; a block's state (x, word offset, buffered
 *   words, the row's symbols) stays in registers from its first row to its last. The NV independent
 *   registers hide each other's latency: one step of one register is a ~50-cycle dependency chain
 *   (left symbol -> table gather -> symbol -> state); measured, NV = 1 / 2 / 4 / 6 give 1.9 / 1.3 /
 *   1.0 / 1.0 ns a symbol, so 4 (more only spill registers). A sample's chains differ by at
 *   most one row: a chain past its last row (and an idle slot of a block) keeps stepping, harmlessly:
 *   its table base is forced to channel 0, its state was saved after its last row (masked stores) and
 *   its symbols are not copied out.
 * - 64-bit lanes because the decoder table is rans_v3.packed_rows, one uint64 per (channel, context)
 *   (the 343 rows of a channel at L = 6 would be 90 MB as v2's per-slot tables), so one
 *   _mm512_i64gather_epi64 per step loads the 8 lanes' rows: the only table access.
 * - The symbol without a loop or a branch (AVX-512). derive_rows re-lays the packed rows once per call
 *   (a few us): cum1..cum4 in 13-bit fields (a zero guard bit above each 12-bit value), cum5 in the top 12
 *   bits. The slot is replicated into the same fields with the guard bits set (one vpmuludq, a shift and
 *   a vpternlogq), so ONE 64-bit subtraction compares it with cum1..cum4 at once: a field's guard bit
 *   survives <=> cum_i <= slot. cum is increasing, so the surviving guards are a prefix and vplzcntq
 *   of them is 64 - 13 * s; one unsigned compare of the whole words handles cum5 (L = 6). The counts
 *   13 * s - 13 and 13 * s then shift cum[s] and cum[s+1] down (vpsrlvq gives 0 for counts >= 64, which
 *   is cum[0] = 0 and, above the last field, 0 = 4096 mod 4096: freq = (cum[s+1] - cum[s]) & 4095 holds
 *   for L >= 2; L = 1 is decoded by the scalar path). lz & 7 is a distinct 3-bit code per symbol, so a
 *   vpermq of an 8-entry constant vector turns it into s, s * (L+1) (the next left term) or s * (L+1)**2.
 *   ~36 vector instructions a step for 8 symbols. AVX2 (no vplzcntq, no variable qword permute) counts
 *   the fields <= slot with L - 1 compares (kernels specialised per L) and multiplies instead.
 * - The next row's contexts are built while decoding this one: at step x a lane has its symbols at
 *   x - 1 and x, the above and above-right neighbours of the next row's x - 1, and stores
 *   s[x-1] * (L+1)**2 + s[x] to a per-block buffer U[x-1][lane] (in place: U[x-1] was read one step
 *   earlier); where the next row starts a channel it stores the 'none' term instead (AVX-512; AVX2
 *   blends at the load).
 * - The symbols of a row are shifted into one uint64 per lane (8 steps), byte-swapped and stored to a
 *   small tile, then copied to each lane's output row at the row's end (lanes write different rows).
 *   (A vpscatterqq straight to out measured the same.)
 * - Renormalisation words: every fourth step one 8-byte gather per lane loads the lane's next four
 *   words (a lane reads at most one word a step); a lane that reads takes the low 16 bits and shifts
 *   the rest down. Reads past a lane's end (at most 6 bytes) land in the 8 zero bytes the decoder pads
 *   its copy of the payload bytes with, and are never used: a word is taken only while p < end.
 * - Every quantity fits in 32 bits, for damaged bytes too: freq <= 4096, x >> 12 < 2**20 and
 *   slot - cum[s] < freq, so x < 2**32 (vpmuludq multiplies the low halves); a word is shifted in only
 *   when x < 2**16. Table indices come from decoded symbols (< L) and valid channels only, every word
 *   read is bounded by the lane's end and every loop by the symbol count: damage cannot read out of
 *   bounds nor loop forever.
 * - Tried and not kept (no measurable gain on a Sapphire Rapids VM): IFMA for the state update,
 *   VBMI2 funnel shifts for the renormalisation, scatter stores, NV = 3, 6 or 8.
 * - Runtime dispatch (cpuid; the ISA code comes from Python): functions carry target attributes, so
 *   the module builds with plain -O3 (no -march) and runs on any x86-64; the scalar path on any CPU.
 * - The GIL is released while decoding: loader threads decode in parallel. Nothing is raised inside
 *   the decoder: errors go to err[i] = (code, lane), with the reference's precedence (the index checks,
 *   then the lanes in order, unread words before a wrong final state). */
#define MODULE_NAME "_rans3_simd"
#define AVX512_SUPPORTED() /* T512's features (the AVX-512 kernel's target) */ \
    (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd")     \
     && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") \
     && __builtin_cpu_supports("avx512vl"))
#include "_rans_common.h"

#define M12 4095u
#define MAX_L 6
#ifndef NV512
#define NV512 4 /* AVX-512 registers (of 8 chains) per block */
#endif
#ifndef NV256
#define NV256 4 /* AVX2 registers (of 4 chains) per block */
#endif
#define MAXNL 32          /* chains per block at most: 8 * NV512 and 4 * NV256 */
#define MAX_SIMD_W (1 << 16) /* wider rows decode on the scalar path */
#define CHUNK_CHAINS 4096 /* chains (and samples) per batch of samples: bounds the scratch memory */
#if 8 * NV512 > MAXNL || 4 * NV256 > MAXNL || NV512 > 4 || NV256 > 8
#error "blocks larger than MAXNL"
#endif

typedef struct {
    uint64_t x;     /* state: the initial one, then the final one */
    int64_t p, e;   /* offset of the next word and of the lane's end in the decoder's copy of the data */
    int64_t r0, nr; /* first row (channel-major, r = c * h + y) and number of rows */
    int64_t ob;     /* offset of the chain's sample in out */
} chain_t;

typedef struct {
    const uint8_t *data; /* padded copy of the payload bytes (8 zero bytes behind) */
    const uint64_t *tab;  /* packed rows: C * (L+1)**3 */
    const uint64_t *rows; /* the AVX-512 kernel's layout of them (derive_rows), else NULL */
    uint8_t *out;
    int64_t L, C, h, w;
    int64_t *ub;   /* w * MAXNL: the next row's above / above-right context terms per lane */
    uint64_t *tl;  /* (w / 8 + 1) * MAXNL: a row's symbols, 8 per uint64 */
} dec_t;

/* ------------------------------------------------------------------------------- scalar */
/* One chain, straight from the format (rans3_reference.decode_reference): contexts read from out,
 * which holds the chain's earlier rows. Any CPU; also every L = 1 decode. */
static void chain_scalar(const dec_t *d, chain_t *ch) {
    const int64_t L = d->L, h = d->h, w = d->w, L1 = L + 1, n3 = L1 * L1 * L1;
    const uint8_t *data = d->data;
    uint64_t x = ch->x;
    int64_t p = ch->p;
    const int64_t e = ch->e;
    for (int64_t t = 0; t < ch->nr; t++) {
        const int64_t r = ch->r0 + t, c = r / h, y = r - c * h;
        uint8_t *o = d->out + ch->ob + r * w;
        const uint8_t *up = t > 0 && y > 0 ? o - w : NULL;
        const uint64_t *tc = d->tab + c * n3;
        int64_t left = L;
        for (int64_t xx = 0; xx < w; xx++) {
            const int64_t a = up ? up[xx] : L, ar = up && xx + 1 < w ? up[xx + 1] : L;
            const uint64_t R = tc[(a * L1 + left) * L1 + ar];
            const uint64_t slot = x & M12;
            uint64_t lo = 0, hi = M12 + 1;
            int64_t s = 0;
            for (int64_t i = 1; i < L; i++) { /* cum is increasing: stop at the first field > slot */
                const uint64_t v = (R >> (12 * (i - 1))) & M12;
                if (v > slot) {
                    hi = v;
                    break;
                }
                s = i;
                lo = v;
            }
            x = (hi - lo) * (x >> 12) + slot - lo;
            if (x < 65536 && p < e) {
                x = (x << 16) | (uint64_t)data[p] | ((uint64_t)data[p + 1] << 8);
                p += 2;
            }
            o[xx] = (uint8_t)s;
            left = s;
        }
    }
    ch->x = x;
    ch->p = p;
}

/* ------------------------------------------------------------------- block bookkeeping */
/* A block's lanes: rows left (nr), position (c, y), output row (row), state. Per row (AVX2 path,
 * lanes_row): which lanes decode (amask), which have a row above in the lane (vmask), each lane's
 * channel base in the table (base; 0 past the lane's last row). The AVX-512 kernel keeps y, cb and
 * row up to date with vector instructions instead. */
typedef struct {
    int64_t nr[MAXNL], c[MAXNL], y[MAXNL], row[MAXNL], base[MAXNL], vmask[MAXNL], amask[MAXNL];
    int64_t cb[MAXNL]; /* c * (L+1)**3 */
    uint64_t xs[MAXNL];
    int64_t ps[MAXNL], es[MAXNL];
    int64_t maxr;
} lanes_t;

static void lanes_init(const dec_t *d, lanes_t *B, const chain_t *ch, int n, int NL) {
    B->maxr = 0;
    for (int j = 0; j < NL; j++) {
        if (j < n) {
            B->xs[j] = ch[j].x;
            B->ps[j] = ch[j].p;
            B->es[j] = ch[j].e;
            B->nr[j] = ch[j].nr;
            B->c[j] = ch[j].r0 / d->h;
            B->y[j] = ch[j].r0 - B->c[j] * d->h;
            B->row[j] = ch[j].ob + ch[j].r0 * d->w;
            B->cb[j] = B->c[j] * (d->L + 1) * (d->L + 1) * (d->L + 1);
            if (ch[j].nr > B->maxr) B->maxr = ch[j].nr;
        } else { /* idle: state 0, no words (its 8-byte word loads read data[0..8), always there) */
            B->xs[j] = 0;
            B->ps[j] = B->es[j] = 0;
            B->nr[j] = 0;
            B->c[j] = B->y[j] = B->row[j] = B->cb[j] = 0;
        }
    }
}

/* Masks and bases of row t; returns the act bits (lane j = bit j). */
static uint64_t lanes_row(const dec_t *d, lanes_t *B, int64_t t, int NL) {
    const int64_t L1 = d->L + 1, n3 = L1 * L1 * L1;
    uint64_t act = 0;
    for (int j = 0; j < NL; j++) {
        int on = t < B->nr[j];
        act |= (uint64_t)on << j;
        B->amask[j] = on ? -1 : 0;
        B->vmask[j] = on && t > 0 && B->y[j] > 0 ? -1 : 0;
        B->base[j] = on ? B->c[j] * n3 : 0;
    }
    return act;
}

/* Row done: copy the symbols of the active lanes (act bits) from the tile to their rows of out. */
static void tile_out(const dec_t *d, const int64_t *row, uint64_t act, int NL) {
    const int64_t w = d->w, G = w >> 3, tail = w & 7;
    for (; act; act &= act - 1) {
        const int j = __builtin_ctzll(act);
        uint8_t *o = d->out + row[j];
        const uint64_t *t = d->tl + j;
        for (int64_t g = 0; g < G; g++) memcpy(o + 8 * g, t + g * NL, 8);
        if (tail) memcpy(o + 8 * G, t + G * NL, (size_t)tail);
    }
}

/* Row t done: the symbols out, advance (c, y). */
static void lanes_flush(const dec_t *d, lanes_t *B, uint64_t act, int NL) {
    tile_out(d, B->row, act, NL);
    for (int j = 0; j < NL; j++) {
        B->row[j] += d->w;
        if (++B->y[j] == d->h) {
            B->y[j] = 0;
            B->c[j]++;
        }
    }
}

static void lanes_done(const lanes_t *B, chain_t *ch, int n) {
    for (int j = 0; j < n; j++) {
        ch[j].x = B->xs[j];
        ch[j].p = B->ps[j];
    }
}

#ifdef HAVE_X86
/* ------------------------------------------------------------------------------ AVX-512 */
#define T512 "avx512f,avx512cd,avx512bw,avx512dq,avx512vl"
#define G13 ((1LL << 12) | (1LL << 25) | (1LL << 38) | (1LL << 51)) /* guard bits of fields 1..4 */

/* The AVX-512 kernel's table: each packed row re-laid with 13-bit fields, cum_i at bit 13 * (i - 1) for
 * i = 1..4 (4096 where i >= L: never <= a slot) and cum5 in the top 12 bits (0 when L < 6), so that
 * one subtraction compares the slot with fields 1..4 (bit 13 * i - 1 is each field's guard) and one
 * unsigned compare of the whole words with field 5. 8 rows per iteration (11K rows at C = 32, L = 6). */
__attribute__((target(T512))) static void derive_rows(const uint64_t *packed, uint64_t *rows, int64_t n, int64_t L) {
    const __m512i m12 = _mm512_set1_epi64(M12);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m512i R = _mm512_loadu_si512(packed + j), o = _mm512_setzero_si512();
        for (int64_t i = 1; i <= 5; i++) {
            __m512i f = i < L ? _mm512_and_si512(_mm512_srli_epi64(R, (unsigned)(12 * (i - 1))), m12)
                              : _mm512_set1_epi64(i < 5 ? 4096 : 0);
            o = _mm512_or_si512(o, _mm512_slli_epi64(f, (unsigned)(13 * (i - 1))));
        }
        _mm512_storeu_si512(rows + j, o);
    }
    for (; j < n; j++) {
        uint64_t o = 0;
        for (int64_t i = 1; i <= 5; i++)
            o |= (i < L ? (packed[j] >> (12 * (i - 1))) & M12 : (uint64_t)(i < 5 ? 4096 : 0)) << (13 * (i - 1));
        rows[j] = o;
    }
}

/* The symbol code lz & 7 of symbol s (lz = 64 - 13 * s, and -1 for s = 5): s = 0..5 -> 0, 3, 6, 1, 4, 7;
 * 2 = 'none' (the left neighbour at x = 0). vpermq reads only those 3 bits of its index. */
#define NONE_CODE 2
static inline int64_t sym_code(int64_t s) { return (s == 5 ? -1 : 64 - 13 * s) & 7; }

static inline __attribute__((always_inline, target(T512)))
void block512_body(const dec_t *d, chain_t *ch, int n, const int NV, const int L6) {
    const int NL = 8 * NV;
    const int64_t L = d->L, L1 = L + 1, w = d->w;
    const uint64_t *tab = d->rows;
    const uint8_t *data = d->data;
    int64_t *ub = d->ub;
    uint64_t *tl = d->tl;
    lanes_t B;
    lanes_init(d, &B, ch, n, NL);

    int64_t tlv[8] = {0}, t2v[8] = {0}, tsv[8] = {0};
    for (int64_t s = 0; s < L; s++) {
        tlv[sym_code(s)] = s * L1;
        t2v[sym_code(s)] = s * L1 * L1;
        tsv[sym_code(s)] = s;
    }
    tlv[NONE_CODE] = L * L1;
    const __m512i TL = _mm512_loadu_si512(tlv), T2 = _mm512_loadu_si512(t2v), TS = _mm512_loadu_si512(tsv);
    const __m512i m12 = _mm512_set1_epi64(M12), m39 = _mm512_set1_epi64(1 + (1 << 13) + (1 << 26));
    const __m512i G = _mm512_set1_epi64(G13), c51 = _mm512_set1_epi64(51), c64 = _mm512_set1_epi64(64);
    const __m512i ones = _mm512_set1_epi64(-1), one = _mm512_set1_epi64(1), low = _mm512_set1_epi64(65536);
    const __m512i m16 = _mm512_set1_epi64(0xFFFF);
    const __m512i two = _mm512_set1_epi64(2), noneup = _mm512_set1_epi64(L * L1 * L1 + L);
    const __m512i Lv = _mm512_set1_epi64(L), none = _mm512_set1_epi64(NONE_CODE);
    const __m512i bswap = _mm512_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                          8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                          8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                          8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m128i tailshift = _mm_cvtsi64_si128(8 * (8 - (w & 7)));

    __m512i X[4], P[4], E[4], NW[4], CD[4], ACC[4], BA[4];
    __mmask8 VALN[4], ACT[4];
    for (int64_t j = 0; j < w * NL; j += 8) _mm512_storeu_si512(ub + j, noneup); /* no row above the first */
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        X[v] = _mm512_loadu_si512(B.xs + 8 * v);
        P[v] = _mm512_loadu_si512(B.ps + 8 * v);
        E[v] = _mm512_loadu_si512(B.es + 8 * v);
        NW[v] = _mm512_setzero_si512();
    }
    const __m512i hv = _mm512_set1_epi64(d->h), wv = _mm512_set1_epi64(w), n3v = _mm512_set1_epi64(L1 * L1 * L1);
    for (int64_t t = 0; t < B.maxr; t++) {
        const __m512i tv = _mm512_set1_epi64(t);
        uint64_t act = 0;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) { /* lanes past their last row: table base 0 (any valid row) */
            ACT[v] = _mm512_cmpgt_epi64_mask(_mm512_loadu_si512(B.nr + 8 * v), tv);
            BA[v] = _mm512_maskz_mov_epi64(ACT[v], _mm512_loadu_si512(B.cb + 8 * v));
            VALN[v] = _mm512_cmplt_epi64_mask(_mm512_add_epi64(_mm512_loadu_si512(B.y + 8 * v), one), hv);
            act |= (uint64_t)ACT[v] << (8 * v);
            CD[v] = none;
            ACC[v] = _mm512_setzero_si512();
        }
        for (int64_t xx = 0; xx < w; xx++) {
            if (!(xx & 3))
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) NW[v] = _mm512_i64gather_epi64(P[v], data, 1);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) {
                /* context = above * (L+1)**2 + ar (U: 'none' where the row has no row above) + left * (L+1) */
                __m512i upv = _mm512_loadu_si512(ub + xx * NL + 8 * v);
                __m512i idx = _mm512_add_epi64(_mm512_add_epi64(BA[v], upv), _mm512_permutexvar_epi64(CD[v], TL));
                __m512i R = _mm512_i64gather_epi64(idx, tab, 8);
                /* symbol: the guards of the fields <= slot (derive_rows, header) */
                __m512i slot = _mm512_and_si512(X[v], m12);
                __m512i a = _mm512_mul_epu32(slot, m39); /* slot at bits 0, 13, 26 */
                __m512i S = _mm512_ternarylogic_epi64(a, _mm512_slli_epi64(a, 39), G, 0xFE); /* and 39, 52; guards */
                __m512i lz = _mm512_lzcnt_epi64(_mm512_and_si512(_mm512_sub_epi64(S, R), G)); /* 64 - 13 s, s <= 4 */
                if (L6) /* s = 5 */
                    lz = _mm512_mask_mov_epi64(lz, _mm512_cmp_epu64_mask(S, R, _MM_CMPINT_NLT), ones);
                __m512i lo = _mm512_and_si512(_mm512_srlv_epi64(R, _mm512_sub_epi64(c51, lz)), m12);
                __m512i hi = _mm512_srlv_epi64(R, _mm512_sub_epi64(c64, lz));
                __m512i f = _mm512_and_si512(_mm512_sub_epi64(hi, lo), m12);
                __m512i xn = _mm512_add_epi64(_mm512_mul_epu32(f, _mm512_srli_epi64(X[v], 12)),
                                              _mm512_sub_epi64(slot, lo));
                __mmask8 k = _mm512_mask_cmplt_epi64_mask(_mm512_cmplt_epu64_mask(xn, low), P[v], E[v]);
                xn = _mm512_mask_slli_epi64(xn, k, xn, 16);
                X[v] = _mm512_mask_ternarylogic_epi64(xn, k, NW[v], m16, 0xF8); /* | (NW & 0xFFFF) */
                NW[v] = _mm512_mask_srli_epi64(NW[v], k, NW[v], 16);
                P[v] = _mm512_mask_add_epi64(P[v], k, P[v], two);
                __m512i sym = _mm512_permutexvar_epi64(lz, TS);
                if (xx) { /* the next row's above / above-right terms at x - 1 ('none' if it starts a channel) */
                    __m512i up = _mm512_mask_add_epi64(noneup, VALN[v], _mm512_permutexvar_epi64(CD[v], T2), sym);
                    _mm512_storeu_si512(ub + (xx - 1) * NL + 8 * v, up);
                }
                CD[v] = lz;
                ACC[v] = _mm512_or_si512(_mm512_slli_epi64(ACC[v], 8), sym);
            }
            if ((xx & 7) == 7)
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    _mm512_storeu_si512(tl + (xx >> 3) * NL + 8 * v, _mm512_shuffle_epi8(ACC[v], bswap));
        }
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            _mm512_storeu_si512(ub + (w - 1) * NL + 8 * v,
                                _mm512_mask_add_epi64(noneup, VALN[v], _mm512_permutexvar_epi64(CD[v], T2), Lv));
            if (w & 7)
                _mm512_storeu_si512(tl + (w >> 3) * NL + 8 * v,
                                    _mm512_shuffle_epi8(_mm512_sll_epi64(ACC[v], tailshift), bswap));
            _mm512_mask_storeu_epi64(B.xs + 8 * v, ACT[v], X[v]);
            _mm512_mask_storeu_epi64(B.ps + 8 * v, ACT[v], P[v]);
        }
        tile_out(d, B.row, act, NL);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) { /* next row: y + 1, or the next channel */
            __m512i y = _mm512_add_epi64(_mm512_loadu_si512(B.y + 8 * v), one);
            __mmask8 wrap = _mm512_cmpeq_epi64_mask(y, hv);
            _mm512_storeu_si512(B.y + 8 * v, _mm512_maskz_mov_epi64(~wrap, y));
            __m512i cb = _mm512_loadu_si512(B.cb + 8 * v);
            _mm512_storeu_si512(B.cb + 8 * v, _mm512_mask_add_epi64(cb, wrap, cb, n3v));
            _mm512_storeu_si512(B.row + 8 * v, _mm512_add_epi64(_mm512_loadu_si512(B.row + 8 * v), wv));
        }
    }
    lanes_done(&B, ch, n);
}

#define BLOCK512(NV, L6) \
    __attribute__((target(T512), noinline)) static void block512_##NV##_##L6(const dec_t *d, chain_t *ch, int n) { \
        block512_body(d, ch, n, NV, L6); }
BLOCK512(1, 0) BLOCK512(2, 0) BLOCK512(3, 0) BLOCK512(4, 0) BLOCK512(1, 1) BLOCK512(2, 1) BLOCK512(3, 1) BLOCK512(4, 1)
typedef void (*block_fn)(const dec_t *, chain_t *, int);
static const block_fn BLOCKS512[2][4] = {{block512_1_0, block512_2_0, block512_3_0, block512_4_0},
                                         {block512_1_1, block512_2_1, block512_3_1, block512_4_1}};

/* --------------------------------------------------------------------------------- AVX2 */
/* 4 chains per register. No vplzcntq and no variable qword permute: the symbol is counted
 * (L - 1 compares of 12-bit fields, so the kernel is specialised per L) and the context terms are
 * products (vpmuludq). Otherwise as the AVX-512 kernel. */
static inline __attribute__((always_inline, target("avx2")))
void block256_body(const dec_t *d, chain_t *ch, int n, const int NV, const int L) {
    const int NL = 4 * NV;
    const int64_t L1 = L + 1, w = d->w;
    const long long *tab = (const long long *)d->tab;
    const long long *data = (const long long *)d->data;
    int64_t *ub = d->ub;
    uint64_t *tl = d->tl;
    lanes_t B;
    lanes_init(d, &B, ch, n, NL);
    const __m256i m12 = _mm256_set1_epi64x(M12), c12 = _mm256_set1_epi64x(12), low = _mm256_set1_epi64x(65536);
    const __m256i m16 = _mm256_set1_epi64x(0xFFFF), Lm1 = _mm256_set1_epi64x(L - 1);
    const __m256i l1 = _mm256_set1_epi64x(L1), l2 = _mm256_set1_epi64x(L1 * L1);
    const __m256i noneup = _mm256_set1_epi64x(L * L1 * L1 + L), noneleft = _mm256_set1_epi64x(L * L1);
    const __m256i Lv = _mm256_set1_epi64x(L);
    const __m256i bswap = _mm256_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                          8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    const __m128i tailshift = _mm_cvtsi64_si128(8 * (8 - (w & 7)));

    __m256i X[8], P[8], E[8], NW[8], LF[8], SP[8], ACC[8], BA[8], VAL[8], ACT[8];
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        X[v] = _mm256_loadu_si256((const __m256i *)(B.xs + 4 * v));
        P[v] = _mm256_loadu_si256((const __m256i *)(B.ps + 4 * v));
        E[v] = _mm256_loadu_si256((const __m256i *)(B.es + 4 * v));
        NW[v] = _mm256_setzero_si256();
    }
    for (int64_t t = 0; t < B.maxr; t++) {
        uint64_t act = lanes_row(d, &B, t, NL);
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            BA[v] = _mm256_loadu_si256((const __m256i *)(B.base + 4 * v));
            VAL[v] = _mm256_loadu_si256((const __m256i *)(B.vmask + 4 * v));
            ACT[v] = _mm256_loadu_si256((const __m256i *)(B.amask + 4 * v));
            LF[v] = noneleft;
            SP[v] = ACC[v] = _mm256_setzero_si256();
        }
        for (int64_t xx = 0; xx < w; xx++) {
            if (!(xx & 3))
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++) NW[v] = _mm256_i64gather_epi64(data, P[v], 1);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) {
                __m256i upv = _mm256_loadu_si256((const __m256i *)(ub + xx * NL + 4 * v));
                upv = _mm256_blendv_epi8(noneup, upv, VAL[v]);
                __m256i R = _mm256_i64gather_epi64(tab, _mm256_add_epi64(_mm256_add_epi64(BA[v], upv), LF[v]), 8);
                __m256i slot = _mm256_and_si256(X[v], m12), s = Lm1;
#pragma GCC unroll 6
                for (int i = 1; i < L; i++) { /* minus one for every field above the slot */
                    __m256i fi = _mm256_srli_epi64(R, 12 * (i - 1));
                    if (i < L - 1) fi = _mm256_and_si256(fi, m12);
                    s = _mm256_add_epi64(s, _mm256_cmpgt_epi64(fi, slot));
                }
                __m256i sh = _mm256_add_epi64(_mm256_slli_epi64(s, 3), _mm256_slli_epi64(s, 2)); /* 12 s */
                __m256i lo = _mm256_and_si256(_mm256_srlv_epi64(R, _mm256_sub_epi64(sh, c12)), m12);
                __m256i f = _mm256_and_si256(_mm256_sub_epi64(_mm256_srlv_epi64(R, sh), lo), m12);
                __m256i xn = _mm256_add_epi64(_mm256_mul_epu32(f, _mm256_srli_epi64(X[v], 12)),
                                              _mm256_sub_epi64(slot, lo));
                __m256i k = _mm256_and_si256(_mm256_cmpgt_epi64(low, xn), _mm256_cmpgt_epi64(E[v], P[v]));
                __m256i xs = _mm256_or_si256(_mm256_slli_epi64(xn, 16), _mm256_and_si256(NW[v], m16));
                X[v] = _mm256_blendv_epi8(xn, xs, k);
                NW[v] = _mm256_blendv_epi8(NW[v], _mm256_srli_epi64(NW[v], 16), k);
                P[v] = _mm256_sub_epi64(P[v], _mm256_add_epi64(k, k));
                LF[v] = _mm256_mul_epu32(s, l1);
                if (xx)
                    _mm256_storeu_si256((__m256i *)(ub + (xx - 1) * NL + 4 * v),
                                        _mm256_add_epi64(_mm256_mul_epu32(SP[v], l2), s));
                SP[v] = s;
                ACC[v] = _mm256_or_si256(_mm256_slli_epi64(ACC[v], 8), s);
            }
            if ((xx & 7) == 7)
#pragma GCC unroll 8
                for (int v = 0; v < NV; v++)
                    _mm256_storeu_si256((__m256i *)(tl + (xx >> 3) * NL + 4 * v), _mm256_shuffle_epi8(ACC[v], bswap));
        }
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            _mm256_storeu_si256((__m256i *)(ub + (w - 1) * NL + 4 * v),
                                _mm256_add_epi64(_mm256_mul_epu32(SP[v], l2), Lv));
            if (w & 7)
                _mm256_storeu_si256((__m256i *)(tl + (w >> 3) * NL + 4 * v),
                                    _mm256_shuffle_epi8(_mm256_sll_epi64(ACC[v], tailshift), bswap));
            _mm256_maskstore_epi64((long long *)(B.xs + 4 * v), ACT[v], X[v]);
            _mm256_maskstore_epi64((long long *)(B.ps + 4 * v), ACT[v], P[v]);
        }
        lanes_flush(d, &B, act, NL);
    }
    lanes_done(&B, ch, n);
}

#define BLOCK256(NV, L) \
    __attribute__((target("avx2"), noinline)) static void block256_##NV##_##L(const dec_t *d, chain_t *ch, int n) { \
        block256_body(d, ch, n, NV, L); }
#define BLOCK256_L(L) BLOCK256(1, L) BLOCK256(2, L) BLOCK256(3, L) BLOCK256(4, L) \
    BLOCK256(5, L) BLOCK256(6, L) BLOCK256(7, L) BLOCK256(8, L)
BLOCK256_L(2) BLOCK256_L(3) BLOCK256_L(4) BLOCK256_L(5) BLOCK256_L(6)
#define BLOCK256_ROW(L) {block256_1_##L, block256_2_##L, block256_3_##L, block256_4_##L, \
                         block256_5_##L, block256_6_##L, block256_7_##L, block256_8_##L}
static const block_fn BLOCKS256[5][8] = {BLOCK256_ROW(2), BLOCK256_ROW(3), BLOCK256_ROW(4), BLOCK256_ROW(5),
                                         BLOCK256_ROW(6)};
#endif

/* ---------------------------------------------------------------------------- the batch */
/* Decode chains ch[0..nch) on the chosen path: blocks of consecutive chains. */
static void decode_chains(const dec_t *d, chain_t *ch, int64_t nch, int isa) {
#ifdef HAVE_X86
    if (d->L >= 2 && isa == ISA_AVX512) {
        for (int64_t j = 0; j < nch; j += 8 * NV512) {
            int n = (int)(nch - j < 8 * NV512 ? nch - j : 8 * NV512);
            BLOCKS512[d->L == 6][(n + 7) / 8 - 1](d, ch + j, n);
        }
        return;
    }
    if (d->L >= 2 && isa == ISA_AVX2) {
        for (int64_t j = 0; j < nch; j += 4 * NV256) {
            int n = (int)(nch - j < 4 * NV256 ? nch - j : 4 * NV256);
            BLOCKS256[d->L - 2][(n + 3) / 4 - 1](d, ch + j, n);
        }
        return;
    }
#endif
    (void)isa;
    for (int64_t j = 0; j < nch; j++) chain_scalar(d, ch + j);
}

/* Lane index of the payload data[start:stop] (read_lane_index, _rans_common.h): appends K chains to ch
 * (offsets in data, rows [k * R / K, (k + 1) * R / K) of the R = C * h) and returns K, or 0 with *code,
 * *lane set. */
static int64_t read_index(const uint8_t *data, int64_t start, int64_t stop, int64_t C, int64_t h, int64_t ob,
                          chain_t *ch, int64_t *code, int64_t *lane) {
    int64_t ptr[MAX_LANES], end[MAX_LANES], state[MAX_LANES];
    const int64_t R = C * h, K = read_lane_index(data, start, stop, R, ptr, end, state, code, lane);
    for (int64_t k = 0; k < K; k++) {
        ch[k].x = (uint64_t)state[k];
        ch[k].p = ptr[k];
        ch[k].e = end[k];
        ch[k].r0 = k * R / K;
        ch[k].nr = (k + 1) * R / K - ch[k].r0;
        ch[k].ob = ob;
    }
    return K;
}

/* Samples i0..i1-1 (data: the bytes of offsets[i0]..offsets[i1], starting at offsets[i0]): the lane
 * indices of up to CHUNK_CHAINS chains' worth of samples are read, their chains decoded together,
 * then each sample's lanes checked in order. */
static int decode_range(dec_t *d, const int64_t *offsets, int64_t *err, int64_t i0, int64_t i1, int isa) {
    const int64_t n = d->C * d->h * d->w, o0 = offsets[i0];
    chain_t *ch = (chain_t *)malloc((CHUNK_CHAINS + MAX_LANES) * sizeof(chain_t));
    int64_t *first = (int64_t *)malloc((CHUNK_CHAINS + 1) * sizeof(int64_t)); /* per sample of the chunk */
    int64_t *ks = (int64_t *)malloc((CHUNK_CHAINS + 1) * sizeof(int64_t));
    const int simd = isa != ISA_SCALAR && d->L >= 2; /* the SIMD kernels' scratch: ~32 * w * 9 bytes */
    d->ub = simd ? (int64_t *)calloc((size_t)d->w * MAXNL, sizeof(int64_t)) : NULL; /* AVX2 loads row 0's */
    d->tl = simd ? (uint64_t *)malloc((size_t)(d->w / 8 + 1) * MAXNL * sizeof(uint64_t)) : NULL;
    int ok = ch && first && ks && (!simd || (d->ub && d->tl));
    int64_t i = i0;
    while (ok && i < i1) {
        int64_t nch = 0, ns = 0, a = i;
        while (i < i1 && nch < CHUNK_CHAINS && ns < CHUNK_CHAINS) {
            int64_t code, lane;
            int64_t K = read_index(d->data, offsets[i] - o0, offsets[i + 1] - o0, d->C, d->h, i * n, ch + nch, &code,
                                   &lane);
            set_err(err, i, code, lane);
            first[i - a] = nch;
            ks[i - a] = K;
            nch += K;
            ns++;
            i++;
        }
        decode_chains(d, ch, nch, isa);
        for (int64_t b = 0; b < ns; b++)
            for (int64_t k = 0; k < ks[b]; k++) {
                const chain_t *c = ch + first[b] + k;
                int64_t code = lane_end_code(c->p, c->e, c->x);
                if (code) {
                    set_err(err, a + b, code, k);
                    break;
                }
            }
    }
    free(ch);
    free(first);
    free(ks);
    free(d->ub);
    free(d->tl);
    return ok ? 0 : -1;
}

/* ---------------------------------------------------------------------------------- Python */
static PyObject *py_decode_range(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data, offsets, packed, out, err;
    Py_ssize_t L, C, h, w, i0, i1;
    int isa;
    if (!PyArg_ParseTuple(args, "y*y*y*nnnnw*w*nni", &data, &offsets, &packed, &L, &C, &h, &w, &out, &err, &i0, &i1,
                          &isa))
        return NULL;
    const char *bad = NULL;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (L < 1 || L > MAX_L || C < 1 || h < 1 || w < 1) bad = "bad shape or alphabet (L must be 1..6)";
    else if (C > (1 << 20) || h > (1 << 20) || w > (1 << 20)) bad = "shape too large";
    else if (i0 < 0 || i1 < i0 || offsets.len < (i1 + 1) * 8) bad = "offsets too short for i0..i1";
    else if (packed.len != (Py_ssize_t)(C * (L + 1) * (L + 1) * (L + 1) * 8)) bad = "packed table has the wrong size";
    else if (out.len / (C * h * w) < i1) bad = "out is too small";
    else if (err.len < i1 * 16) bad = "err is too small";
    else bad = check_isa_offsets(isa, off, i0, i1, data.len);
    if (!bad && i1 > i0) {
        if (w > MAX_SIMD_W) isa = ISA_SCALAR; /* absurdly wide latents: no per-block scratch of 9 * 32 * w bytes */
        Py_BEGIN_ALLOW_THREADS
        /* a copy of the range's bytes with PAD zero bytes behind: the kernels' 8-byte word loads may pass
         * a lane's end by up to 6 bytes (never used) */
        const int64_t a = off[i0];
        uint8_t *padded = padded_copy((const uint8_t *)data.buf + a, off[i1] - a);
        if (padded) {
            uint64_t *rows = NULL;
#ifdef HAVE_X86
            const int64_t nrows = C * (L + 1) * (L + 1) * (L + 1);
            if (isa == ISA_AVX512 && L >= 2 && (rows = (uint64_t *)malloc((size_t)nrows * 8)))
                derive_rows((const uint64_t *)packed.buf, rows, nrows, L);
#endif
            dec_t d = {padded, (const uint64_t *)packed.buf, rows, (uint8_t *)out.buf, L, C, h, w, NULL, NULL};
            if ((isa == ISA_AVX512 && L >= 2 && !rows) || decode_range(&d, off, (int64_t *)err.buf, i0, i1, isa))
                bad = "out of memory";
            free(rows);
            free(padded);
        } else
            bad = "out of memory";
        Py_END_ALLOW_THREADS
    }
    Py_buffer *held[] = {&data, &offsets, &packed, &out, &err};
    return decode_return(bad, held, (int)(sizeof held / sizeof *held));
}

RANS_MODULE_DEF("SIMD rANS v3 decoder",
                "decode_range(data, offsets, packed, L, C, h, w, out, err, i0, i1, isa): payloads i0..i1-1 of a "
                "packed batch (payload i = data[offsets[i]:offsets[i+1]]) into out (flat uint8, sample i at "
                "i*C*h*w), err (N, 2) int64 = (code, lane); packed: rans_v3.packed_rows; isa 0 scalar, 1 avx2, "
                "2 avx512. GIL released.")

PyMODINIT_FUNC PyInit__rans3_simd(void) { return PyModule_Create(&module); }
