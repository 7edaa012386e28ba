/* GPTQ and AWQ linear layers repacked into GGUF Q4_1 blocks (int4_checkpoint.h). The packings
 * as their writers pack them and vLLM reads them:
 *
 * GPTQ (AutoGPTQ, auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py, QuantLinear.pack, which
 * GPTQModel keeps): qweight int32 [in / 8, out], input channel k in bits 4 (k % 8) of row k / 8
 * (low nibble first); qzeros int32 [groups, out / 8], output channel n in bits 4 (n % 8) of
 * column n / 8; scales [groups, out], groups = ceil(in / group_size); g_idx int32 [in], the
 * group of each input channel. Format v1 ("gptq") stores z - 1: AutoGPTQ subtracts 1 before
 * packing; GPTQModel subtracts 0x11111111 from each packed word and reads a word back by adding
 * it, carries included (convert_gptq_v2_to_v1_format_module, convert_gptq_v1_to_v2_format_module
 * in gptqmodel/utils/model.py). Read so, a zero of 0 (stored as 15, its borrow taken from the
 * next nibble) comes back exactly; where no nibble is 15 it is the same as vLLM's and AutoGPTQ's
 * nibble + 1. "gptq_v2" stores z. Without desc_act the group of input channel k is
 * k / group_size, whatever g_idx says, as in vLLM (vllm/model_executor/layers/quantization/
 * gptq.py drops g_idx then).
 *
 * AWQ (AutoAWQ, awq/modules/linear/gemm.py, WQLinear_GEMM.from_linear; vLLM's
 * vllm/model_executor/layers/quantization/awq_triton.py unpacks the same): qweight int32
 * [in, out / 8] and qzeros int32 [groups, out / 8], output channel 8c + order[i] in bits 4i of
 * column c, order = {0, 2, 4, 6, 1, 3, 5, 7}; scales [groups, out]; zeros stored as they are.
 *
 * Both: w = s * (q - z). A Q4_1 block (worker/model/quant.c, llama.cpp's block_q4_1) is d, m
 * (fp16), then 16 bytes whose low nibbles are elements 0..15 and high nibbles 16..31:
 * w = d * q + m. */
#include "worker/model/int4_checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/model_internal.h"

#define Q4_1_BYTES 20
#define ROWS_AT_ONCE 64

/* AWQ's packed column c holds output 8c + awq_order[i] in bits 4i. */
static const int awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

/* One layer's parts, checked against each other. */
struct qlayer {
    const struct int4_qconfig *q;
    const char *base;                              /* X of X.qweight, for messages */
    int64_t n_in, n_out, n_groups;
    const unsigned char *qweight, *qzeros, *g_idx; /* g_idx: act-order only */
    struct int4_source scales;
};

static uint32_t load_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4); /* safetensors data is little-endian and need not be aligned */
    return v;
}

/* How the parts of layer X are found, and what messages about them say. */
struct finder {
    int4_find_fn find;
    void *ctx;
    const char *base;
    const char *file;         /* X.qweight's */
    int group_size;           /* as config.json has it: -1 for one group */
};

/* X.<part> of dtype want (NULL: F16, BF16 or F32) and the given shape; 1 when absent and
 * optional. */
static int find_part(const struct finder *f, const char *part, const char *want, int ndim, const int64_t *shape,
                     bool optional, struct int4_source *out, char *err, size_t errlen)
{
    char name[512];
    snprintf(name, sizeof name, "%s.%s", f->base, part);
    if (f->find(f->ctx, name, out) != 0) {
        if (optional) return 1;
        snprintf(err, errlen, "%s: quantized layer '%s' has a qweight but no tensor '%s'", f->file, f->base, name);
        return -1;
    }
    bool dtype_ok = want ? !strcmp(out->dtype, want)
                         : !strcmp(out->dtype, "F16") || !strcmp(out->dtype, "BF16") || !strcmp(out->dtype, "F32");
    if (!dtype_ok) {
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s (%s expected)", out->file, name, out->dtype,
                 want ? want : "F16, BF16 or F32");
        return -1;
    }
    bool ok = out->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = out->shape[i] == shape[i];
    if (!ok) {
        char have[96], need[96];
        model_fmt_shape(have, sizeof have, out->ndim, out->shape);
        model_fmt_shape(need, sizeof need, ndim, shape);
        snprintf(err, errlen, "%s: tensor '%s' has shape %s; its qweight with the config's group_size %d needs %s",
                 out->file, name, have, f->group_size, need);
        return -1;
    }
    return 0;
}

