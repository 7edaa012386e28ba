/* A mixture-of-experts router's choice for one token, as Hugging Face transformers makes it on
 * the CPU: softmax of the router logits in float32, torch.topk of the probabilities (its order,
 * ties included), then the chosen probabilities renormalised to sum to 1 or kept as they are
 * (norm_topk_prob; Mixtral always renormalises). Pure logic, no allocation. */
#ifndef SLUICE_WORKER_CPU_ROUTER_H
#define SLUICE_WORKER_CPU_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

/* The most experts a router may choose among. */
#define CPU_ROUTER_MAX_EXPERTS 1024

/* torch.topk(values, k, largest=True, sorted=True) on the CPU: the k indices of the largest of
 * n values, in torch's order. Where values tie, torch keeps the order its selection algorithm
 * (libstdc++'s nth_element, or partial_sort when k * 64 <= n) leaves them in; this replays that
 * algorithm so the same expert wins a tie. n <= CPU_ROUTER_MAX_EXPERTS, 1 <= k <= n. */
void cpu_router_topk(const float *values, int n, int k, int32_t *idx);

/* One token's routing: probs (n floats, scratch) gets the softmax of logits; idx and weight
 * (k each) get the chosen experts in torch.topk's order and their weights. */
void cpu_router_route(const float *logits, int n, int k, bool renormalise, float *probs, int32_t *idx, float *weight);

#endif
