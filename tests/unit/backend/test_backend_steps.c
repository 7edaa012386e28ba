/* backend_submit / backend_collect over a backend that only runs whole steps: the results
 * wait for their collect, tokens given as the previous step's rows are filled in, and misuse
 * gets an error, not a wrong step. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend/backend.h"

struct echo {
    struct backend b;
    int32_t seen[8]; /* the tokens of the last step run */
    int steps;
};

/* Samples 100 * (step number) + the row's last input token, so each result says where it came from. */
static int echo_forward(struct backend *b, const struct batch *batch, struct sample_result *results)
{
    struct echo *e = (struct echo *)b;
    e->steps++;
    memcpy(e->seen, batch->tokens, (size_t)batch->n_tokens * sizeof *batch->tokens);
    for (int32_t s = 0, t = 0, r = 0; s < batch->n_seqs; s++) {
        t += batch->seqs[s].n_new;
        if (batch->seqs[s].sample) results[r++] = (struct sample_result){.token = 100 * e->steps + batch->tokens[t - 1]};
    }
    return 0;
}

static void echo_free(struct backend *b)
{
    (void)b;
}

static const struct backend_ops echo_ops = {.forward = echo_forward, .free = echo_free};

/* A step of n one-token sequences, all sampled. */
static struct batch step(struct batch_seq *seqs, int32_t *tokens, int n)
{
    for (int i = 0; i < n; i++) seqs[i] = (struct batch_seq){.n_new = 1, .sample = true};
    return (struct batch){.n_seqs = n, .seqs = seqs, .n_tokens = n, .tokens = tokens};
}

Test(backend_steps, results_wait_and_tokens_come_from_the_previous_step)
{
    struct echo e = {.b = {.ops = &echo_ops, .name = "echo"}};
    struct batch_seq seqs[3];
    struct sample_result res[3];
    cr_assert_not(backend_submit_returns_early(&e.b));

    int32_t t1[3] = {1, 2, 3};
    struct batch b1 = step(seqs, t1, 3);
    cr_assert_eq(backend_submit(&e.b, &b1), 0, "%s", e.b.error);
    /* Step 2 reads rows 2 and 0 of step 1 (tokens 103 and 101), and a known token. */
    int32_t t2[3] = {BACKEND_TOKEN_FROM_PREV(2), 7, BACKEND_TOKEN_FROM_PREV(0)};
    struct batch b2 = step(seqs, t2, 3);
    cr_assert_eq(backend_submit(&e.b, &b2), 0, "%s", e.b.error);
    cr_assert_eq(e.seen[0], 103);
    cr_assert_eq(e.seen[1], 7);
    cr_assert_eq(e.seen[2], 101);
    cr_assert_lt(backend_submit(&e.b, &b2), 0, "a third step while two wait");

    cr_assert_eq(backend_collect(&e.b, res), 0);
    cr_assert_eq(res[0].token, 101);
    cr_assert_eq(res[2].token, 103);
    cr_assert_eq(backend_collect(&e.b, res), 0);
    cr_assert_eq(res[0].token, 303);
    cr_assert_eq(res[1].token, 207);
    cr_assert_lt(backend_collect(&e.b, res), 0, "nothing is queued");
    cr_assert(strstr(e.b.error, "no step") != NULL, "%s", e.b.error);

    /* A collected step still feeds the next one. */
    int32_t t3[1] = {BACKEND_TOKEN_FROM_PREV(1)};
    struct batch b3 = step(seqs, t3, 1);
    cr_assert_eq(backend_forward(&e.b, &b3, res), 0, "%s", e.b.error);
    cr_assert_eq(e.seen[0], 207);
    cr_assert_eq(res[0].token, 300 + 207);
    backend_free(&e.b);
}

Test(backend_steps, a_row_the_previous_step_did_not_sample_is_refused)
{
    struct echo e = {.b = {.ops = &echo_ops, .name = "echo"}};
    struct batch_seq seqs[2];
    struct sample_result res[2];
    int32_t t0[1] = {BACKEND_TOKEN_FROM_PREV(0)};
    struct batch b0 = step(seqs, t0, 1);
    cr_assert_lt(backend_submit(&e.b, &b0), 0, "no previous step");
    cr_assert(strstr(e.b.error, "previous step") != NULL, "%s", e.b.error);

    int32_t t1[2] = {4, 5};
    struct batch b1 = step(seqs, t1, 2);
    cr_assert_eq(backend_forward(&e.b, &b1, res), 0, "%s", e.b.error);
    int32_t t2[1] = {BACKEND_TOKEN_FROM_PREV(2)};
    struct batch b2 = step(seqs, t2, 1);
    cr_assert_lt(backend_submit(&e.b, &b2), 0, "step 1 sampled 2 rows");
    cr_assert_eq(e.steps, 1, "a refused step does not run");
    backend_free(&e.b);
}
