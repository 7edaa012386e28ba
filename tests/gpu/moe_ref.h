/* The grouped expert products' reference, for the GPU tests of sk_moe_gemm (tests/gpu/test_moe.c)
 * and sk_moe_gemm_fp8 (kernels/moe_gemm_fp8_test.c): random tokens routed to experts (skewed, so
 * that some expert gets many rows and some none), the stable counting sort sk_moe_sort documents,
 * those rows on the device as struct sk_moe_rows takes them, and a product's worst error against
 * double sums of the same weights, with its bound. */
#ifndef SLUICE_TESTS_GPU_MOE_REF_H
#define SLUICE_TESTS_GPU_MOE_REF_H

#include <stdbool.h>

#include "kernels/sluice_kernels.h"
#include "tests/gpu/gpu_test.h"

/* The host's stable counting sort, as sk_moe_sort documents it. */
static inline void moe_host_sort(const int32_t *choice, int n, int E, int32_t *order, int32_t *pos, int32_t *seg,
                                 int32_t *active)
{
    memset(seg, 0, (size_t)(E + 1) * 4);
    for (int i = 0; i < n; i++) seg[choice[i] + 1]++;
    int na = 0;
    for (int e = 0; e < E; e++) {
        if (seg[e + 1]) active[na++] = e;
        seg[e + 1] += seg[e];
    }
    active[E] = na;
    int32_t *fill = malloc((size_t)E * 4);
    memcpy(fill, seg, (size_t)E * 4);
    for (int i = 0; i < n; i++) {
        int p = fill[choice[i]]++;
        order[p] = i;
        pos[i] = p;
    }
    free(fill);
}

/* One grouped product: n_tokens tokens over E experts (0: dense, one group of n_tokens rows) with
 * top_k choices each; swiglu (gate/up rows per group, act in bf16) or plain (y in fp32); rows'
 * inputs gathered by token (gather, as gate/up reads them) or one per row (as down does). */
struct moe_case {
    const char *what;
    int n_tokens, E, top_k;
    bool swiglu, gather;
    int n_out, k_in, invariant;
};

/* A case's rows, on the host and on the device (rows). */
struct moe_rows_ref {
    int groups, n_rows, x_rows;
    int64_t wrows; /* weight rows per group */
    int32_t *choice, *order, *pos;
    int32_t seg[SK_MOE_MAX_EXPERTS + 1], active[SK_MOE_MAX_EXPERTS + 1];
    int32_t *d_seg, *d_active, *d_order;
    struct sk_moe_rows rows;
};

/* The sizes of case c's weights, inputs and outputs (before any random number is drawn). */
static inline void moe_rows_ref_size(struct moe_rows_ref *r, const struct moe_case *c)
{
    memset(r, 0, sizeof *r);
    r->groups = c->E > 0 ? c->E : 1;
    r->n_rows = c->E > 0 ? c->n_tokens * c->top_k : c->n_tokens;
    r->x_rows = c->gather ? c->n_tokens : r->n_rows;
    r->wrows = c->swiglu ? 2 * (int64_t)c->n_out : c->n_out;
}

/* Routes the case's tokens: each one's top_k distinct experts, skewed so that some expert gets
 * many rows (more than one pass of 16) and some none; sorted and sent to the device. */
static inline void moe_rows_ref_route(struct moe_rows_ref *r, const struct moe_case *c)
{
    r->choice = malloc((size_t)r->n_rows * 4);
    r->order = malloc((size_t)r->n_rows * 4);
    r->pos = malloc((size_t)r->n_rows * 4);
    if (c->E > 0) {
        for (int t = 0; t < c->n_tokens; t++)
            for (int k = 0; k < c->top_k; k++) {
                int e;
                bool dup;
                do {
                    e = gt_int(4) ? gt_int(c->E < 3 ? c->E : 3) : gt_int(c->E);
                    dup = false;
                    for (int q = 0; q < k; q++) dup |= r->choice[t * c->top_k + q] == e;
                } while (dup);
                r->choice[t * c->top_k + k] = e;
            }
        moe_host_sort(r->choice, r->n_rows, c->E, r->order, r->pos, r->seg, r->active);
        r->d_seg = gt_up(r->seg, (size_t)(c->E + 1) * 4);
        r->d_active = gt_up(r->active, (size_t)(c->E + 1) * 4);
        r->d_order = gt_up(r->order, (size_t)r->n_rows * 4);
    }
    r->rows = (struct sk_moe_rows){.seg = r->d_seg, .active = r->d_active, .order = c->gather ? r->d_order : NULL,
                                   .n_groups = r->groups, .n_rows = r->n_rows, .top_k = c->top_k,
                                   .invariant = c->invariant};
}

