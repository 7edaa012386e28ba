/* Constrained decoding (structured output): the grammar a request's output must follow, and a
 * per-sequence matcher that gives, each step, the mask of the tokens that may come next.
 *
 * Design
 * ------
 * Front ends. Every constraint compiles to one form: a context-free grammar over BYTES, rules
 * of alternatives of sequences whose elements are byte sets (256-bit) or rule references.
 * GBNF (llama.cpp's syntax) is parsed straight into it (gram_gbnf.c); JSON Schema (OpenAI's
 * strict subset, gram_json.c), `json_object`, regular expressions (gram_regex.c) and choice
 * lists are translated to GBNF text first, so one parser does the lowering: literals become
 * byte sequences, character classes over code points become alternatives of UTF-8 byte-range
 * sequences (gram_utf8.c), `x*` a right-recursive helper rule, `x{m,n}` a chain of them.
 * Finishing a grammar (gram_build.c) refuses left recursion, drops what can never match,
 * flattens every alternative into one element array ended by an END mark (so a parser
 * position is one index), and computes for each rule where its frames can return to.
 *
 * Runtime. A nondeterministic pushdown automaton over bytes (gram_pda.c): a state is a set of
 * stacks; a stack is a chain of frames (a position and a parent frame) kept as a persistent
 * tree in an arena, so stacks share their bottoms, and a walk that tries bytes and backs up
 * only truncates the arena. A reference in tail position replaces its frame (so `x*` runs in
 * constant stack depth). A stack whose root rule completes is the accepting state.
 *
 * Masks. The vocabulary's bytes (gram_vocab.c, once per tokenizer) form a trie in preorder.
 * A token is allowed iff its bytes take the current state to a non-empty one. Walking the
 * whole trie per step is too slow (400k nodes at 128k vocabulary), so, as XGrammar does,
 * each stack-top position is classified once per grammar (lazily, then cached; gram_mask.c):
 * walking the trie from that position alone, with its context unknown, every token is
 * ACCEPTED in any context, REJECTED in any context, or UNCERTAIN. Where a rule returns to one
 * place only, popping it stays exact (the context is known); where it returns to several (a
 * `string` rule used by many properties), each return site is tried as a hypothesis, and a
 * token alive under every hypothesis is still accepted. At run time the mask is the OR of
 * the accepted sets of the state's stack tops, plus the uncertain tokens checked against the
 * real stacks (walked in trie order so shared prefixes are advanced once). The result is the
 * exact mask: the same as walking the whole trie from the real state (tests check that).
 *
 * Tokens. A token's bytes are its text in the middle of a decoded sequence
 * (tok_token_piece); when the tokenizer's first token decodes differently (Metaspace and
 * Strip decoders drop a leading space: Llama 2), the first step uses a second trie of
 * first-token forms. Special tokens, and tokens whose bytes are empty, are never allowed; the
 * stop tokens are allowed exactly when the grammar can end.
 *
 * Caching. A compiled grammar bound to a vocabulary holds the per-position classification;
 * grammar_cache keeps compiled grammars by a hash of (kind, source), and shares one compiled
 * grammar among sources whose grammars are identical, per vocabulary (= tokenizer).
 *
 * Thread safety: a vocabulary and a compiled grammar may be used from several threads at
 * once (the lazy classification takes a lock); a matcher belongs to one thread at a time. */
#ifndef SLUICE_WORKER_GRAMMAR_H
#define SLUICE_WORKER_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* ---- grammars (no vocabulary) --------------------------------------------------------------- */
enum grammar_kind {
    GRAMMAR_JSON_SCHEMA, /* source: a JSON Schema document */
    GRAMMAR_JSON_OBJECT, /* source ignored: any JSON object */
    GRAMMAR_REGEX,       /* source: a regular expression, matched in full */
    GRAMMAR_CHOICE,      /* source: a JSON array of strings; the output is one of them */
    GRAMMAR_GBNF,        /* source: a GBNF grammar with a `root` rule */
};
const char *grammar_kind_name(enum grammar_kind kind); /* "json_schema", ... */

struct grammar;

/* Compiles source (len bytes, need not be NUL-terminated). On failure returns negative and
 * writes into err a message that says what and where (a JSON pointer into a schema, a line
 * and column of a grammar). */
int grammar_compile(struct grammar **out, enum grammar_kind kind, const char *source, size_t len,
                    char *err, size_t errlen);
void grammar_free(struct grammar *g);
/* A hash of the compiled form: equal grammars hash equal, whatever their source. */
uint64_t grammar_hash(const struct grammar *g);
/* The GBNF text a JSON Schema, json_object, regex or choice source translates to (malloc'd),
 * for debugging and tests. */
int grammar_to_gbnf(enum grammar_kind kind, const char *source, size_t len, char **gbnf, char *err,
                    size_t errlen);

/* ---- vocabularies ----------------------------------------------------------------------------- */
struct grammar_vocab;

