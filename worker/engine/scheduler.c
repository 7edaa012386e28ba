/* Continuous batching: running sequences first (in admission order), then FCFS admission of
 * waiting ones while blocks, tokens and sequence slots last. */
#include "worker/engine/scheduler.h"

#include <stdlib.h>
#include <string.h>

static void list_unlink(struct sched_list *l, struct sched_seq *q)
{
    if (q->prev) q->prev->next = q->next;
    else l->head = q->next;
    if (q->next) q->next->prev = q->prev;
    else l->tail = q->prev;
    q->prev = q->next = NULL;
    l->count--;
}

static void list_push_back(struct sched_list *l, struct sched_seq *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail) l->tail->next = q;
    else l->head = q;
    l->tail = q;
    l->count++;
}

static void list_push_front(struct sched_list *l, struct sched_seq *q)
{
    q->prev = NULL;
    q->next = l->head;
    if (l->head) l->head->prev = q;
    else l->tail = q;
    l->head = q;
    l->count++;
}

int sched_init(struct scheduler *s, int32_t num_blocks, const struct sched_options *opt)
{
    memset(s, 0, sizeof *s);
    s->opt = *opt;
    if (s->opt.max_num_seqs < 1) s->opt.max_num_seqs = 1;
    if (s->opt.max_num_batched_tokens < 1) s->opt.max_num_batched_tokens = 1;
    if (kv_cache_init(&s->kv, num_blocks) != 0) return SCHED_ERR_NOMEM;
    s->entries = calloc((size_t)s->opt.max_num_seqs, sizeof *s->entries);
    if (!s->entries) {
        kv_cache_free(&s->kv);
        return SCHED_ERR_NOMEM;
    }
    return 0;
}

static void seq_destroy(struct scheduler *s, struct sched_seq *q)
{
    kv_table_free(&s->kv, &q->table);
    free(q->tokens);
    free(q);
}

void sched_free(struct scheduler *s)
{
    struct sched_list *lists[2] = {&s->waiting, &s->running};
    for (int i = 0; i < 2; i++) {
        while (lists[i]->head) {
            struct sched_seq *q = lists[i]->head;
            list_unlink(lists[i], q);
            seq_destroy(s, q);
        }
    }
    free(s->entries);
    kv_cache_free(&s->kv);
    memset(s, 0, sizeof *s);
}

int sched_add(struct scheduler *s, uint64_t id, int32_t *prompt, int32_t n_prompt, void *user,
              struct sched_seq **out)
{
    if (n_prompt < 1 || kv_blocks_for_tokens(n_prompt) > s->kv.num_blocks) return SCHED_ERR_TOO_LONG;
    struct sched_seq *q = calloc(1, sizeof *q);
    if (!q) return SCHED_ERR_NOMEM;
    q->id = id;
    q->state = SCHED_WAITING;
    q->tokens = prompt;
    q->n_tokens = q->cap = q->n_prompt = n_prompt;
    q->user = user;
    list_push_back(&s->waiting, q);
    if (out) *out = q;
    return 0;
}

int sched_seq_append(struct sched_seq *seq, int32_t token)
{
    if (seq->n_tokens == seq->cap) {
        int32_t cap = seq->cap ? seq->cap * 2 : 16;
        int32_t *nt = realloc(seq->tokens, (size_t)cap * sizeof *nt);
        if (!nt) return SCHED_ERR_NOMEM;
        seq->tokens = nt;
        seq->cap = cap;
    }
    seq->tokens[seq->n_tokens++] = token;
    return 0;
}

void sched_seq_remove(struct scheduler *s, struct sched_seq *seq)
{
    list_unlink(seq->state == SCHED_RUNNING ? &s->running : &s->waiting, seq);
    seq_destroy(s, seq);
}

static void preempt(struct scheduler *s, struct sched_seq *q)
{
    kv_table_release(&s->kv, &q->table);
    q->n_computed = 0;
    list_unlink(&s->running, q);
    q->state = SCHED_WAITING;
    list_push_front(&s->waiting, q);
    s->preemptions++;
}

static void add_entry(struct scheduler *s, int32_t *n, struct sched_seq *q, int32_t n_new)
{
    struct sched_entry *e = &s->entries[(*n)++];
    e->seq = q;
    e->start_pos = q->n_computed;
    e->n_new = n_new;
    q->n_computed += n_new;
    e->sample = q->n_computed == q->n_tokens;
}

int sched_schedule(struct scheduler *s, const struct sched_entry **entries, int32_t *n_entries)
{
    int32_t budget = s->opt.max_num_batched_tokens, n = 0;
    bool preempted = false;
    *entries = s->entries;
    *n_entries = 0;

    struct sched_seq *q = s->running.head;
    while (q && budget > 0) {
        int32_t pending = q->n_tokens - q->n_computed;
        int32_t n_new = pending < budget ? pending : budget;
        if (n_new <= 0) {
            q = q->next;
            continue;
        }
        int32_t need = kv_table_blocks_needed(&q->table, q->n_computed + n_new);
        bool self_preempted = false;
        while (need > kv_cache_num_free(&s->kv)) {
            /* Out of blocks: the newest running sequence goes back to waiting. It is never
             * one already scheduled this step, because those are older than q. */
            struct sched_seq *victim = s->running.tail;
            preempt(s, victim);
            preempted = true;
            if (victim == q) {
                self_preempted = true;
                break;
            }
        }
        if (self_preempted) break;
        int rc = kv_table_reserve(&s->kv, &q->table, q->n_computed + n_new);
        if (rc != 0) return SCHED_ERR_NOMEM;
        add_entry(s, &n, q, n_new);
        budget -= n_new;
        q = q->next;
    }

    /* No admissions in a step that had to preempt: the cache is full, and admitting would
     * only take back the blocks just freed. */
    while (!preempted && s->waiting.head && budget > 0 && s->running.count < s->opt.max_num_seqs) {
        q = s->waiting.head;
        int32_t pending = q->n_tokens - q->n_computed;
        int32_t n_new = pending < budget ? pending : budget;
        if (kv_table_blocks_needed(&q->table, q->n_computed + n_new) > kv_cache_num_free(&s->kv)) break;
        int rc = kv_table_reserve(&s->kv, &q->table, q->n_computed + n_new);
        if (rc != 0) return SCHED_ERR_NOMEM;
        list_unlink(&s->waiting, q);
        q->state = SCHED_RUNNING;
        list_push_back(&s->running, q);
        add_entry(s, &n, q, n_new);
        budget -= n_new;
    }
    *n_entries = n;
    return 0;
}
