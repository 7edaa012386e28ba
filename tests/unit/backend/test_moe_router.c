/* The MoE router as pure logic: torch.topk's choice and order, ties included (against
 * tests/fixtures/families/moe_router_ties.json, made by torch), the softmax, and each
 * model's normalisation of the chosen probabilities. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>

#include "worker/backend/cpu/cpu_router.h"

#define TIES "tests/fixtures/families/moe_router_ties.json"

Test(moe_router, topk_matches_torch_including_ties)
{
    json_error_t jerr;
    json_t *root = json_load_file(TIES, 0, &jerr);
    cr_assert(root, "cannot read %s: %s (run from the repository root)", TIES, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    cr_assert(json_array_size(cases) >= 100);
    size_t c;
    json_t *tc;
    int n_tied = 0;
    json_array_foreach(cases, c, tc) {
        json_t *vals = json_object_get(tc, "values"), *want = json_object_get(tc, "indices");
        int n = (int)json_array_size(vals), k = (int)json_integer_value(json_object_get(tc, "k"));
        cr_assert(n <= CPU_ROUTER_MAX_EXPERTS && k >= 1 && k <= n && (int)json_array_size(want) == k);
        float v[CPU_ROUTER_MAX_EXPERTS];
        for (int j = 0; j < n; j++) v[j] = (float)json_number_value(json_array_get(vals, (size_t)j));
        int32_t idx[64];
        cpu_router_topk(v, n, k, idx);
        for (int j = 0; j < k; j++)
            cr_assert_eq(idx[j], json_integer_value(json_array_get(want, (size_t)j)),
                         "case %zu (n %d, k %d): position %d is expert %d, torch chose %lld", c, n, k, j, idx[j],
                         (long long)json_integer_value(json_array_get(want, (size_t)j)));
        /* Count the cases where a tie crosses the k-th place: the ones the order decides. */
        float kth = v[idx[k - 1]];
        int equal = 0;
        for (int j = 0; j < n; j++) equal += v[j] == kth;
        int equal_in = 0;
        for (int j = 0; j < k; j++) equal_in += v[idx[j]] == kth;
        n_tied += equal > equal_in;
    }
    cr_assert(n_tied >= 50, "only %d cases have a tie at the k-th place", n_tied);
    json_decref(root);
}

Test(moe_router, distinct_values_come_largest_first)
{
    float v[8] = {0.1f, 0.7f, -2.0f, 0.3f, 0.9f, 0.0f, 0.2f, 0.5f};
    int32_t idx[8];
    cpu_router_topk(v, 8, 4, idx);
    int32_t want[4] = {4, 1, 7, 3};
    for (int j = 0; j < 4; j++) cr_assert_eq(idx[j], want[j]);
    cpu_router_topk(v, 8, 8, idx);
    for (int j = 1; j < 8; j++) cr_assert(v[idx[j - 1]] >= v[idx[j]]);
}

Test(moe_router, softmax_then_topk_then_renormalise_or_not)
{
    float logits[4] = {1.0f, 3.0f, 2.0f, 0.5f}, probs[4], w[2];
    int32_t idx[2];
    double e[4], s = 0;
    for (int j = 0; j < 4; j++) s += e[j] = exp(logits[j]);
    cpu_router_route(logits, 4, 2, false, probs, idx, w);
    cr_assert_eq(idx[0], 1);
    cr_assert_eq(idx[1], 2);
    for (int j = 0; j < 4; j++) cr_assert_float_eq(probs[j], e[j] / s, 1e-6);
    /* Qwen with norm_topk_prob false: the softmax probabilities themselves. */
    cr_assert_float_eq(w[0], e[1] / s, 1e-6);
    cr_assert_float_eq(w[1], e[2] / s, 1e-6);
    /* Mixtral, or norm_topk_prob true: renormalised over the chosen two. */
    cpu_router_route(logits, 4, 2, true, probs, idx, w);
    cr_assert_float_eq(w[0], e[1] / (e[1] + e[2]), 1e-6);
    cr_assert_float_eq(w[1], e[2] / (e[1] + e[2]), 1e-6);
    cr_assert_float_eq(w[0] + w[1], 1.0f, 1e-6);
}

Test(moe_router, large_logits_do_not_overflow)
{
    float logits[3] = {1000.0f, 999.0f, -1000.0f}, probs[3], w[1];
    int32_t idx[1];
    cpu_router_route(logits, 3, 1, false, probs, idx, w);
    cr_assert_eq(idx[0], 0);
    cr_assert(isfinite(w[0]) && w[0] > 0.7f && w[0] < 0.75f);
}
