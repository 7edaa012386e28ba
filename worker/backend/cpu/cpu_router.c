/* The MoE router's softmax and top-k, in the order torch computes them on the CPU.
 *
 * torch.topk (aten's TopKImpl.h) fills (value, index) pairs and, for the largest k, runs
 * std::partial_sort when k * 64 <= n and otherwise std::nth_element at k - 1 followed by
 * std::sort of the first k - 1, both with "a.value > b.value" (NaN first). Which of several
 * equal values ends up chosen is whatever libstdc++'s introselect leaves, so this file replays
 * libstdc++'s algorithms step for step (bits/stl_algo.h, bits/stl_heap.h) on the pairs. Ties are
 * rare in trained routers but certain in degenerate ones (equal router rows, zero weights). */
#include "worker/backend/cpu/cpu_router.h"

#include <math.h>
#include <stddef.h>

struct pair {
    float v;
    int32_t i;
};

/* torch's comparator for largest=true: NaN sorts first. */
static bool before(const struct pair *a, const struct pair *b)
{
    return (isnan(a->v) && !isnan(b->v)) || a->v > b->v;
}

static void swap(struct pair *a, struct pair *b)
{
    struct pair t = *a;
    *a = *b;
    *b = t;
}

static int lg(ptrdiff_t n)
{
    int k = 0;
    while (n > 1) n >>= 1, k++;
    return k;
}

/* ---- heaps (std::__push_heap, __adjust_heap, __make_heap, __pop_heap, __heap_select, __sort_heap) */

static void push_heap(struct pair *first, ptrdiff_t hole, ptrdiff_t top, struct pair value)
{
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && before(&first[parent], &value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void adjust_heap(struct pair *first, ptrdiff_t hole, ptrdiff_t len, struct pair value)
{
    ptrdiff_t top = hole, child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (before(&first[child], &first[child - 1])) child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    push_heap(first, hole, top, value);
}

static void make_heap(struct pair *first, struct pair *last)
{
    ptrdiff_t len = last - first;
    if (len < 2) return;
    for (ptrdiff_t parent = (len - 2) / 2;; parent--) {
        adjust_heap(first, parent, len, first[parent]);
        if (parent == 0) return;
    }
}

static void pop_heap(struct pair *first, struct pair *last, struct pair *result)
{
    struct pair value = *result;
    *result = *first;
    adjust_heap(first, 0, last - first, value);
}

static void heap_select(struct pair *first, struct pair *middle, struct pair *last)
{
    make_heap(first, middle);
    for (struct pair *i = middle; i < last; i++)
        if (before(i, first)) pop_heap(first, middle, i);
}

static void sort_heap(struct pair *first, struct pair *last)
{
    while (last - first > 1) {
        last--;
        pop_heap(first, last, last);
    }
}

/* ---- insertion sort and quicksort partition (std::__insertion_sort, __unguarded_partition_pivot) */

static void unguarded_linear_insert(struct pair *last)
{
    struct pair value = *last;
    struct pair *next = last - 1;
    while (before(&value, next)) {
        *last = *next;
        last = next;
        next--;
    }
    *last = value;
}

static void insertion_sort(struct pair *first, struct pair *last)
{
    if (first == last) return;
    for (struct pair *i = first + 1; i != last; i++) {
        if (before(i, first)) {
            struct pair value = *i;
            for (struct pair *p = i; p != first; p--) p[0] = p[-1];
            *first = value;
        } else {
            unguarded_linear_insert(i);
        }
    }
}

static void move_median_to_first(struct pair *result, struct pair *a, struct pair *b, struct pair *c)
{
    if (before(a, b)) {
        if (before(b, c)) swap(result, b);
        else if (before(a, c)) swap(result, c);
        else swap(result, a);
    } else if (before(a, c)) {
        swap(result, a);
    } else if (before(b, c)) {
        swap(result, c);
    } else {
        swap(result, b);
    }
}

static struct pair *unguarded_partition(struct pair *first, struct pair *last, struct pair *pivot)
{
    for (;;) {
        while (before(first, pivot)) first++;
        last--;
        while (before(pivot, last)) last--;
        if (!(first < last)) return first;
        swap(first, last);
        first++;
    }
}

static struct pair *unguarded_partition_pivot(struct pair *first, struct pair *last)
{
    struct pair *mid = first + (last - first) / 2;
    move_median_to_first(first, first + 1, mid, last - 1);
    return unguarded_partition(first + 1, last, first);
}

/* ---- std::nth_element, std::partial_sort, std::sort */

static void nth_element(struct pair *first, struct pair *nth, struct pair *last)
{
    if (first == last || nth == last) return;
    int depth = 2 * lg(last - first);
    while (last - first > 3) {
        if (depth == 0) {
            heap_select(first, nth + 1, last);
            swap(first, nth);
            return;
        }
        depth--;
        struct pair *cut = unguarded_partition_pivot(first, last);
        if (cut <= nth) first = cut;
        else last = cut;
    }
    insertion_sort(first, last);
}

static void partial_sort(struct pair *first, struct pair *middle, struct pair *last)
{
    heap_select(first, middle, last);
    sort_heap(first, middle);
}

enum { SORT_THRESHOLD = 16 };

static void introsort_loop(struct pair *first, struct pair *last, int depth)
{
    while (last - first > SORT_THRESHOLD) {
        if (depth == 0) {
            partial_sort(first, last, last);
            return;
        }
        depth--;
        struct pair *cut = unguarded_partition_pivot(first, last);
        introsort_loop(cut, last, depth);
        last = cut;
    }
}

static void sort(struct pair *first, struct pair *last)
{
    if (first == last) return;
    introsort_loop(first, last, 2 * lg(last - first));
    if (last - first > SORT_THRESHOLD) {
        insertion_sort(first, first + SORT_THRESHOLD);
        for (struct pair *i = first + SORT_THRESHOLD; i != last; i++) unguarded_linear_insert(i);
    } else {
        insertion_sort(first, last);
    }
}

void cpu_router_topk(const float *values, int n, int k, int32_t *idx)
{
    struct pair q[CPU_ROUTER_MAX_EXPERTS];
    for (int j = 0; j < n; j++) q[j] = (struct pair){values[j], j};
    if ((int64_t)k * 64 <= n) {
        partial_sort(q, q + k, q + n);
    } else {
        nth_element(q, q + k - 1, q + n);
        sort(q, q + k - 1);
    }
    for (int j = 0; j < k; j++) idx[j] = q[j].i;
}

void cpu_router_route(const float *logits, int n, int k, bool renormalise, float *probs, int32_t *idx, float *weight)
{
    /* softmax as aten's CPU kernel does it: exp(x - max), then times 1 / sum. */
    float max = logits[0];
    for (int j = 1; j < n; j++)
        if (logits[j] > max) max = logits[j];
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        probs[j] = expf(logits[j] - max);
        sum += probs[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) probs[j] *= inv;
    cpu_router_topk(probs, n, k, idx);
    float top = 0.0f;
    for (int j = 0; j < k; j++) {
        weight[j] = probs[idx[j]];
        top += weight[j];
    }
    if (renormalise)
        for (int j = 0; j < k; j++) weight[j] /= top;
}