/* The group of each 32-input block, and whether some block's inputs span groups (act-order:
 * then the layer is dequantized instead). g_idx's values are checked on the way. */
static int block_groups(const struct qlayer *L, int64_t *group, bool *act_order, const char *file, char *err,
                        size_t errlen)
{
    *act_order = false;
    for (int64_t b = 0; b < L->n_in / 32; b++) {
        group[b] = L->q->group_size ? 32 * b / L->q->group_size : 0;
        if (!L->g_idx) continue;
        for (int64_t k = 32 * b; k < 32 * b + 32; k++) {
            int32_t g = (int32_t)load_u32(L->g_idx + 4 * k);
            if (g < 0 || g >= L->n_groups) {
                snprintf(err, errlen, "%s: %s.g_idx[%lld] is %d, not one of the layer's %lld groups", file, L->base,
                         (long long)k, g, (long long)L->n_groups);
                return -1;
            }
            if (k == 32 * b) group[b] = g;
            else if (g != group[b]) *act_order = true;
        }
    }
    return 0;
}

/* Scales as float32 and zeros as integers, both [groups, out]. */
static int decode_scales_zeros(const struct qlayer *L, float *s, uint8_t *z, char *err, size_t errlen)
{
    const int64_t n = L->n_groups * L->n_out;
    enum dtype sdt = !strcmp(L->scales.dtype, "F16") ? DTYPE_F16 : !strcmp(L->scales.dtype, "BF16") ? DTYPE_BF16
                                                                                                   : DTYPE_F32;
    struct tensor st = {.dtype = sdt, .ndim = 1, .shape = {n, 0}, .data = L->scales.data};
    tensor_to_f32(&st, 0, false, s);
    for (int64_t i = 0; i < n; i++) {
        /* d = s and m = -s z are fp16 in a Q4_1 block. */
        if (!isfinite(s[i]) || fabsf(s[i]) * 15.0f > 65504.0f) {
            snprintf(err, errlen, "%s: %s.scales[%lld] is %g, beyond fp16's range for Q4_1 blocks", L->scales.file,
                     L->base, (long long)i, (double)s[i]);
            return -1;
        }
    }
    for (int64_t w = 0; w < n / 8; w++) {
        uint32_t v = load_u32(L->qzeros + 4 * w);
        if (L->q->method == INT4_AWQ) {
            for (int i = 0; i < 8; i++) z[8 * w + awq_order[i]] = (uint8_t)(v >> (4 * i) & 15);
        } else {
            if (L->q->zeros_minus_one) v += 0x11111111u;
            for (int i = 0; i < 8; i++) z[8 * w + i] = (uint8_t)(v >> (4 * i) & 15);
        }
    }
    return 0;
}

/* The eight nibbles of v, in order, as the low nibbles of eight bytes (little-endian). */
static uint64_t spread_nibbles(uint32_t v)
{
    uint64_t t = v;
    t = (t | t << 16) & 0x0000ffff0000ffffull;
    t = (t | t << 8) & 0x00ff00ff00ff00ffull;
    return (t | t << 4) & 0x0f0f0f0f0f0f0f0full;
}

/* The 4-bit values of output n, inputs 32b .. 32b + 31, as a Q4_1 block's 16 bytes: input 32b + i
 * in the low nibble of byte i, 32b + 16 + i in its high nibble. */
