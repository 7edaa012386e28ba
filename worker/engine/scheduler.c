/* Continuous batching: running sequences first (in admission order), then FCFS admission of
 * waiting ones while blocks, tokens and sequence slots last, each with its longest cached
 * prefix mapped when prefix caching is on. */
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
    if (s->opt.prefix_caching) s->hits = malloc((size_t)(num_blocks > 0 ? num_blocks : 1) * sizeof *s->hits);
    if (!s->entries || (s->opt.prefix_caching && !s->hits)) {
        free(s->entries);
        free(s->hits);
        kv_cache_free(&s->kv);
        return SCHED_ERR_NOMEM;
    }
    return 0;
}

/* ---- prefix caching ------------------------------------------------------------------------ */

static inline uint64_t parent_hash(const struct sched_seq *q, int32_t block)
{
    return block > 0 ? q->hashes[block - 1] : pc_hash_root(q->salt);
}

/* Extends the sequence's chain hashes to its first n_blocks full blocks, as far as their tokens
 * are known (the tail may hold placeholders for tokens still on the device). Returns how many
 * of those n_blocks are hashed (more may be, from an earlier call); out of memory only caches
 * less. */
static int32_t seq_hash_upto(struct sched_seq *q, int32_t n_blocks)
{
    if (n_blocks > q->n_tokens / KV_BLOCK_SIZE) n_blocks = q->n_tokens / KV_BLOCK_SIZE;
    if (n_blocks > q->hashes_cap) {
        int32_t cap = q->hashes_cap ? q->hashes_cap : 8;
        while (cap < n_blocks) cap *= 2;
        uint64_t *h = realloc(q->hashes, (size_t)cap * sizeof *h);
        if (!h) return q->n_hashed;
        q->hashes = h;
        q->hashes_cap = cap;
    }
    while (q->n_hashed < n_blocks) {
        const int32_t *t = q->tokens + (size_t)q->n_hashed * KV_BLOCK_SIZE;
        for (int k = 0; k < KV_BLOCK_SIZE; k++)
            if (t[k] < 0) return q->n_hashed;
        q->hashes[q->n_hashed] = pc_hash_block(parent_hash(q, q->n_hashed), t);
        q->n_hashed++;
    }
    return q->n_hashed < n_blocks ? q->n_hashed : n_blocks;
}

/* Indexes the sequence's full blocks among its first n_tokens (whose K/V steps already planned
 * write): lookups may map them from step ready_at on. */
static void seq_register(struct scheduler *s, struct sched_seq *q, int32_t n_tokens, uint64_t ready_at)
{
    if (!s->opt.prefix_caching) return;
    int32_t full = n_tokens / KV_BLOCK_SIZE;
    if (s->opt.prefix_cache_prompt_only && full > q->n_prompt / KV_BLOCK_SIZE) full = q->n_prompt / KV_BLOCK_SIZE;
    if (full > q->table.n_blocks) full = q->table.n_blocks;
    if (full <= q->n_registered) return;
    full = seq_hash_upto(q, full);
    for (; q->n_registered < full; q->n_registered++) {
        const int32_t i = q->n_registered;
        if (q->table.blocks[i] < 0) continue; /* freed out of the window before it was indexed */
        /* Refused when another block holds this prefix already: this one is then freed as
         * uncached, and the chain goes on through the hash. */
        (void)pc_insert(&s->kv.pc, q->table.blocks[i], q->hashes[i], parent_hash(q, i),
                        q->tokens + (size_t)i * KV_BLOCK_SIZE, ready_at);
    }
}

/* Releases the sequence's blocks, last to first. A block that was refused as a duplicate
 * refreshes the cached block holding the same prefix, which then stays at least as recent in
 * the LRU as the blocks after it, as for the sequences that shared it. */
static void seq_release(struct scheduler *s, struct sched_seq *q)
{
    struct kv_table *t = &q->table;
    for (int32_t i = t->n_blocks - 1; i >= 0; i--) {
        if (t->blocks[i] < 0) continue; /* freed out of the sliding window already */
        if (i < q->n_registered && !pc_indexed(&s->kv.pc, t->blocks[i])) {
            int32_t same = pc_find(&s->kv.pc, q->hashes[i], parent_hash(q, i), q->tokens + (size_t)i * KV_BLOCK_SIZE);
            if (same >= 0) pc_lru_touch(&s->kv.pc, same);
        }
        kv_block_release(&s->kv, t->blocks[i]);
    }
    t->n_blocks = 0;
    q->n_registered = 0;
    q->n_dropped = 0;
}

/* Frees the blocks wholly before the window of the sequence's next token (sched_options
 * sliding_window), oldest first, as seq_release would release them. */
static void seq_drop_out_of_window(struct scheduler *s, struct sched_seq *q)
{
    int32_t upto = kv_blocks_before_window(s->opt.sliding_window, q->n_computed);
    if (upto > q->table.n_blocks) upto = q->table.n_blocks;
    for (; q->n_dropped < upto; q->n_dropped++) {
        int32_t *b = &q->table.blocks[q->n_dropped];
        if (*b < 0) continue;
        kv_block_release(&s->kv, *b);
        *b = -1;
    }
}

struct lookup {
    int32_t n_hit;  /* leading blocks found, in s->hits */
    int32_t n_idle; /* of which nobody holds (they leave the LRU when mapped) */
    bool wait;      /* better mapped next step than computed now (see seq_lookup) */
};