/* The vocabulary of a tokenizer. stop_ids (n_stop of them, may be 0) are the tokens that end
 * a sequence: allowed when the grammar can end; with none given, the tokenizer's EOS. */
int grammar_vocab_from_tokenizer(struct grammar_vocab **out, const struct tokenizer *tok,
                                 const int32_t *stop_ids, size_t n_stop, char *err, size_t errlen);
/* A vocabulary from explicit token bytes (tests, toy vocabularies): token i is bytes[i] of
 * lens[i] bytes; a NULL entry or length 0 is never allowed. first_bytes, when not NULL, gives
 * the bytes each token stands for as the first token of a sequence (NULL entries: the same as
 * bytes). */
int grammar_vocab_from_bytes(struct grammar_vocab **out, int32_t n_vocab, const char *const *bytes,
                             const uint32_t *lens, const char *const *first_bytes,
                             const uint32_t *first_lens, const int32_t *stop_ids, size_t n_stop,
                             char *err, size_t errlen);
void grammar_vocab_free(struct grammar_vocab *v);
int32_t grammar_vocab_size(const struct grammar_vocab *v);
/* Words of a mask for this vocabulary: (n_vocab + 31) / 32. */
size_t grammar_vocab_mask_words(const struct grammar_vocab *v);
/* The bytes token id stands for (not first-token form); NULL and *len 0 for none. */
const char *grammar_vocab_token_bytes(const struct grammar_vocab *v, int32_t id, uint32_t *len);
bool grammar_vocab_is_stop(const struct grammar_vocab *v, int32_t id);

/* ---- compiled grammars (a grammar bound to a vocabulary) --------------------------------------- */
struct grammar_compiled;

/* Takes ownership of g. The vocabulary must outlive the result. Reference counted: starts at
 * one; each matcher holds one too. */
int grammar_compiled_new(struct grammar_compiled **out, struct grammar *g, const struct grammar_vocab *v);
void grammar_compiled_ref(struct grammar_compiled *c);
void grammar_compiled_unref(struct grammar_compiled *c);
const struct grammar *grammar_compiled_grammar(const struct grammar_compiled *c);
const struct grammar_vocab *grammar_compiled_vocab(const struct grammar_compiled *c);
/* Classifies every position now instead of on first use (seconds for large schemas). */
int grammar_compiled_precompute(struct grammar_compiled *c);
/* Positions classified so far, and the time that took in total (for benchmarks). */
void grammar_compiled_stats(const struct grammar_compiled *c, size_t *positions, size_t *classified,
                            double *classify_ms);

/* ---- the compile cache --------------------------------------------------------------------- */
struct grammar_cache;

/* Keeps up to capacity compiled grammars for one vocabulary, least recently used evicted
 * (a grammar in use by matchers lives on until they are freed). */
int grammar_cache_new(struct grammar_cache **out, const struct grammar_vocab *v, size_t capacity);
void grammar_cache_free(struct grammar_cache *c);
/* The compiled grammar for (kind, source), compiled on a miss. The caller owns a reference
 * (grammar_compiled_unref). Thread-safe. */
int grammar_cache_get(struct grammar_cache *c, enum grammar_kind kind, const char *source, size_t len,
                      struct grammar_compiled **out, char *err, size_t errlen);
struct grammar_cache_stats {
    uint64_t hits, misses, shared; /* shared: a miss whose compiled grammar another source had */
    size_t entries;
};
void grammar_cache_get_stats(struct grammar_cache *c, struct grammar_cache_stats *out);

/* ---- matchers (one per sequence) ------------------------------------------------------------ */
struct grammar_matcher;

int grammar_matcher_new(struct grammar_matcher **out, struct grammar_compiled *c);
void grammar_matcher_free(struct grammar_matcher *m);

/* Advances over token id. Returns 0, or negative when the token is not allowed (the matcher
 * is then unchanged). A stop token is allowed when the grammar can end, and ends it. */
int grammar_matcher_accept_token(struct grammar_matcher *m, int32_t id);
/* Advances over raw bytes (tests, forced text). Same return as accept_token. */
int grammar_matcher_accept_bytes(struct grammar_matcher *m, const char *s, size_t n);

/* Writes the mask of allowed tokens: bit (id % 32) of word id / 32 set when token id is
 * allowed. n_words may exceed the vocabulary's (a model's padded vocabulary): the rest is
 * zero. Returns 0, or negative on allocation failure (the mask is then all zero). */
int grammar_matcher_fill_mask(struct grammar_matcher *m, uint32_t *mask, size_t n_words);
/* The same, by walking the whole vocabulary trie from the current state with no cache: the
 * definition the fast path must equal (tests), and slow. */
int grammar_matcher_fill_mask_slow(struct grammar_matcher *m, uint32_t *mask, size_t n_words);

/* The grammar can end here (stop tokens are allowed). */
bool grammar_matcher_can_end(const struct grammar_matcher *m);
/* Nothing but the end can follow (or a stop token was accepted): the sequence should stop. */
bool grammar_matcher_is_done(const struct grammar_matcher *m);

#endif