static void block_nibbles(const struct qlayer *L, int64_t n, int64_t b, unsigned char qs[16])
{
    const int64_t n_out = L->n_out;
    if (L->q->method == INT4_GPTQ) {
        /* Rows 4b .. 4b + 3 hold inputs 8 at a time: rows 4b and 4b + 2 make bytes 0..7. */
        uint32_t w[4];
        for (int r = 0; r < 4; r++) w[r] = load_u32(L->qweight + 4 * ((4 * b + r) * n_out + n));
        uint64_t lo = spread_nibbles(w[0]) | spread_nibbles(w[2]) << 4;
        uint64_t hi = spread_nibbles(w[1]) | spread_nibbles(w[3]) << 4;
        memcpy(qs, &lo, 8);
        memcpy(qs + 8, &hi, 8);
        return;
    }
    /* AWQ: one int32 of row k holds output n at bits 4 awq_slot[n % 8]. */
    static const int awq_slot[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    const int shift = 4 * awq_slot[n % 8];
    const unsigned char *col = L->qweight + 4 * (32 * b * (n_out / 8) + n / 8);
    const size_t row = 4 * (size_t)(n_out / 8);
    for (int i = 0; i < 16; i++) {
        const uint32_t a = load_u32(col + i * row) >> shift & 15, c = load_u32(col + (16 + i) * row) >> shift & 15;
        qs[i] = (unsigned char)(a | c << 4);
    }
}

/* Rows n0 .. n1 - 1 of the layer as Q4_1 blocks: d = s, m = -s z rounded to fp16 (exact where
 * s z has at most 11 significant bits, as it has for a symmetric zero of 8). A few rows at a
 * time, block by block: the packed words of a block are then read once from memory for all of
 * them, and the pages they lie on (a row apart for GPTQ, up to 32 for AWQ) stay in the TLB. */
static void write_q4_1_rows(const struct qlayer *L, int64_t n0, int64_t n1, const int64_t *group, const uint16_t *d,
                            const uint16_t *m, unsigned char *out)
{
    const size_t row_bytes = (size_t)(L->n_in / 32) * Q4_1_BYTES;
    for (int64_t b = 0; b < L->n_in / 32; b++) {
        for (int64_t n = n0; n < n1; n++) {
            unsigned char *blk = out + (size_t)n * row_bytes + (size_t)b * Q4_1_BYTES;
            const int64_t at = group[b] * L->n_out + n;
            memcpy(blk, &d[at], 2);
            memcpy(blk + 2, &m[at], 2);
            block_nibbles(L, n, b, blk + 4);
        }
    }
}

/* Row n dequantized, each input by its own g_idx group: w = s (q - z), rounded once to fp16
 * (f16) or kept in float32. */
static void write_dequantized_row(const struct qlayer *L, int64_t n, const float *s, const uint8_t *z, bool f16,
                                  unsigned char *out)
{
    unsigned char qs[16];
    for (int64_t k = 0; k < L->n_in; k++) {
        if (k % 32 == 0) block_nibbles(L, n, k / 32, qs);
        const int i = (int)(k % 32), q = i < 16 ? qs[i] & 15 : qs[i - 16] >> 4;
        const int64_t at = (int32_t)load_u32(L->g_idx + 4 * k) * L->n_out + n;
        const float w = s[at] * (float)(q - (int)z[at]);
        if (f16) {
            uint16_t h = model_f32_to_f16(w);
            memcpy(out + 2 * k, &h, 2);
        } else {
            memcpy(out + 4 * k, &w, 4);
        }
    }
}

/* What the threads of repack share: rows n of data, ROWS_AT_ONCE at a time. */
struct repack_job {
    const struct qlayer *L;
    const int64_t *group;
    const float *s;
    const uint8_t *z;
    const uint16_t *d, *m;
    bool act_order, f16;
    size_t row_bytes;
    unsigned char *data;
};

static int repack_rows(void *arg, int64_t r0, int64_t r1)
{
    const struct repack_job *j = arg;
    for (int64_t n = r0; n < r1; n += ROWS_AT_ONCE) {
        const int64_t n1 = n + ROWS_AT_ONCE < r1 ? n + ROWS_AT_ONCE : r1;
        if (!j->act_order) write_q4_1_rows(j->L, n, n1, j->group, j->d, j->m, j->data);
        for (int64_t r = n; j->act_order && r < n1; r++)
            write_dequantized_row(j->L, r, j->s, j->z, j->f16, j->data + (size_t)r * j->row_bytes);
    }
    return 0;
}

static int repack(const struct qlayer *L, const char *file, void *src, struct tensor *t, char *err, size_t errlen)
{
    const int64_t n_blocks = L->n_in / 32, n_sz = L->n_groups * L->n_out;
    int rc = -1;
    int64_t *group = malloc((size_t)n_blocks * sizeof *group);
    float *s = malloc((size_t)n_sz * sizeof *s);
    uint8_t *z = malloc((size_t)n_sz);
    uint16_t *d = malloc((size_t)n_sz * sizeof *d), *m = malloc((size_t)n_sz * sizeof *m);
    bool act_order = false;
    if (!group || !s || !z || !d || !m) goto oom;
    if (block_groups(L, group, &act_order, file, err, errlen) || decode_scales_zeros(L, s, z, err, errlen)) goto out;
    for (int64_t i = 0; i < n_sz; i++) {
        d[i] = model_f32_to_f16(s[i]);
        m[i] = model_f32_to_f16(-(s[i] * (float)z[i]));
    }
    const bool f16 = !strcmp(L->scales.dtype, "F16");
    const size_t row_bytes = act_order ? (size_t)L->n_in * (f16 ? 2 : 4) : (size_t)n_blocks * Q4_1_BYTES;
    unsigned char *data = malloc(row_bytes * (size_t)L->n_out);
    /* From here data belongs to the model (add_owned frees what it cannot take). */
    if (!data || model_source_add_owned(src, data)) goto oom;
    struct repack_job job = {L, group, s, z, d, m, act_order, f16, row_bytes, data};
    model_parallel_rows(L->n_out, ROWS_AT_ONCE, repack_rows, &job);
    t->dtype = act_order ? (f16 ? DTYPE_F16 : DTYPE_F32) : DTYPE_Q4_1;
    t->ndim = 2;
    t->shape[0] = L->n_out;
    t->shape[1] = L->n_in;
    t->data = data;
    t->scale = NULL;
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "out of memory repacking %s's quantized weights", L->base);
out:
    free(group), free(s), free(z), free(d), free(m);
    return rc;
}