static inline void moe_rows_ref_free(struct moe_rows_ref *r)
{
    cudaFree(r->d_seg), cudaFree(r->d_active), cudaFree(r->d_order);
    free(r->choice), free(r->order), free(r->pos);
}

/* Which kernel the products take for these rows (kernels/moe_common.cuh, moe_launch): the tensor
 * cores for groups of more than 8 rows on an even spread (dense: more than 8 rows), unless
 * invariant. */
static inline bool moe_ref_mma(const struct moe_case *c, const struct moe_rows_ref *r)
{
    const int slots = c->E > 0 ? (c->E < r->n_rows ? c->E : r->n_rows) : 1;
    return !c->invariant && r->n_rows > slots * 8 && c->k_in % 16 == 0;
}

static inline float moe_ref_silu(float g)
{
    return g / (1.0f + expf(-g));
}

/* The worst error of a product's output (y, or act with swiglu) against double sums of the same
 * weights w ([groups, wrows, k_in] as float) and inputs x (bf16), in units of its bound (at most
 * 1 passes); *worst_row: its row. Plain: 1e-4 of the sum of |products|. Swiglu: the output's
 * bf16 rounding (8e-3 relative, twice its half ulp) plus each sum's fp32 error (1e-4 of its sum of
 * |products|, the plain bound) carried through silu(a) * u: where a or u nearly cancel, that
 * error dominates. */
static inline double moe_ref_worst(const struct moe_case *c, const struct moe_rows_ref *r, const float *w,
                                   const uint16_t *x, const float *y, const uint16_t *act, int *worst_row)
{
    double worst = 0;
    *worst_row = -1;
    for (int row = 0; row < r->n_rows; row++) {
        int g = 0, src = row;
        if (c->E > 0) {
            while (!(row >= r->seg[g] && row < r->seg[g + 1])) g++;
            if (c->gather) src = r->order[row] / c->top_k;
        }
        for (int n = 0; n < c->n_out; n++) {
            const float *wg = w + ((size_t)g * r->wrows + n) * c->k_in, *wu = wg + (size_t)c->n_out * c->k_in;
            const uint16_t *xr = x + (size_t)src * c->k_in;
            double a = 0, u = 0, mag = 0, mag_u = 0;
            for (int k = 0; k < c->k_in; k++) {
                const double xv = gt_bf2f(xr[k]);
                a += wg[k] * xv, mag += fabs(wg[k] * xv);
                if (c->swiglu) u += wu[k] * xv, mag_u += fabs(wu[k] * xv);
            }
            double err;
            if (c->swiglu) {
                const double sg = 1.0 / (1.0 + exp(-a)), dsilu = sg * (1.0 + a * (1.0 - sg));
                const double want = (double)moe_ref_silu((float)a) * u, got = gt_bf2f(act[(size_t)row * c->n_out + n]);
                const double tol = 8e-3 * fabs(want) + 1e-4 * (fabs(dsilu * u) * mag + fabs(a * sg) * mag_u) + 1e-6;
                err = fabs(got - want) / tol;
            } else {
                err = fabs((double)y[(size_t)row * c->n_out + n] - a) / (mag + 1e-30) / 1e-4;
            }
            if (isnan(err)) err = INFINITY;
            if (err > worst) worst = err, *worst_row = row;
        }
    }
    return worst;
}

/* The check's line: kernel (the launcher's name) took case c's rows with the worst error given. */
static inline void moe_ref_check(const char *kernel, const struct moe_case *c, const struct moe_rows_ref *r,
                                 double worst, int worst_row)
{
    GT_CHECK(worst <= 1.0,
             "%s %s (%s): %d rows, %d groups, %d x %d%s: worst error %.2f of its bound (row %d; bound: %s)", kernel,
             c->what, moe_ref_mma(c, r) ? "tensor cores" : "CUDA cores", r->n_rows, r->groups, c->n_out, c->k_in,
             c->swiglu ? ", silu(gate) * up in bf16" : "", worst, worst_row,
             c->swiglu ? "8e-3 relative for the bf16 output, plus 1e-4 of each sum's |products| through silu(a) * u"
                       : "1e-4 of the sum of |products|");
}

#endif