/* The longest cached prefix of a waiting sequence: O(its blocks) probes, no scan of the cache.
 * The last token is always left to compute: its logits are what the sequence samples from.
 *
 * Blocks another sequence is computing in this step are not readable yet. When they would
 * give this sequence its whole prompt (it is a twin: the n choices of one request) or at least
 * SCHED_WAIT_MIN_BLOCKS (a long shared system prompt), it waits one step to map them rather
 * than compute them again; a short run (a chat template's first block, which every request
 * shares) is not worth a step's delay. */
static struct lookup seq_lookup(struct scheduler *s, struct sched_seq *q)
{
    struct lookup r = {0, 0, false};
    if (!s->opt.prefix_caching || q->no_cached_prefix) return r;
    int32_t n = seq_hash_upto(q, (q->n_tokens - 1) / KV_BLOCK_SIZE), pending = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t b = pc_find(&s->kv.pc, q->hashes[i], parent_hash(q, i), q->tokens + (size_t)i * KV_BLOCK_SIZE);
        if (b < 0) break;
        if (pending || s->kv.pc.ready_at[b] > s->step) {
            pending++;
            continue;
        }
        s->hits[r.n_hit++] = b;
        r.n_idle += s->kv.refcount[b] == 0;
    }
    r.wait = pending > 0 && (pending >= SCHED_WAIT_MIN_BLOCKS || r.n_hit + pending == n);
    return r;
}

/* ---- sequences ----------------------------------------------------------------------------- */

static void seq_destroy(struct scheduler *s, struct sched_seq *q)
{
    seq_release(s, q);
    kv_table_free(&s->kv, &q->table);
    free(q->hashes);
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
    free(s->hits);
    kv_cache_free(&s->kv);
    memset(s, 0, sizeof *s);
}

int sched_add(struct scheduler *s, uint64_t id, int32_t *prompt, int32_t n_prompt, void *user,
              struct sched_seq **out)
{
    /* With a sliding window whose span and largest step fit the cache, a prompt of any length
     * goes through it in chunks, the blocks behind the window freed as it goes. */
    const int32_t w = s->opt.sliding_window, step = s->opt.max_num_batched_tokens;
    bool windowed = w > 0 && step > 0 && s->kv.num_blocks >= (w + step - 2) / KV_BLOCK_SIZE + 2;
    if (n_prompt < 1 || (kv_blocks_for_tokens(n_prompt) > s->kv.num_blocks && !windowed)) return SCHED_ERR_TOO_LONG;
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
    /* Its last blocks stay cached: the next turn of a conversation resends them. Every step
     * that wrote them is planned, so the next step may read them. */
    seq_register(s, seq, seq->n_computed, 0);
    seq_destroy(s, seq);
}

static void preempt(struct scheduler *s, struct sched_seq *q)
{
    /* Never one scheduled in this step: its blocks were written by earlier ones, and its
     * recompute will find them unless they are evicted first. */
    seq_register(s, q, q->n_computed, 0);
    seq_release(s, q);
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
    q->len_at_step = q->n_tokens;
    /* Blocks whose tokens became known since they were computed, then those this step fills:
     * readable by other sequences from the next step on. */
    seq_register(s, q, q->n_computed, 0);
    q->n_computed += n_new;
    seq_register(s, q, q->n_computed, s->step + 1);
    e->sample = q->n_computed == q->n_tokens;
}

int sched_schedule(struct scheduler *s, const struct sched_entry **entries, int32_t *n_entries)
{
    int32_t budget = s->opt.max_num_batched_tokens, n = 0;
    bool preempted = false;
    s->step++;
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
        if (s->opt.recompute_past > 0 && q->n_tokens > s->opt.recompute_past && q->n_computed > 0 &&
            q->len_at_step <= s->opt.recompute_past) {
            seq_register(s, q, q->n_computed, 0);
            seq_release(s, q);
            q->n_computed = 0;
            q->no_cached_prefix = true;
            pending = q->n_tokens;
            n_new = pending < budget ? pending : budget;
        }
        seq_drop_out_of_window(s, q);
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
    struct sched_seq *next;
    for (q = s->waiting.head; !preempted && q && budget > 0 && s->running.count < s->opt.max_num_seqs; q = next) {
        next = q->next;
        struct lookup hit = seq_lookup(s, q);
        if (hit.wait) continue; /* mapped next step, not computed twice */
        const int32_t n_cached = hit.n_hit * KV_BLOCK_SIZE;
        int32_t pending = q->n_tokens - n_cached;
        int32_t n_new = pending < budget ? pending : budget;
        if (kv_blocks_for_tokens(n_cached + n_new) - hit.n_hit > kv_cache_num_free(&s->kv) - hit.n_idle) break;
        for (int32_t i = 0; i < hit.n_hit; i++)
            if (kv_table_append_held(&s->kv, &q->table, s->hits[i]) != 0) return SCHED_ERR_NOMEM;
        q->n_computed = n_cached;
        q->n_registered = hit.n_hit;
        int rc = kv_table_reserve(&s->kv, &q->table, n_cached + n_new);
        if (rc != 0) return SCHED_ERR_NOMEM;
        if (s->opt.prefix_caching) {
            s->prefix_query_tokens += (uint64_t)q->n_tokens;
            s->prefix_hit_tokens += (uint64_t)n_cached;
        }
        list_unlink(&s->waiting, q);
        q->state = SCHED_RUNNING;
        list_push_back(&s->running, q);
        add_entry(s, &n, q, n_new);
        budget -= n_new;
    }
    *n_entries = n;
    return 0;
}
