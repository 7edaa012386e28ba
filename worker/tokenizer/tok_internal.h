/* Private parts of the tokenizer: the loaded pipeline (normalizer, pre-tokenizer, BPE model,
 * post-processor, decoder) as flat lists of steps, and the small containers they share.
 *
 * Both loaders (tokenizer.json and GGUF) build the same struct; encode and decode only ever
 * interpret these steps, so a new normalizer or decoder kind is one enum value, one parse
 * case and one apply case. */
#ifndef SLUICE_WORKER_TOK_INTERNAL_H
#define SLUICE_WORKER_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/tokenizer/tokenizer.h"

/* Strings are built in common/strbuf.h's growable buffer. */
#include "common/strbuf.h"

/* A NUL-terminated copy of n bytes (which may hold NULs, as GGUF strings can). */
char *tok_strndup(const char *s, size_t n);

/* A list of strings kept in one arena: pre-tokenized pieces, or tokens being decoded. */
struct tok_piece {
    size_t off;
    size_t len;
    bool at_origin; /* starts at offset 0 of the input (Metaspace's prepend_scheme "first") */
};
struct tok_pieces {
    struct strbuf arena;
    struct tok_piece *v;
    size_t n, cap;
};
int tok_pieces_add(struct tok_pieces *p, const char *s, size_t len, bool at_origin);
void tok_pieces_clear(struct tok_pieces *p);
void tok_pieces_free(struct tok_pieces *p);
static inline const char *tok_piece_str(const struct tok_pieces *p, size_t i)
{
    return p->arena.p + p->v[i].off;
}

/* ---- hash maps ---------------------------------------------------------------------------- */
/* String to int32; keys are borrowed (they live in the tokenizer's token texts). */
struct tok_strmap {
    struct tok_strmap_slot {
        const char *key;
        uint32_t len;
        int32_t val;
    } *slots;
    size_t mask, count;
};
int tok_strmap_init(struct tok_strmap *m, size_t expected);
void tok_strmap_free(struct tok_strmap *m);
/* Inserts or overwrites. */
int tok_strmap_put(struct tok_strmap *m, const char *key, uint32_t len, int32_t val);
int32_t tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len); /* -1 absent */

/* (left id, right id) to (rank, merged id). */
struct tok_pairmap {
    struct tok_pair_slot {
        uint64_t key;
        int32_t rank;
        int32_t merged;
    } *slots;
    size_t mask, count;
};
int tok_pairmap_init(struct tok_pairmap *m, size_t expected);
void tok_pairmap_free(struct tok_pairmap *m);
/* Keeps the existing entry when the pair is already present (the first merge listed wins). */
int tok_pairmap_put(struct tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
const struct tok_pair_slot *tok_pairmap_get(const struct tok_pairmap *m, int32_t a, int32_t b);

/* ---- UTF-8 -------------------------------------------------------------------------------- */
/* Length of the valid UTF-8 character at s (1..4), or 0 when s[0..n) does not start with one. */
int tok_utf8_valid_len(const unsigned char *s, size_t n);
int tok_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp); /* returns length or 0 */
int tok_utf8_encode(uint32_t cp, char *out);
bool tok_utf8_is_valid(const char *s, size_t n);
/* Appends s with invalid sequences replaced by U+FFFD, one per maximal invalid subpart, as
 * Rust's String::from_utf8_lossy does. */
int tok_utf8_lossy_append(struct strbuf *out, const char *s, size_t n);
/* Length (0..3) of the tail of s that is the start of a valid character still missing bytes:
 * what a lossy decoder must wait on before it may decide. */
size_t tok_utf8_incomplete_tail(const char *s, size_t n);
/* Rust's char::is_whitespace (the White_Space property). */
bool tok_is_space_cp(uint32_t c);
/* Canonical composition (NFC) of valid UTF-8 text, appended to out. */
int tok_nfc_append(struct strbuf *out, const char *s, size_t n);
enum tok_unorm { TOK_NFC, TOK_NFD, TOK_NFKC, TOK_NFKD };
int tok_unorm_append(struct strbuf *out, const char *s, size_t n, enum tok_unorm form);
/* Per-character lowercase (strip_accents false) or removal of combining marks (true). */
int tok_case_append(struct strbuf *out, const char *s, size_t n, bool strip_accents);

/* GPT-2's byte to printable-character table used by ByteLevel. */
extern const uint16_t tok_bytelevel_char[256];
int tok_bytelevel_byte(uint32_t cp); /* inverse, -1 when cp is not in the table */

/* ---- pipeline steps ----------------------------------------------------------------------- */
enum tok_norm_kind {
    TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC, TOK_NORM_STRIP, TOK_NORM_NFD, TOK_NORM_NFKC,
    TOK_NORM_NFKD, TOK_NORM_LOWERCASE, TOK_NORM_STRIP_ACCENTS,
};
struct tok_norm {
    enum tok_norm_kind kind;
    char *a, *b;         /* prepend text; replace pattern (string form) and content */
    size_t a_len, b_len;
    pcre2_code *re;      /* replace pattern in regex form */
    bool left, right;    /* Strip */
};