int int4_bind_linear(const struct int4_qconfig *q, const char *weight_name, int4_find_fn find, void *ctx, void *src,
                     struct tensor *t, char *err, size_t errlen)
{
    static const char suffix[] = ".weight";
    const size_t len = strlen(weight_name), sl = sizeof suffix - 1;
    char base[400], name[512];
    if (q->method == INT4_NONE || len <= sl || len - sl >= sizeof base || strcmp(weight_name + len - sl, suffix) != 0)
        return 1;
    memcpy(base, weight_name, len - sl);
    base[len - sl] = '\0';
    struct int4_source qw, qz, gi;
    snprintf(name, sizeof name, "%s.qweight", base);
    if (find(ctx, name, &qw) != 0) return 1;
    if (strcmp(qw.dtype, "I32") != 0 || qw.ndim != 2 || qw.shape[0] <= 0 || qw.shape[1] <= 0) {
        char have[96];
        model_fmt_shape(have, sizeof have, qw.ndim, qw.shape);
        snprintf(err, errlen, "%s: tensor '%s' has dtype %s and shape %s (2-D I32 expected)", qw.file, name, qw.dtype,
                 have);
        return -1;
    }
    const bool gptq = q->method == INT4_GPTQ;
    struct qlayer L = {.q = q, .base = base, .qweight = qw.data};
    /* GPTQ packs 8 inputs into an int32 of a row, AWQ 8 outputs into a column. */
    L.n_in = gptq ? qw.shape[0] * 8 : qw.shape[0];
    L.n_out = gptq ? qw.shape[1] : qw.shape[1] * 8;
    if (L.n_in % 32 != 0 || L.n_out % 8 != 0) {
        snprintf(err, errlen, "%s: tensor '%s' is a layer of %lld inputs and %lld outputs: Q4_1 blocks need the inputs "
                 "in multiples of 32, the packed zeros the outputs in multiples of 8", qw.file, name,
                 (long long)L.n_in, (long long)L.n_out);
        return -1;
    }
    L.n_groups = q->group_size ? (L.n_in + q->group_size - 1) / q->group_size : 1;
    const struct finder f = {find, ctx, base, qw.file, q->group_size ? q->group_size : -1};
    const int64_t zshape[2] = {L.n_groups, L.n_out / 8}, sshape[2] = {L.n_groups, L.n_out}, gshape[1] = {L.n_in};
    if (find_part(&f, "qzeros", "I32", 2, zshape, false, &qz, err, errlen) ||
        find_part(&f, "scales", NULL, 2, sshape, false, &L.scales, err, errlen))
        return -1;
    L.qzeros = qz.data;
    if (gptq && q->desc_act) {
        int rc = find_part(&f, "g_idx", "I32", 1, gshape, true, &gi, err, errlen);
        if (rc < 0) return -1;
        if (rc > 0) {
            snprintf(err, errlen, "%s: quantized layer '%s' has no '%s.g_idx', which the config's desc_act (act-order) "
                     "needs", qw.file, base, base);
            return -1;
        }
        L.g_idx = gi.data;
    }
    return repack(&L, L.g_idx ? gi.file : qw.file, src, t, err, errlen);
}