enum tok_split_behavior {
    TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
};
enum tok_pre_kind {
    TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE, TOK_PRE_WHITESPACE_SPLIT,
};
enum tok_prepend_scheme { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
struct tok_pre {
    enum tok_pre_kind kind;
    pcre2_code *re;            /* Split's pattern (a string pattern is compiled escaped) */
    enum tok_split_behavior behavior;
    bool invert;
    bool add_prefix_space;     /* ByteLevel */
    bool use_regex;            /* ByteLevel: split with GPT-2's pattern first */
    char replacement[8];       /* Metaspace */
    size_t replacement_len;
    enum tok_prepend_scheme prepend_scheme;
    bool split;                /* Metaspace */
};

enum tok_dec_kind {
    TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP, TOK_DEC_BYTELEVEL,
    TOK_DEC_METASPACE,
};
struct tok_dec {
    enum tok_dec_kind kind;
    char *a, *b; /* Replace pattern and content; Strip content; Metaspace replacement */
    size_t a_len, b_len;
    int start, stop; /* Strip */
    enum tok_prepend_scheme prepend_scheme;
};

struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
};

enum { TOK_ATTR_SPECIAL = 1, TOK_ATTR_ADDED = 2 };

struct tokenizer {
    int32_t n_vocab;        /* highest id + 1, over the model's vocabulary and added tokens */
    char **text;            /* token text by id (as stored: "▁the", "Ġthe", "<0x0A>"), or NULL */
    uint32_t *text_len;
    uint8_t *attr;
    char **piece;           /* decoded text of each token alone, mid-sequence (raw bytes) */
    uint32_t *piece_len;

    /* BPE model */
    struct tok_strmap vocab;   /* the model's own tokens only; keys live in vocab_keys */
    char *vocab_keys;
    struct tok_pairmap merges;
    int32_t unk_id;
    bool fuse_unk, byte_fallback, ignore_merges;
    char *cont_prefix;
    size_t cont_prefix_len;
    int32_t byte_id[256];      /* <0xNN> tokens, -1 when absent */

    struct tok_added *added;
    size_t n_added;
    /* Added tokens by their first byte, longest first, for the scan over raw text. */
    uint32_t added_first[257];
    uint32_t *added_order;
    bool has_normalized_added;

    struct tok_norm *norm;
    size_t n_norm;
    struct tok_pre *pre;
    size_t n_pre;
    struct tok_dec *dec;
    size_t n_dec;
    bool has_decoder;

    int32_t *prefix_ids, *suffix_ids; /* post-processor, single sequence */
    size_t n_prefix, n_suffix;

    int32_t bos_id, eos_id;
    char *bos_text, *eos_text;
    char *chat_template;
};

/* Allocation of the per-id arrays once n_vocab is known. */
int tok_alloc_ids(struct tokenizer *t, int32_t n_vocab);
int tok_set_text(struct tokenizer *t, int32_t id, const char *s, size_t len);
/* After everything is loaded: byte ids, added-token index, per-token pieces. */
int tok_finish(struct tokenizer *t, char *err, size_t errlen);
void tok_release(struct tokenizer *t);
/* Frees the normalizers, pre-tokenizers and decoders, leaving none (tok_load_class.c then
 * builds its own). */
void tok_pipeline_clear(struct tokenizer *t);

int tok_load_json(struct tokenizer *t, const char *json_path, const char *config_path,
                  char *err, size_t errlen);
int tok_load_gguf(struct tokenizer *t, const char *path, char *err, size_t errlen);
/* tokenizer_config.json's class (tok_load_class.c): whether transformers builds a Llama
 * pipeline of its own for it (model_type from config.json, or NULL), and building it. */
bool tok_class_is_llama(const char *cls, const char *model_type);
int tok_llama_pipeline(struct tokenizer *t, bool add_prefix_space, bool legacy);

pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, char *msg,
                              size_t msglen);

/* Pipeline stages. */
int tok_normalize(const struct tokenizer *t, const char *s, size_t n, struct strbuf *out);
int tok_pretokenize(const struct tokenizer *t, struct tok_pieces *io, struct tok_pieces *tmp);
int tok_bpe_encode(const struct tokenizer *t, const char *s, size_t n, int32_t **ids,
                   size_t *n_ids, size_t *cap);
/* Every occurrence of pat in s (left to right, not overlapping) replaced by rep, appended
 * to out; an empty pattern copies s. */
int tok_replace_append(struct strbuf *out, const char *s, size_t n, const char *pat, size_t plen, const char *rep,
                       size_t rlen);
/* The same for text that may go on (the streaming decoder's): a tail of s that could still
 * begin a match is not appended, and *held gets its length. */
int tok_replace_append_open(struct strbuf *out, const char *s, size_t n, const char *pat, size_t plen,
                            const char *rep, size_t rlen, size_t *held);

/* Decoder steps on one token string, shared by the one-shot decoder and the stream. */
int tok_byte_token(const char *s, size_t n); /* "<0xNN>" to NN, else -1 */
/* The bytes a ByteLevel token stands for, or its own text when some character is not in
 * the byte table, appended to out. */
int tok_bytelevel_unmap(struct strbuf *out, const char *s, size_t n);
/* The part [*a, *b) of s that a Strip step keeps; strip_start false leaves the start alone. */
void tok_strip_range(const struct tok_dec *st, const char *s, size_t n, bool strip_start, size_t *a, size_t *b);

/* Decodes ids[0..n). at_start: the ids begin the sequence (leading-space rules apply).
 * raw: stop before turning bytes into valid UTF-8 (for single-token pieces). */
int tok_decode_ex(const struct tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                  bool at_start, bool raw, struct strbuf *out);

#endif
